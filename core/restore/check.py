"""The value every restore check reports: the checks of a restored database
(core/restore/checks.py) and the ledger proof (core/restore/ledger_proof.py) both build on it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One comparison, reported separately with what was expected and what was found."""

    name: str
    passed: bool
    expected: str
    found: str
