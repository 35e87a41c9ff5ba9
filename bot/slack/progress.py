"""One channel message per long operation, updated in place as it goes (``chat.update``), at
most once every few seconds; the final state is always delivered (through the outbox if
Slack is down). Not ephemeral (cannot be updated), not ``response_url`` (five uses).

Messages are delivered on a thread of the message's own: a slow or rate-limited Slack (a 429
waits out its Retry-After, a timeout is retried) never holds up the backup or restore whose
progress callback calls ``show``. Intermediate states coalesce: the newest one goes out when
the interval allows. With ``keep_fresh(render)`` the message is also redrawn every interval
while nothing new happens, so its elapsed time keeps counting through a long phase (a
pg_restore of an hour shows no other event)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bot.slack.messenger import Messenger, Posted, Renderable

log = logging.getLogger("blnk_backup.slack.progress")

MIN_INTERVAL = 3.0
REFRESH_AT_LEAST = 1.0  # a redraw with nothing new comes no more often than this
IDLE_SECONDS = 600.0  # a worker with nothing to deliver for this long ends (a new one starts)


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
        self._cond = threading.Condition()
        self._latest: Renderable | None = None  # the newest intermediate state, not yet sent
        self._final: Renderable | None = None
        self._finished = False  # the final state was given: nothing more is accepted
        self._tried_post = False
        self._worker: threading.Thread | None = None
        self._render: Callable[[], Renderable] | None = None

    def keep_fresh(self, render: Callable[[], Renderable]) -> None:
        """Redraw the message with ``render()`` every interval while no other state comes,
        until the final one (it must be cheap: it runs on the delivery thread)."""
        with self._cond:
            self._render = render
            self._cond.notify_all()

    def show(self, message: Renderable, *, final: bool = False) -> None:
        """Show this state. Intermediate states are sent at most once per interval (the newest
        wins; none after the first post failed) without waiting for Slack; the final one
        always goes out — as an update, or as a new message, through the outbox if need be —
        and ``show(..., final=True)`` returns once it has."""
        with self._cond:
            if self._finished:
                return
            if final:
                self._final, self._finished = message, True
            else:
                self._latest = message
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._deliver_all, name="slack-live-message", daemon=True
                )
                self._worker.start()
            worker = self._worker
            self._cond.notify_all()
        if final:
            worker.join()

    def _deliver_all(self) -> None:
        while True:
            with self._cond:
                message, final = self._next()
                if message is None:
                    self._worker = None  # idle too long; show() starts another
                    return
            try:
                self._deliver(message, final)
            except Exception:  # the messenger handles Slack's errors; this is a bug
                log.exception("delivering a progress message failed")
            if final:
                return

    def _next(self) -> tuple[Renderable | None, bool]:
        """Wait (holding the condition) for what to send next: the very first state as soon
        as it is shown, the final state at once, others once the interval has passed."""
        idle_until = self.clock() + IDLE_SECONDS
        while True:
            if not self._tried_post and self._latest is not None:
                message, self._latest = self._latest, None
                return message, False
            if self._final is not None:
                message, self._final, self._latest = self._final, None, None
                return message, True
            wait = idle_until - self.clock()
            if self._latest is None and self._render is not None and self.posted is not None:
                refresh = self._last + max(self.interval, REFRESH_AT_LEAST) - self.clock()
                if refresh <= 0:
                    self._latest = self._render()
                else:
                    wait = min(wait, refresh)
            if self._latest is not None:
                due = self._due()
                if due <= 0:
                    message, self._latest = self._latest, None
                    return message, False
                wait = due
            if wait <= 0:
                return None, False
            self._cond.wait(wait)

    def _due(self) -> float:
        return self._last + self.interval - self.clock()

    def _deliver(self, message: Renderable, final: bool) -> None:
        if self.posted is not None:
            self.messenger.update(self.posted, message, final=final)
        elif final or not self._tried_post:
            self._tried_post = True
            self.posted = self.messenger.post(self.channel, message, keep=final)
        self._last = self.clock()
