"""Who may do what in Slack: operators run commands, approvers decide approval requests.

Both lists hold Slack user IDs (``U…``, ``W…``) and/or user-group IDs (``S…``); never display
names, which are neither unique nor stable. Group members come from ``usergroups.users.list``,
cached briefly. Every command and every button click is checked here, on the server.
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


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str


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
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

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
        if user_id in allowed:
            return True
        return any(user_id in self._group_members(g) for g in allowed if g.startswith("S"))

    def _group_members(self, group_id: str) -> frozenset[str]:
        now = self.clock()
        with self._lock:
            cached = self._groups.get(group_id)
            if cached is not None and now - cached[0] < GROUP_CACHE_SECONDS:
                return cached[1]
        try:
            response = self.client.usergroups_users_list(usergroup=group_id)
            members = frozenset(str(u) for u in response.get("users") or [])
        except SlackApiError as exc:
            log.warning("cannot read user group %s: %s", group_id, exc.response.get("error"))
            members = cached[1] if cached is not None else frozenset()  # keep the last known
            return members
        with self._lock:
            self._groups[group_id] = (now, members)
        return members
