"""The receiver's thread: one at a time, however slow the last one is to stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from core.errors import EngineError
from core.wal.receiver import ReceiverThread


class SlowToStop:
    """A receiver whose last shipment takes a while after it is told to stop."""

    running = 0
    most = 0
    lock = threading.Lock()

    def __init__(self, linger: float) -> None:
        self.linger = linger

    def run(self, stop: threading.Event) -> None:
        with SlowToStop.lock:
            SlowToStop.running += 1
            SlowToStop.most = max(SlowToStop.most, SlowToStop.running)
        try:
            stop.wait()
            time.sleep(self.linger)
        finally:
            with SlowToStop.lock:
                SlowToStop.running -= 1


def test_a_receiver_slow_to_stop_is_never_joined_by_a_second_one() -> None:
    made: list[Any] = []

    def build() -> Any:
        made.append(SlowToStop(1.5))
        return made[-1]

    thread = ReceiverThread(build)
    thread.start()
    time.sleep(0.2)
    with pytest.raises(EngineError, match="still shipping"), thread.paused(timeout=0.3):
        pass  # the halt times out: refused, and nothing is started beside it
    thread.start()  # asked to lead again while the old one still ships
    time.sleep(2.0)
    assert SlowToStop.most == 1
    thread.stop()


def test_paused_with_a_hold_keeps_it_stopped_until_a_pause_without_one() -> None:
    thread = ReceiverThread(lambda: SlowToStop(0.0))  # type: ignore[arg-type,return-value]
    thread.start()
    time.sleep(0.1)
    with thread.paused(hold="dropped"):
        assert not thread.running
    assert thread.held == "dropped" and not thread.running
    thread.start()
    assert not thread.running
    with thread.paused():
        pass
    assert thread.held is None and thread.running
    thread.stop()
    assert not thread.running
