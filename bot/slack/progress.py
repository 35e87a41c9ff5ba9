"""One channel message per long operation, updated in place as it goes (``chat.update``), at
most once every few seconds; the final state is always delivered (through the outbox if
Slack is down). Not ephemeral (cannot be updated), not ``response_url`` (five uses)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bot.slack.messenger import Messenger, Posted, Renderable

MIN_INTERVAL = 3.0


class LiveMessage:
    def __init__(
        self,
        messenger: Messenger,
        channel: str,
        interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.messenger = messenger
        self.channel = channel
        self.interval = interval
        self.clock = clock
        self.posted: Posted | None = None
        self._last = -interval
        self._lock = threading.Lock()
        self._finished = False
        self._tried_post = False

    def show(self, message: Renderable, *, final: bool = False) -> None:
        """Show this state. Intermediate states are dropped while the last update is younger
        than the interval (or while the first post could not be made); the final one always
        goes out — as an update, or as a new message, through the outbox if need be."""
        with self._lock:
            if self._finished:
                return
            now = self.clock()
            if not final and now - self._last < self.interval:
                return
            self._last = now
            self._finished = final
            if self.posted is not None:
                self.messenger.update(self.posted, message, final=final)
            elif final or not self._tried_post:
                self._tried_post = True
                self.posted = self.messenger.post(self.channel, message, keep=final)
