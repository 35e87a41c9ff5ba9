"""Wrong API keys on ``/backup-s3``: counted, and slowed down per client.

Each client address may get ``limit`` keys wrong within ``window`` seconds; after that its
requests are answered 429 (with ``Retry-After``) without the key even being compared, until
the window has passed. A right key from another address is never held up by someone else's
guessing (behind a proxy every client shares its address: set the limit with that in mind).
The counts are exported on ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

MAX_CLIENTS = 10_000  # addresses remembered at once (the oldest is forgotten first)


class KeyGuard(Collector):
    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.failures_total = 0
        self.throttled_total = 0
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it may now."""
        now = self.clock()
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) < self.limit:
                return None
            self.throttled_total += 1
            return recent[0] + self.window - now

    def failed(self, client: str) -> None:
        """Count a wrong (or missing) key from ``client``."""
        now = self.clock()
        with self._lock:
            self.failures_total += 1
            self._recent(client, now).append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)

    def _recent(self, client: str, now: float) -> deque[float]:
        recent = self._failures.setdefault(client, deque())
        while recent and now - recent[0] >= self.window:
            recent.popleft()
        return recent

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "blnk_api_key_failures", "Requests to /backup-s3 with a missing or wrong API key"
        )
        failures.add_metric([], float(self.failures_total))
        throttled = CounterMetricFamily(
            "blnk_api_key_throttled",
            "Requests to /backup-s3 refused (429) after too many wrong keys from one address",
        )
        throttled.add_metric([], float(self.throttled_total))
        yield from (failures, throttled)
