"""How fast a dead Socket Mode connection is replaced (not part of the test suite).

Bolt's Socket Mode handler (slack_sdk's built-in client) connects to the fake Socket Mode
server on loopback (tests/support/fake_socket_mode.py). Then the connection dies in one of two
ways:
  fin    — the server closes the TCP connection without a WebSocket close frame (what a load
           balancer or NAT timing out an idle connection does);
  silent — the server stops answering and sending, the TCP connection stays open (a vanished
           host or network path).
Measured until a new connection is open and the old one is gone: the seconds, and the CPU
seconds this process used meanwhile (a spinning reader shows here), for
  (a) slack_sdk alone, with Bolt's default ping interval (10 s) — the baseline, same run;
  (b) as the bot runs it: pings every 5 s and bot/slack/socket_watchdog.py.
Medians of --repeat runs.

    .venv/bin/python bench/socket_mode_bench.py --repeat 3
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slack_bolt import App  # noqa: E402
from slack_bolt.adapter.socket_mode import SocketModeHandler  # noqa: E402
from slack_sdk import WebClient  # noqa: E402

from bot.slack.socket_watchdog import PING_INTERVAL, SocketWatchdog  # noqa: E402
from tests.support.fake_slack import FAKE_APP_TOKEN, FAKE_TOKEN, FakeSlack  # noqa: E402
from tests.support.fake_socket_mode import FakeSocketMode  # noqa: E402

GIVE_UP = 120.0  # seconds


def replace_once(how: str, watchdog: bool) -> tuple[float, float]:
    """One connection killed ``how``; return (seconds until replaced, CPU seconds used)."""
    with FakeSocketMode() as server, FakeSlack(FAKE_TOKEN) as fake:
        fake.socket_mode_url = server.new_url
        web = WebClient(token=FAKE_TOKEN, base_url=fake.base_url + "/")
        app = App(client=web, token_verification_enabled=False)
        ping = PING_INTERVAL if watchdog else 10.0
        handler = SocketModeHandler(
            app, FAKE_APP_TOKEN, ping_interval=ping, web_client=WebClient(base_url=web.base_url)
        )
        handler.connect()  # type: ignore[no-untyped-call]
        dog = SocketWatchdog(handler.client, ping).start() if watchdog else None
        first = server.wait_connected(timeout=20)
        server.wait_for(lambda: len(first.pongs) + len(first.pings) >= 1, timeout=2 * ping + 5)
        cpu, began = time.process_time(), time.monotonic()
        if how == "fin":
            server.drop(close_frame=False)
        else:
            server.go_silent()
        server.wait_for(
            lambda: (
                len(server.connections()) >= 2 and server.connections()[-1].open and not first.open
            ),
            timeout=GIVE_UP,
        )
        took, used = time.monotonic() - began, time.process_time() - cpu
        if dog is not None:
            dog.stop()
        handler.close()  # type: ignore[no-untyped-call]
        return took, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, medians of {args.repeat}"
    )
    print("| death | a: slack_sdk alone | b: the bot (watchdog) | a/b seconds |")
    print("|---|---|---|---|")
    for how in ("fin", "silent"):
        results = {}
        for watchdog in (False, True):
            runs = [replace_once(how, watchdog) for _ in range(args.repeat)]
            results[watchdog] = (
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs),
            )
        (a_s, a_cpu), (b_s, b_cpu) = results[False], results[True]
        print(
            f"| {how} | {a_s:.1f} s, {a_cpu:.1f} CPU-s | {b_s:.1f} s, {b_cpu:.2f} CPU-s "
            f"| {a_s / b_s:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
