"""Who or what asked for an action: a light module, so front ends can name an actor without
loading the audit log's database layer."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UsageError
from core.redact import check_plain_text

TRIGGERS = ("cli", "slack", "schedule", "api", "console")
MAX_ACTOR_LENGTH = 100


@dataclass(frozen=True)
class Actor:
    """Who or what asked for an action, and through which front end.

    Raise UsageError if the name is empty, too long or holds control characters."""

    name: str
    trigger: str

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}")
        checked = check_plain_text("actor name", self.name, MAX_ACTOR_LENGTH)
        if not checked:
            raise UsageError("the actor name must not be empty")
        object.__setattr__(self, "name", checked)
