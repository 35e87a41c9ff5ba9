"""Continuous protection's health against a real source cluster whose slots are capped small
(max_slot_wal_keep_size = 32MB): the slot read as the database reports it, through the
replication role alone; the window and the slot in Slack's status, list and App Home; and a
slot invalidated by its cap — the receiver gone, WAL written past the cap, a checkpoint —
showing as a broken chain (with its next step) in status --json, /healthz and /metrics, while
the window taken before the break stays restorable."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main as cli_main
from bot.http import HttpApi
from core.database import PgTarget
from core.services import Services
from core.wal.health import WalHealth
from core.wal.names import SEGMENT_SIZE
from tests.conftest import SettingsFactory
from tests.support.fake_slack import FakeSlack, block_texts
from tests.support.pgcluster import PasswordCluster, start_ledger_source
from tests.support.slack_requests import OPERATOR, AppServer, visible
from tests.test_pitr import (
    ACTOR,
    REPLICATOR,
    REPLICATOR_PASSWORD,
    Streaming,
    _get,
    _text,
    settings_for,
)

pytestmark = pytest.mark.wal  # source clusters of their own: scripts/test's lane 2

CAP = 32 << 20


@pytest.fixture(scope="module")
def capped() -> Iterator[PasswordCluster]:
    """A database host whose slots may keep 32 MiB of WAL (two segments), with a replication
    role and a small Blnk ledger."""
    cluster = start_ledger_source(200, {"max_slot_wal_keep_size": "32MB"})
    yield cluster
    cluster.stop()


def write_wal(admin: PgTarget, size: int) -> None:
    """About ``size`` bytes of WAL (rows of 1 kB)."""
    with admin.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (pad text)")
        conn.execute(
            "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, %s)",
            (size // 1000,),
        )


def invalidate(admin: PgTarget, slot: str, timeout: float = 30.0) -> None:
    """Write WAL past the cap and checkpoint until PostgreSQL gives up the slot (``lost``)."""
    deadline = time.monotonic() + timeout
    with admin.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (pad text)")
        while True:
            for _ in range(3):
                conn.execute("INSERT INTO filler VALUES ('x')")
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            assert row is not None
            if row[0] == "lost":
                return
            assert time.monotonic() < deadline, f"the slot is still {row[0]}"


def test_the_slot_is_read_as_the_database_sees_it_and_slack_shows_the_window(
    start_app: Any, fake: FakeSlack, capped: PasswordCluster, tmp_path: Path, secrets: list[str]
) -> None:
    secrets += [REPLICATOR_PASSWORD, capped.password]  # never in anything sent to Slack
    app = start_app(**settings_for(lambda **o: o, capped, tmp_path))
    services: Services = app.services
    admin = PgTarget.from_url(capped.url())
    replication = services.replication_source
    assert replication.params["user"] == REPLICATOR  # the slot is read as the replication role

    def reader(slot: str, source: PgTarget = replication) -> WalHealth:
        return WalHealth(
            services.store,
            source,
            slot=slot,
            window=services.pitr.window,
            limits=services.wal_health.limits,
        )

    with Streaming(services.wal_receiver()) as streaming:
        base = services.base_backups.run(ACTOR)
        streaming.caught_up(admin)
        wal = services.wal_health.check()
        slot = wal.slot
        assert slot.error is None, slot.error
        assert (slot.exists, slot.active, slot.wal_status) == (True, True, "reserved")
        assert slot.max_keep_bytes == CAP
        assert slot.retained_bytes is not None and 0 <= slot.retained_bytes < CAP
        # what may still be written before the slot is lost: the cap, plus what is left of
        # the segment being written
        assert slot.safe_wal_size is not None and 0 < slot.safe_wal_size <= CAP + SEGMENT_SIZE
        assert wal.window.earliest == base.finished and wal.last_base_backup == base.finished
        assert wal.gaps == () and wal.receiver_last_seen is not None
        assert wal.problems() == []

        # What a slot nobody reads keeps grows with the WAL written, as a share of the cap.
        kept = f"blnk_kept_{uuid.uuid4().hex[:6]}"
        with admin.connect(autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (kept,))
        before = reader(kept).read_slot()
        write_wal(admin, 4 << 20)
        after = reader(kept).read_slot()
        assert before.retained_bytes is not None and after.retained_bytes is not None
        assert after.retained_bytes - before.retained_bytes >= 4 << 20
        assert after.retained_share == after.retained_bytes / CAP
        assert after.active is False

        missing = reader("blnk_no_such_slot").read_slot()
        assert (missing.exists, missing.error, missing.max_keep_bytes) == (False, None, CAP)
        wrong = PgTarget.from_url(capped.url("wrong-password-4711", user=REPLICATOR))
        refused = reader(slot.name, wrong).read_slot()
        assert refused.exists is None and refused.error is not None
        assert "password authentication failed" in refused.error
        assert "wrong-password-4711" not in refused.error

        when = f"{base.finished:%Y-%m-%d %H:%M:%S} UTC"
        status = visible(app.command("/blnk-backups", "status").wait_response())
        listed = visible(app.command("/blnk-backups", "list").wait_response())
        app.slack.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
        fake.wait_for(lambda: bool(fake.views(OPERATOR)), 20)
        home = "\n".join(block_texts(fake.views(OPERATOR)[-1]))
        for shown in (status, listed, home):
            assert "*Point-in-time recovery*" in shown
            assert f"*Restorable window*\n{when} →" in shown
            assert "s behind now" in shown
            assert f"{slot.name}: active, reserved; keeps " in shown
            assert f"of its {CAP >> 20}.0 MiB cap" in shown
            assert f"*Last base backup*\n{when} (1 in all)" in shown
            assert "chain_broken" not in shown


def test_a_slot_invalidated_by_its_cap_breaks_the_chain_in_status_health_and_metrics(
    make_settings: SettingsFactory,
    capped: PasswordCluster,
    tmp_path: Path,
    use_settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(
        **settings_for(lambda **o: o, capped, tmp_path), wal_receiver_down_minutes=0.05
    )
    services = Services(settings)
    admin = PgTarget.from_url(capped.url())
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            streaming.caught_up(admin)
        stopped = time.monotonic()
        invalidate(admin, settings.wal_slot_name)
        time.sleep(max(0.0, 3.5 - (time.monotonic() - stopped)))  # WAL_RECEIVER_DOWN_MINUTES

        use_settings(settings)
        assert cli_main(["status", "--json"]) == 1
        body = json.loads(capsys.readouterr().out)
        assert body["slot"]["wal_status"] == "lost" and body["slot"]["active"] is False
        assert body["slot"]["retained_bytes"] is None
        assert body["chain_broken"] is True
        problems = {p["code"]: p for p in body["problems"]}
        assert {"chain_broken", "receiver_down"} <= set(problems)
        assert "wal_status lost" in problems["chain_broken"]["message"]
        for command in ("/blnk-backups wal-slot recreate", "blnk-backup wal-slot recreate"):
            assert command in problems["chain_broken"]["next_step"]
        assert "takes a base backup" in problems["chain_broken"]["next_step"]
        # What was taken before the break stays restorable.
        assert body["recoverable_window"]["earliest"] == base.finished.isoformat()
        assert body["last_base_backup"] == base.finished.isoformat()

        assert cli_main(["status"]) == 1
        text = capsys.readouterr().out
        assert f"  slot           {settings.wal_slot_name}: NOT active, lost" in text
        assert "✗ chain_broken: " in text and "✗ receiver_down: " in text

        with AppServer(HttpApi(services, health_cache_seconds=0)) as server:
            status, health = _get(server, "/healthz?check=backups")
            metrics = _text(server, "/metrics")
        assert status == 503
        assert {"chain_broken", "receiver_down"} <= set(health["breaches"])
        assert "blnk_wal_chain_broken 1.0" in metrics
        assert "blnk_wal_slot_active 0.0" in metrics
        assert "blnk_wal_slot_retained_bytes" not in metrics  # lost: nothing kept, not 0
        assert "blnk_wal_recoverable_earliest_timestamp_seconds" in metrics

        # The leader's watch reports each problem once, as the audit events alerts come from.
        appeared = services.wal_watch.check()
        assert {"chain_broken", "receiver_down"} <= {p.code for p in appeared}
        assert services.wal_watch.check() == []
        reported = {e.error_code for e in services.audit.events(action="wal_problem")}
        assert {"chain_broken", "receiver_down"} <= reported
    finally:
        services.close()
