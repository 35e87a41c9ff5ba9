"""One import for the helpers most test modules share."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.databases import PG_URL, make_database
from tests.support.settings import settings_env
from tests.support.stores import ACCESS_KEY, SECRET_KEY, bucket_keys, incomplete_uploads, raw_s3

__all__ = [
    "ACCESS_KEY",
    "PG_URL",
    "SECRET_KEY",
    "bucket_keys",
    "incomplete_uploads",
    "make_database",
    "raw_s3",
    "settings_env",
    "wait_until",
]


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Return once condition() is true; fail the test if it is not within timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def shell_block_after(document: Path, marker: str) -> list[str]:
    """The shell lines of the first ```sh block after ``marker`` in a document, each without
    its comment (a recipe the docs give a person, to be run as written)."""
    text = document.read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(marker) :], re.S)
    assert block is not None, f"{document.name} lost the recipe after {marker!r}"
    return [line.split("  #", 1)[0].strip() for line in block[1].splitlines() if line.strip()]
