"""``GET /metrics``: Prometheus text, computed at scrape time from the shared audit log (so
every replica reports the same figures) plus this process's scheduler and outbox.

    blnk_backup_last_success_timestamp_seconds   when the newest successful backup finished
    blnk_backup_last_duration_seconds            how long it took
    blnk_backup_last_size_bytes                  how big its dump is
    blnk_backup_failures_total{code}             failed backups by cause, ever (not refusals)
    blnk_backup_running                          1 while this process runs a backup
    blnk_restore_test_last_passed                1 passed / 0 failed, not refusals (absent: none)
    blnk_restore_test_last_timestamp_seconds     when it ended (age = time() - this)
    blnk_ledger_proof_last_passed                1 if the last restore test proved the ledger
    blnk_approvals_pending                       requests waiting for a decision
    blnk_outbox_waiting                          Slack messages waiting to be delivered
    blnk_scheduler_next_run_timestamp_seconds{job}
    blnk_api_key_failures_total, blnk_api_key_throttled_total   (bot/api_keys.py, this process)
    blnk_wal_recovery_point_lag_seconds, blnk_wal_recoverable_{earliest,latest}_timestamp_seconds,
    blnk_base_backup_last_timestamp_seconds                     (with WAL_ARCHIVE)
    blnk_wal_slot_retained_bytes, blnk_wal_slot_retained_ratio (of max_slot_wal_keep_size),
    blnk_wal_slot_active, blnk_wal_chain_broken, blnk_wal_receiver_last_seen_timestamp_seconds
                                                                (with WAL_ARCHIVE)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.errors import REFUSALS, EngineError
from core.services import Services

NextRuns = Callable[[], dict[str, datetime]]

# Refusals (core.errors.REFUSALS) are neither restore-test results nor failed backups: the person
# who asked sees the refusal in their reply (bot/slack/alerts.py ``_PERSONAL`` leaves them out
# of alerts the same way). A refused *scheduled* restore test still shows: its
# ``scheduled_run`` fails and is alerted, and blnk_restore_test_last_timestamp_seconds keeps
# ageing (as RESTORE_TEST_MAX_AGE_DAYS turns into a breach in ``status`` and /healthz).
#
# ``config_error`` is deliberately not a refusal here. Inside a run it means the safety net
# itself is broken (S3 refused the credentials, the bucket is gone), and a restore test that
# could not read the backups has not proved them restorable: it counts as failed, and a backup
# that could not start for it as a failure. (A restore test without RESTORE_TEST_DATABASE_URL
# is refused before its run is recorded, core/restore/service.py: that never reaches these figures.)


class EngineCollector(Collector):
    def __init__(
        self,
        services: Services,
        next_runs: NextRuns | None = None,
        outbox_waiting: Callable[[], int] | None = None,
    ) -> None:
        self.services = services
        self.next_runs = next_runs or (lambda: {})
        self.outbox_waiting = outbox_waiting

    def collect(self) -> Iterator[Metric]:
        audit = self.services.audit
        last = audit.last("backup", ("succeeded",))
        success = GaugeMetricFamily(
            "blnk_backup_last_success_timestamp_seconds",
            "Unix time the newest successful backup finished (0: none yet)",
        )
        duration = GaugeMetricFamily(
            "blnk_backup_last_duration_seconds", "Duration of the newest successful backup"
        )
        size = GaugeMetricFamily("blnk_backup_last_size_bytes", "Size of the newest backup's dump")
        success.add_metric([], _aware_ts(last.at) if last else 0.0)
        if last is not None:
            duration.add_metric([], float(last.duration_seconds or 0))
            size.add_metric([], float(last.size or 0))
        yield from (success, duration, size)

        failures = CounterMetricFamily(
            "blnk_backup_failures", "Failed backups by cause, over the audit log", labels=["code"]
        )
        for code, count in sorted(audit.failure_counts("backup").items()):
            if code not in REFUSALS:
                failures.add_metric([code], count)
        yield failures

        running = GaugeMetricFamily("blnk_backup_running", "1 while this process runs a backup")
        running.add_metric([], 1.0 if self._backup_running() else 0.0)
        yield running

        test = audit.last_restore_test()
        if test is not None:
            passed = GaugeMetricFamily(
                "blnk_restore_test_last_passed", "1 if the last restore test passed"
            )
            passed.add_metric([], 1.0 if test.outcome == "succeeded" else 0.0)
            when = GaugeMetricFamily(
                "blnk_restore_test_last_timestamp_seconds", "Unix time the last restore test ended"
            )
            when.add_metric([], _aware_ts(test.at))
            yield from (passed, when)
            proof = test.details_dict().get("ledger_proof")
            if isinstance(proof, dict) and "passed" in proof:
                ledger = GaugeMetricFamily(
                    "blnk_ledger_proof_last_passed",
                    "1 if the last restore test proved the ledger inside the backup",
                )
                ledger.add_metric([], 1.0 if proof["passed"] else 0.0)
                yield ledger

        pending = GaugeMetricFamily("blnk_approvals_pending", "Approval requests waiting")
        pending.add_metric([], float(len(self.services.approvals.pending())))
        yield pending

        if self.outbox_waiting is not None:
            waiting = GaugeMetricFamily("blnk_outbox_waiting", "Messages waiting for delivery")
            waiting.add_metric([], float(self.outbox_waiting()))
            yield waiting

        next_run = GaugeMetricFamily(
            "blnk_scheduler_next_run_timestamp_seconds",
            "Unix time of each scheduled job's next run",
            labels=["job"],
        )
        for job, when_next in sorted(self.next_runs().items()):
            next_run.add_metric([job], _aware_ts(when_next))
        yield next_run

        if self.services.settings.wal_archive:
            # The bucket unreadable: the gauges are absent, not wrong.
            with contextlib.suppress(EngineError):
                yield from self._recovery()

    def _recovery(self) -> Iterator[Metric]:
        """With WAL_ARCHIVE: the recoverable window, the recovery point's lag, the last base
        backup, the slot and the chain (the bucket and the slot read at most every 30 s).
        What could not be read is absent, not zero."""
        wal = self.services.wal_health.check(max_age=30.0)
        window = wal.window
        gauges = {
            "blnk_wal_recoverable_earliest_timestamp_seconds": (
                "Unix time of the earliest point a recovery can reach",
                window.earliest,
            ),
            "blnk_wal_recoverable_latest_timestamp_seconds": (
                "Unix time of the newest point a recovery can reach (the WAL in the store)",
                window.latest,
            ),
            "blnk_base_backup_last_timestamp_seconds": (
                "Unix time the newest base backup finished",
                window.last_base_backup,
            ),
            "blnk_wal_receiver_last_seen_timestamp_seconds": (
                "Unix time the WAL receiver last refreshed its position in the store",
                wal.receiver_last_seen,
            ),
        }
        for name, (text, when) in gauges.items():
            if when is not None:
                yield _gauge(name, text, when.timestamp())
        lag = wal.recovery_point_lag_seconds
        if lag is not None:
            yield _gauge(
                "blnk_wal_recovery_point_lag_seconds",
                "How far behind now the newest recoverable point is",
                lag,
            )
        slot = wal.slot
        if slot.retained_bytes is not None:
            yield _gauge(
                "blnk_wal_slot_retained_bytes",
                "WAL the replication slot keeps on the database host",
                float(slot.retained_bytes),
            )
        share = slot.retained_share
        if share is not None:
            yield _gauge(
                "blnk_wal_slot_retained_ratio",
                "Share of max_slot_wal_keep_size the slot keeps (absent when uncapped)",
                share,
            )
        if slot.error is None:
            yield _gauge(
                "blnk_wal_slot_active",
                "1 while something streams from the replication slot",
                1.0 if slot.active else 0.0,
            )
        yield _gauge(
            "blnk_wal_chain_broken",
            "1 when WAL is missing (the slot invalidated, or a gap in the store)",
            1.0 if wal.chain_broken else 0.0,
        )

    def _backup_running(self) -> bool:
        try:
            return self.services.backups.running
        except Exception:  # no database configured: nothing can run
            return False


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, text)
    gauge.add_metric([], value)
    return gauge


def _aware_ts(when: datetime) -> float:
    """Audit times come back from SQLite without their zone; every time stored is UTC."""
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def metrics_text(*collectors: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return bytes(generate_latest(registry))
