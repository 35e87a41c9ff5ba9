"""A recovery replayed to the end of the store's WAL must have reached the newest position the
store recorded (core.wal.recovery._Scratch.check_reached): the end of the replay is where the
recovered cluster's new timeline branched off, the last line of its history file. A replay that
ended a segment or more before it came to a missing or unreadable segment, not to the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import RestoreCheckError
from core.wal.recovery import _Scratch


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[_Scratch]:
    with _Scratch(tmp_path / "bin") as made:
        (made.data / "pg_wal").mkdir()
        yield made


def branched(scratch: _Scratch, *lines: str) -> None:
    """The recovered cluster's history files: 00000002.history, 00000003.history, ..."""
    for n in range(1, len(lines) + 1):
        history = "".join(f"{line}\n" for line in lines[:n])
        (scratch.data / "pg_wal" / f"{n + 1:08X}.history").write_text(history)


def test_a_replay_that_reached_the_newest_segment_passes(scratch: _Scratch) -> None:
    branched(scratch, "1\t0/30001C0\tno recovery target specified")
    scratch.check_reached("0/30001C0")
    scratch.check_reached("0/3FFFFF0")  # later in the same segment: its end was not written
    scratch.check_reached("0/4000000")  # the position is the segment's very end
    scratch.check_reached(None)  # nothing recorded: nothing to check


def test_a_replay_that_ended_a_segment_early_is_refused(scratch: _Scratch) -> None:
    branched(scratch, "1\t0/30001C0\tno recovery target specified")
    with pytest.raises(RestoreCheckError, match=r"ended at 0/30001C0, before .*0/4000010"):
        scratch.check_reached("0/4000010")


def test_the_newest_timeline_says_where_the_replay_ended(scratch: _Scratch) -> None:
    # Recovered from timeline 2 (a promoted replica's), the cluster is on timeline 3.
    branched(
        scratch,
        "1\t0/5000000\tno recovery target specified",
        "2\t0/7A00028\tno recovery target specified",
    )
    scratch.check_reached("0/7A00100")
    with pytest.raises(RestoreCheckError):
        scratch.check_reached("0/8000100")


def test_no_history_at_all_is_refused(scratch: _Scratch) -> None:
    with pytest.raises(RestoreCheckError, match="no timeline history"):
        scratch.check_reached("0/3000000")
