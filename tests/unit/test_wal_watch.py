"""The WAL watch: each problem is reported once when it appears and once when it is gone (an
audit event, from which the alert is posted, with the next step), and a restarted watch does
not report again what the audit log says is still open. Real SQLite audit log."""

from __future__ import annotations

from pathlib import Path

from bot.slack.alerts import alert_for
from core.audit import AuditLog
from core.wal.health import WalProblem
from core.wal.watch import ACTION, WalWatch

LOST = WalProblem(
    "chain_broken",
    "the slot blnk_backup was invalidated (wal_status lost)",
    "recreate the slot, which takes a base backup at once: `/blnk-backups wal-slot recreate`",
)
DOWN = WalProblem("receiver_down", "nothing shipped for 6 min", "restart `blnk-backup-bot`")


def test_each_problem_is_reported_once_then_once_more_when_it_is_gone(tmp_path: Path) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    now: list[WalProblem] = []
    watch = WalWatch(lambda: list(now), audit)
    try:
        assert watch.check() == []
        now[:] = [LOST, DOWN]
        assert [p.code for p in watch.check()] == ["chain_broken", "receiver_down"]
        assert watch.check() == []  # still there: not again
        events = audit.events(action=ACTION)
        assert [(e.outcome, e.error_code) for e in events] == [
            ("failed", "receiver_down"),
            ("failed", "chain_broken"),
        ]
        alert = alert_for(events[1])
        assert alert is not None
        title, lines, severity = alert
        assert title == "Point-in-time recovery needs attention" and severity == "high"
        assert any("invalidated" in line for line in lines)
        assert any(line.startswith("*Next:* recreate the slot") for line in lines)

        # A new watch (the bot restarted, another replica leads) reads what is still open.
        again = WalWatch(lambda: list(now), audit)
        assert again.check() == []
        now[:] = [DOWN]
        assert again.check() == []
        resolved = audit.events(action=ACTION, limit=1)[0]
        assert (resolved.outcome, resolved.error_code) == ("succeeded", "chain_broken")
        found = alert_for(resolved)
        assert found is not None and found[0] == "Point-in-time recovery: resolved"
        assert found[2] == "low" and "*Resolved:* chain_broken" in found[1]
        # It comes back: reported again.
        now[:] = [DOWN, LOST]
        assert [p.code for p in again.check()] == ["chain_broken"]
    finally:
        audit.close()
