"""Would the primary make the receiver a synchronous standby? Its synchronous_standby_names,
read the way PostgreSQL reads it (names, ``*``, FIRST/ANY n (...), quoted names)."""

from __future__ import annotations

import pytest

from core.wal.receiver import names_standby


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("", False),
        ("replica1", False),
        ("blnk_backup", True),
        ("replica1, blnk_backup", True),
        ("*", True),
        ("FIRST 1 (replica1, *)", True),
        ("ANY 2 (replica1, replica2)", False),
        ("2 (replica1, blnk_backup)", True),
        ('"blnk_backup"', True),
        ('"blnk backup"', False),
        ("blnk_backup_old", False),
        ("BLNK_BACKUP", True),  # unquoted names are case-insensitive
    ],
)
def test_the_receiver_is_named_exactly_when_the_setting_lists_it_or_a_star(
    setting: str, named: bool
) -> None:
    assert names_standby(setting, "blnk_backup") is named
