"""The bot's own job executor. Slack listeners acknowledge at once and hand the work here, never
to Bolt's listener threads or lazy listeners (their pool is shared with acknowledgements, and
lazy functions swallow exceptions). Bounded: when it is full, a request is told so at once
instead of waiting in an unbounded queue."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("blnk_backup.jobs")


class JobsFull(Exception):
    """Every worker is busy and the queue is full."""


class JobRunner:
    def __init__(self, workers: int = 4, queued: int = 16, name: str = "bot-job") -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(workers + queued)

    def submit(
        self,
        name: str,
        work: Callable[[], None],
        on_crash: Callable[[BaseException, str], None] | None = None,
    ) -> Future[None]:
        """Run work on a worker. Raise JobsFull if there is no room. An exception escaping
        ``work`` is logged with its traceback and handed to ``on_crash`` with an error id."""
        if not self._slots.acquire(blocking=False):
            raise JobsFull(name)

        def run() -> None:
            try:
                work()
            except BaseException as exc:
                error_id = uuid.uuid4().hex[:8]
                log.exception("job %s failed (error id %s)", name, error_id)
                if on_crash is not None:
                    try:
                        on_crash(exc, error_id)
                    except Exception:
                        log.exception("reporting the failure of job %s failed", name)
            finally:
                self._slots.release()

        try:
            return self._pool.submit(run)
        except BaseException:
            self._slots.release()
            raise

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
