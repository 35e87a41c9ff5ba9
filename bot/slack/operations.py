"""What each slash command and button does, run on the bot's own job executor after the request
was acknowledged. Every operation has the same shape: check who is asking, call one use case on
the shared Services, render the result as Block Kit. Risky operations become approval requests;
an approved request is executed once, keyed by its id."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.render import blocks
from bot.slack.auth import Authorizer
from bot.slack.commands import PITR, Request
from bot.slack.messenger import Messenger, Renderable
from bot.slack.progress import LiveMessage
from core.actor import Actor
from core.approvals import Approval
from core.backup import BackupProgress
from core.errors import (
    AlreadyRunningError,
    ApprovalRefused,
    EngineError,
    PreflightError,
    UsageError,
)
from core.services import Services
from core.wal.recovery import parse_target

if TYPE_CHECKING:
    from core.wal.health import WalStatus

log = logging.getLogger("blnk_backup.slack.operations")

HOME_CACHE_SECONDS = 30.0  # how old a bucket listing the App Home tab may show

Respond = Callable[[Renderable], None]
NextRuns = Callable[[], dict[str, datetime]]


@dataclass(frozen=True)
class Caller:
    """Who asked, where, and how to answer them privately."""

    user_id: str
    channel_id: str
    respond: Respond
    as_actor: Actor | None = None  # who the audit log names, when not this Slack user

    @property
    def actor(self) -> Actor:
        return self.as_actor or slack_actor(self.user_id)


def slack_actor(user_id: str) -> Actor:
    return Actor(user_id, "slack")


class SlackOperations:
    def __init__(
        self,
        services: Services,
        messenger: Messenger,
        authorizer: Authorizer,
        *,
        progress_interval: float = 3.0,
        next_runs: NextRuns | None = None,
        actor_for: Callable[[str], Actor] = slack_actor,
    ) -> None:
        self.services = services
        self.messenger = messenger
        self.authorizer = authorizer
        self.progress_interval = progress_interval
        self.next_runs = next_runs or (lambda: {})
        self.actor_for = actor_for  # the audit log's actor for a user ID (the console's own)
        # What each safe action runs (the risky ones become approval requests).
        self._commands: dict[str, Callable[[Request, Caller], None]] = {
            "help": self._run_help,
            "list": self._run_list,
            "status": self._run_status,
            "audit": self._run_audit,
            "prune": self._run_prune,
            "bucket_check": self._run_bucket_check,
            "backup": self._run_backup,
            "restore_test": self._run_restore_test,
        }

    # --- commands -----------------------------------------------------------------------------
    def admit(self, caller: Caller, what: str, *, approver: bool = False) -> bool:
        """Check caller before any work is queued for them: an operator (or, for a decision,
        an approver). A refusal is audited and answered here; return whether to go on."""
        check = self.authorizer.may_approve if approver else self.authorizer.may_operate
        allowed = check(caller.user_id)
        if not allowed.allowed:
            self._refuse(caller, what, allowed.why)
        return allowed.allowed

    def command(self, request: Request, caller: Caller) -> None:
        """Check the caller, then run a parsed slash command (already acknowledged)."""
        if self.admit(caller, request.action):
            self.run_command(request, caller)

    def run_command(self, request: Request, caller: Caller) -> None:
        """Run a parsed slash command for a caller already admitted."""
        try:
            if request.risky:
                self._request_approval(request, caller)
            else:
                self._commands[request.action](request, caller)
        except UsageError as exc:
            caller.respond(blocks.usage(exc.message))
        except AlreadyRunningError as exc:
            caller.respond(blocks.already_running(exc.holder))
        except PreflightError as exc:  # e.g. the server a restore would go to does not answer
            caller.respond(blocks.refusal(self.services.scrub(exc.message)))

    def _refuse(self, caller: Caller, what: str, why: str) -> None:
        self.services.audit.unauthorized(caller.actor, what, why)
        caller.respond(blocks.refusal(why))

    def _run_help(self, _request: Request, caller: Caller) -> None:
        caller.respond(blocks.help_message())

    def _run_list(self, _request: Request, caller: Caller) -> None:
        entries = self.services.catalog.list(limit=20)
        wal, wal_error = self._wal()
        caller.respond(blocks.backups_list(entries, wal=wal, wal_error=wal_error))

    def _run_status(self, _request: Request, caller: Caller) -> None:
        state = self.services.catalog.status()
        wal, wal_error = self._wal()
        caller.respond(blocks.status(state, self.next_runs(), wal=wal, wal_error=wal_error))

    def _wal(self, max_age: float = 0.0) -> tuple[WalStatus | None, str | None]:
        """With WAL_ARCHIVE, continuous protection's health (read now, or at most ``max_age``
        seconds ago), or why it could not be read; (None, None) without."""
        if not self.services.settings.wal_archive:
            return None, None
        try:
            return self.services.wal_health.check(max_age), None
        except EngineError as exc:
            return None, self.services.scrub(exc.message)

    def _run_audit(self, _request: Request, caller: Caller) -> None:
        caller.respond(blocks.audit(self.services.audit.events(limit=20)))

    def _run_prune(self, _request: Request, caller: Caller) -> None:
        caller.respond(blocks.prune_plan(self.services.pruner.prune(caller.actor, apply=False)))

    def _run_bucket_check(self, _request: Request, caller: Caller) -> None:
        caller.respond(blocks.policies(self.services.bucket_policies.check(), applied=False))

    def _run_backup(self, request: Request, caller: Caller) -> None:
        live = LiveMessage(self.messenger, caller.channel_id, self.progress_interval)
        began = time.monotonic()
        latest = [BackupProgress("preflight")]

        def render() -> Renderable:
            event = latest[0]
            return blocks.backup_progress(
                event.stage,
                event.key,
                event.bytes_uploaded,
                event.expected_bytes,
                caller.user_id,
                request.reason,
                time.monotonic() - began,
            )

        def on_progress(event: BackupProgress) -> None:
            latest[0] = event
            live.show(render())

        live.keep_fresh(render)  # the elapsed time keeps counting between events

        try:
            result = self.services.backups.run(caller.actor, request.reason, on_progress)
        except AlreadyRunningError:
            raise
        except Exception as exc:
            if not isinstance(exc, EngineError):  # a bug: the message must not run for ever
                self._finish(live, caller, self._crashed("Backup", caller))
                return
            self._finish(
                live,
                caller,
                blocks.operation_failed(
                    "Backup",
                    exc.code,
                    self.services.scrub(exc.message),
                    caller.user_id,
                    request.reason,
                ),
            )
            return
        self._finish(
            live,
            caller,
            blocks.backup_succeeded(result.manifest, self.services.store.bucket, caller.user_id),
        )

    def _run_restore_test(self, request: Request, caller: Caller) -> None:
        live = LiveMessage(self.messenger, caller.channel_id, self.progress_interval)
        began = time.monotonic()
        which = request.key or "latest"

        latest = ["preflight"]

        def render() -> Renderable:
            elapsed = time.monotonic() - began
            return blocks.restore_progress(latest[0], which, caller.user_id, elapsed)

        def on_stage(stage: str) -> None:
            latest[0] = stage
            live.show(render())

        live.keep_fresh(render)  # a long pg_restore shows its time going by

        try:
            if which == PITR:
                at = parse_target(request.at) if request.at else None
                result = self.services.pitr.test(caller.actor, at)
                self._finish(live, caller, blocks.recovery_result(result, caller.user_id))
                return
            report = self.services.restores.test(caller.actor, which, on_stage)
        except UsageError:
            raise
        except Exception as exc:
            if not isinstance(exc, EngineError):  # a bug: the message must not run for ever
                self._finish(live, caller, self._crashed("Restore test", caller))
                return
            self._finish(
                live,
                caller,
                blocks.operation_failed(
                    "Restore test", exc.code, self.services.scrub(exc.message), caller.user_id
                ),
            )
            return
        self._finish(live, caller, blocks.restore_result(report, caller.user_id))

    @staticmethod
    def _crashed(what: str, caller: Caller) -> Renderable:
        """Log the exception being handled with an error id; return the message saying so."""
        error_id = uuid.uuid4().hex[:8]
        log.exception("%s for %s failed (error id %s)", what, caller.user_id, error_id)
        return blocks.operation_failed(
            what, "internal_error", "something went wrong", caller.user_id, error_id=error_id
        )

    def _finish(self, live: LiveMessage, caller: Caller, message: Renderable) -> None:
        """Show the final state in the live message; if no channel message could ever be
        posted there (a DM the bot is not in), answer the person privately as well."""
        live.show(message, final=True)
        if live.posted is None:
            caller.respond(message)

    # --- approvals ----------------------------------------------------------------------------
    def _request_approval(self, request: Request, caller: Caller) -> None:
        """Work out exactly what would happen, record the request, post it for approvers."""
        plan = self.services.risky.plan(
            request.action, caller.actor, key=request.key, into=request.into, at=request.at
        )
        approval = self.services.approvals.request(
            plan.action, caller.actor, plan.params, plan.summary, reason=request.reason
        )
        posted = self.messenger.post(
            caller.channel_id, blocks.approval_request(approval, datetime.now(UTC))
        )
        if posted is None:
            caller.respond(blocks.approval_request(approval, datetime.now(UTC)))
            return
        self.services.approvals.set_display(
            approval.id, {"channel": posted.channel, "ts": posted.ts}
        )

    def decide(self, approval_id: str, caller: Caller, approve: bool) -> None:
        """A button click: check the approver, decide once, update the message, execute."""
        if self.admit(caller, "approve" if approve else "deny", approver=True):
            self.run_decision(approval_id, caller, approve)

    def run_decision(self, approval_id: str, caller: Caller, approve: bool) -> None:
        """Decide once for an admitted approver, update the message, execute."""
        try:
            approval = self.services.approvals.decide(approval_id, caller.actor, approve=approve)
        except ApprovalRefused as exc:
            caller.respond(blocks.refusal(exc.message))
            expired = self.services.approvals.get(approval_id)
            if expired is not None and expired.status == "expired":
                self._show_decision(expired)  # buttons nobody can use any more go away
            return
        self._show_decision(approval)
        if approve:
            self.execute(approval_id)

    def execute(self, approval_id: str) -> None:
        """Run an approved request exactly once (whoever calls first claims it)."""
        approval = self.services.approvals.claim_execution(approval_id)
        if approval is None:
            return
        try:
            outcome = self._execute(approval)
            succeeded = True
        except EngineError as exc:
            outcome, succeeded = f"{exc.code}: {self.services.scrub(exc.message)}", False
        except Exception:  # a bug: the request must not stay "executing" for ever
            error_id = uuid.uuid4().hex[:8]
            log.exception("executing approval %s failed (error id %s)", approval_id, error_id)
            outcome, succeeded = (
                f"internal_error: something went wrong (error id {error_id})",
                False,
            )
        finished = self.services.approvals.finish(approval_id, succeeded=succeeded, outcome=outcome)
        self._show_decision(finished, final=True)

    def _execute(self, approval: Approval) -> str:
        actor = Actor(approval.requested_by, approval.requested_via)
        return self.services.risky.execute(approval.action, actor, approval.params, approval.reason)

    def expire_overdue(self) -> int:
        """Expire the requests past their deadline (audited in core) and take their buttons
        away; return how many. Atomic per request, so with several replicas each is redrawn by
        the one that expired it."""
        expired = self.services.approvals.expire_overdue()
        for approval in expired:
            self._show_decision(approval)
        return len(expired)

    def _show_decision(self, approval: Approval, *, final: bool = False) -> None:
        display = approval.display
        message = blocks.approval_decided(approval)
        if display.get("channel") and display.get("ts"):
            from bot.slack.messenger import Posted

            self.messenger.update(Posted(display["channel"], display["ts"]), message, final=True)

    # --- App Home -----------------------------------------------------------------------------
    def home_refused(self, user_id: str) -> dict[str, Any] | None:
        """The short notice App Home shows someone who is neither an operator nor an
        approver (the refusal audited), or None for those who may see the backups."""
        allowed = self.authorizer.may_operate(user_id)
        if allowed.allowed:
            return None
        self.services.audit.unauthorized(self.actor_for(user_id), "home", allowed.why)
        return blocks.home_refused(allowed.why)

    def home(self, user_id: str) -> dict[str, Any]:
        """The App Home view for user_id (what is shown; publishing is the caller's): the
        backups for operators and approvers; for anyone else a short notice, and the refusal
        audited. The bucket is read at most every HOME_CACHE_SECONDS, however often the tab
        is opened."""
        refused = self.home_refused(user_id)
        if refused is not None:
            return refused
        try:
            state = self.services.catalog.status(max_age=HOME_CACHE_SECONDS)
            backups = self.services.catalog.list(limit=10, max_age=HOME_CACHE_SECONDS)
            error = None
        except EngineError as exc:
            state, backups, error = None, [], self.services.scrub(exc.message)
        wal, wal_error = self._wal(HOME_CACHE_SECONDS)
        self.expire_overdue()
        pending = self.services.approvals.pending()
        return blocks.home_view(
            state, backups, pending, self.next_runs(), error=error, wal=wal, wal_error=wal_error
        )
