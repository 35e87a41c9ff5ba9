"""The watch over continuous protection: every minute, on the leader, the WAL health's problems
(core/wal/health.py) are compared with those already reported, and each change is one audit
event — ``wal_problem`` ``failed`` when a problem appears (its code, what is wrong, the next
step), ``succeeded`` when it is gone — from which the alerts are posted. A problem is reported
once, not every minute; the set already reported is read back from the audit log when the watch
starts, so a restart (or a new leader) does not report it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.actor import Actor
from core.audit import AuditLog
from core.errors import EngineError
from core.wal.health import WalProblem

log = logging.getLogger("blnk_backup.wal")

WATCH = Actor("wal-watch", "schedule")
ACTION = "wal_problem"
EVERY_SECONDS = 60.0


class WalWatch:
    """Reports each WAL problem once when it appears and once when it is gone."""

    def __init__(self, problems: Callable[[], list[WalProblem]], audit: AuditLog) -> None:
        self.problems = problems
        self.audit = audit
        self._open: dict[str, str] | None = None  # code → message, as last reported

    def _reported(self) -> dict[str, str]:
        """The problems the audit log says are open: the newest event of each code."""
        open_now: dict[str, str] = {}
        seen: set[str] = set()
        for event in self.audit.events(action=ACTION, limit=5000):
            code = event.error_code or ""
            if code in seen:
                continue
            seen.add(code)
            if event.outcome == "failed":
                open_now[code] = event.error_cause or ""
        return open_now

    def check(self) -> list[WalProblem]:
        """Look once; record what appeared and what is gone; return the problems that
        appeared. Raise EngineError if the health could not be read (nothing recorded)."""
        if self._open is None:
            self._open = self._reported()
        found = {p.code: p for p in self.problems()}
        appeared = [p for code, p in found.items() if code not in self._open]
        for problem in appeared:
            self.audit.record(
                action=ACTION,
                outcome="failed",
                actor=WATCH,
                error_code=problem.code,
                error_cause=problem.message,
                details={"code": problem.code, "next_step": problem.next_step},
            )
            self._open[problem.code] = problem.message
            log.warning("point-in-time recovery: %s: %s", problem.code, problem.message)
        for code in [c for c in self._open if c not in found]:
            self.audit.record(
                action=ACTION,
                outcome="succeeded",
                actor=WATCH,
                error_code=code,
                details={"code": code, "resolved": True},
            )
            del self._open[code]
            log.info("point-in-time recovery: %s is resolved", code)
        return appeared


class WatchThread:
    """The watch on a thread of its own while this process leads."""

    def __init__(self, watch: Callable[[], WalWatch], every: float = EVERY_SECONDS) -> None:
        self._watch = watch
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        watch: WalWatch | None = None
        while not self._stop.wait(self.every):
            try:
                watch = watch or self._watch()
                watch.check()
            except EngineError as exc:
                log.warning("the WAL watch could not look: %s", exc)
            except Exception:  # a watch that dies silently is worse than a noisy one
                log.exception("the WAL watch failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
