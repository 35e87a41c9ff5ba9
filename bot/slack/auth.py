"""Who may do what in Slack: operators run commands, approvers decide approval requests.

Both lists hold Slack user IDs (``U…``, ``W…``) and/or user-group IDs (``S…``); never display
names, which are neither unique nor stable. Group members come from ``usergroups.users.list``,
cached for a minute, one lookup per group at a time. Every command, button click and App Home
view is checked here, on the server, before any work is queued.

When lookups keep failing (Slack down, rate limits), the last membership read is trusted for
``STALE_LIMIT_SECONDS`` at most, then nobody is a member of that group until a lookup works
again: membership fails closed after a bounded time, never open for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger("blnk_backup.slack.auth")

GROUP_CACHE_SECONDS = 60.0
STALE_LIMIT_SECONDS = 600.0  # how long a failing lookup may lean on the last membership read
RETRY_FAILED_SECONDS = 10.0  # a failed lookup is not tried again sooner (rate limits)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str


@dataclass
class _Membership:
    members: frozenset[str]
    read_at: float | None  # when a lookup last worked (None: never)
    tried_at: float  # when a lookup was last tried


class Authorizer:
    def __init__(
        self,
        client: WebClient,
        operators: list[str],
        approvers: list[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.operators = operators
        self.approvers = approvers
        self.clock = clock
        self._groups: dict[str, _Membership] = {}
        self._lock = threading.Lock()
        self._group_locks: dict[str, threading.Lock] = {}

    def listed(self, user_id: str, *, approver: bool = False) -> bool:
        """True if user_id is named outright (not through a group) among those who may
        operate (or, with ``approver``, approve): decided without any lookup."""
        names = self.approvers if approver else self.operators + self.approvers
        return bool(user_id) and user_id in names

    def may_operate(self, user_id: str) -> Decision:
        """Operators (and approvers) may run commands. With no SLACK_OPERATORS configured,
        nobody may: an unconfigured bot refuses rather than letting everyone in."""
        if not self.operators and not self.approvers:
            return Decision(False, "no operators are configured (SLACK_OPERATORS)")
        if self._member(user_id, self.operators + self.approvers):
            return Decision(True, "operator")
        return Decision(False, "you are not in SLACK_OPERATORS")

    def may_approve(self, user_id: str) -> Decision:
        if not self.approvers:
            return Decision(False, "no approvers are configured (SLACK_APPROVERS)")
        if self._member(user_id, self.approvers):
            return Decision(True, "approver")
        return Decision(False, "you are not in SLACK_APPROVERS")

    def _member(self, user_id: str, allowed: list[str]) -> bool:
        if not user_id:
            return False
        if user_id in allowed:
            return True
        return any(user_id in self._group_members(g) for g in allowed if g.startswith("S"))

    def _group_members(self, group_id: str) -> frozenset[str]:
        with self._lock:
            lock = self._group_locks.setdefault(group_id, threading.Lock())
        with lock:  # one lookup per group at a time; the others wait for its answer
            known = self._groups.get(group_id)
            now = self.clock()
            if known is not None and (
                (known.read_at is not None and now - known.read_at < GROUP_CACHE_SECONDS)
                or now - known.tried_at < RETRY_FAILED_SECONDS
            ):
                return self._trusted(known, now)
            try:
                response = self.client.usergroups_users_list(usergroup=group_id)
                members = frozenset(str(u) for u in response.get("users") or [])
            except Exception as exc:  # SlackApiError, timeouts, connection errors
                why = exc.response.get("error") if isinstance(exc, SlackApiError) else None
                log.warning("cannot read user group %s: %s", group_id, why or type(exc).__name__)
                last = known or _Membership(frozenset(), None, now)
                known = _Membership(last.members, last.read_at, now)
                self._groups[group_id] = known
                if known.members and not self._trusted(known, now):
                    log.warning(
                        "user group %s: no lookup has worked for %.0f s, so its members are "
                        "refused until one does",
                        group_id,
                        STALE_LIMIT_SECONDS,
                    )
                return self._trusted(known, now)
            self._groups[group_id] = _Membership(members, now, now)
            return members

    @staticmethod
    def _trusted(known: _Membership, now: float) -> frozenset[str]:
        """The members to believe now: the last read, unless it is older than the limit."""
        if known.read_at is None or now - known.read_at > STALE_LIMIT_SECONDS:
            return frozenset()
        return known.members
