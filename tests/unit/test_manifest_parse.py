"""Manifests are untrusted input, read by a pure parser: one that is not JSON, misses fields,
has wrong types or a bad ledger anchor is refused in one line; one with a status other than
verified, or a key or size that does not match its dump, never completes it. What the rest of
the program makes of such a backup: tests/test_manifest_untrusted.py."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.keys import BackupKey
from core.manifest import LedgerAnchor, ManifestError, completeness_problem, parse_manifest
from tests.support.manifests import DUMP, make_manifest

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
GOOD = json.loads(make_manifest(BackupKey.at(NOW)).to_json())

CORRUPTIONS: dict[str, Any] = {
    "not JSON": b"\x00\xffnot json",
    "a JSON list": [],
    "a missing sha256": {k: v for k, v in GOOD.items() if k != "sha256"},
    "a size given as text": GOOD | {"size": "8"},
    "a failed status": GOOD | {"status": "failed"},
    "a time without a zone": GOOD | {"started_at": "2026-01-01T00:00:00"},
    "row counts as text": GOOD | {"stats": GOOD["stats"] | {"row_counts": {"a.b": "1"}}},
}


def _body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def test_a_good_manifest_parses_back_to_itself() -> None:
    manifest = make_manifest(BackupKey.at(NOW))
    assert parse_manifest(manifest.to_json()) == manifest
    assert completeness_problem(manifest, manifest.key, len(DUMP)) is None


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_the_parser_refuses_a_manifest_with(what: str) -> None:
    body = CORRUPTIONS[what]
    if what == "a failed status":  # parses, but does not make a complete backup
        manifest = parse_manifest(_body(body))
        assert completeness_problem(manifest, manifest.key, manifest.size) is not None
    else:
        with pytest.raises(ManifestError):
            parse_manifest(_body(body))


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    try:
        parse_manifest(raw)
    except ManifestError as exc:
        assert "\n" not in str(exc)


def test_a_manifest_naming_another_key_or_size_does_not_complete_its_dump() -> None:
    key = BackupKey.at(NOW)
    manifest = make_manifest(key)
    assert completeness_problem(manifest, key.key, len(DUMP)) is None
    assert "another key" in str(completeness_problem(manifest, key.key + "x", len(DUMP)))
    assert "bytes" in str(completeness_problem(manifest, key.key, len(DUMP) + 1))
    moved = replace(manifest, key="blnk_backup_20000101_000000.dump")
    assert completeness_problem(moved, key.key, len(DUMP)) is not None


# --- manifests and rendering ----------------------------------------------------------------------
def test_manifests_without_the_new_fields_still_parse_and_bad_anchors_are_refused() -> None:
    from core.keys import BackupKey

    body = json.loads(make_manifest(BackupKey.at(datetime(2026, 1, 1, tzinfo=UTC))).to_json())
    for field in ("ledger_anchor", "content_digests"):
        body["stats"].pop(field)
    old = parse_manifest(json.dumps(body).encode())
    assert old.stats.ledger_anchor is None and old.stats.content_digests is None

    good = {"last_seq": 7, "head_hash": "ab" * 32}
    body["stats"]["ledger_anchor"] = good
    assert parse_manifest(json.dumps(body)).stats.ledger_anchor == LedgerAnchor(7, "ab" * 32)
    for bad in ({"last_seq": -1, "head_hash": "ab" * 32}, {"last_seq": 7, "head_hash": "AB" * 32}):
        body["stats"]["ledger_anchor"] = bad
        with pytest.raises(ManifestError, match="ledger anchor"):
            parse_manifest(json.dumps(body))
    body["stats"]["ledger_anchor"] = good
    body["stats"]["content_digests"] = {"blnk.balances": "not a digest"}
    with pytest.raises(ManifestError, match="content digest"):
        parse_manifest(json.dumps(body))
