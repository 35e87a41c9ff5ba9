"""The WAL archive against the real S3 server: a partial segment goes without the zeros after
its last written page and comes back at its full size; whether the store already holds exactly
a partial segment is answered from the store's checksum (or ETag), never guessed — in every
checksum mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from core.services import Services
from core.wal.archive import WAL_PAGE, WalArchive
from core.wal.names import SEGMENT_SIZE, Segment
from tests.conftest import SettingsFactory


@pytest.mark.parametrize("mode", ["crc32", "sha256", "md5"])
def test_a_partial_segment_is_stored_without_its_zeros_and_known_exactly(
    make_settings: SettingsFactory, tmp_path: Path, mode: str
) -> None:
    services = Services(make_settings(s3_checksum=mode))
    try:
        archive = WalArchive(services.store)
        name = Segment(1, 5).name + ".partial"
        written = 3 * WAL_PAGE + 100
        body = os.urandom(written) + bytes(SEGMENT_SIZE - written)

        sent = archive.ship_partial(name, body)
        assert sent == 4 * WAL_PAGE  # cut after its last written page
        stored: Any = services.store.head(services.store.prefix + "wal/" + name)
        assert stored is not None and stored.size == sent
        assert archive.holds_partial(name, body)
        more = body[:written] + b"\x01" + body[written + 1 :]  # one more byte of WAL
        assert not archive.holds_partial(name, more)
        assert not archive.holds_partial(Segment(1, 6).name + ".partial", body)

        fetched = tmp_path / name
        assert archive.fetch(name, fetched)
        assert fetched.read_bytes() == body  # its zeros back: what PostgreSQL expects
    finally:
        services.close()
