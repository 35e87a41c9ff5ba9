"""Base backups for point-in-time recovery: ``pg_basebackup -Ft -X none`` streamed from the
bot's host straight into the bucket (``base/<stamp>/base.tar``, the backup manifest with a
SHA-256 of every file inside it, as pg_basebackup writes it to a stream), verified like a dump
(size and checksum read back), then ``base/<stamp>/base.json`` — written last, so a base
backup without it is incomplete. Its WAL comes from the archive (``-X none``): the start and
end positions in base.json say which segments recovery needs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from core import __version__
from core.audit import Actor, AuditLog
from core.database import PgTarget
from core.errors import DumpError, VerificationError
from core.processes import StreamingProcess, find_tool, tool_version
from core.store.multipart import MiB
from core.store.s3 import S3Store
from core.wal.names import BASE_DIR, base_key, format_lsn, parse_lsn

log = logging.getLogger("blnk_backup.wal")

_READ = MiB
_TAIL = 64 * MiB  # the end of the stream kept to read the manifest from (about 100 B a file)
_MANIFEST_START = b'{ "PostgreSQL-Backup-Manifest-Version"'


@dataclass(frozen=True)
class BaseBackup:
    """A base backup in the bucket, as its base.json records it."""

    stamp: str  # YYYYMMDD_HHMMSS, UTC, when it started
    key: str
    size: int
    sha256: str
    timeline: int
    start_lsn: str
    end_lsn: str
    started_at: str
    finished_at: str  # the earliest time recovery from it can reach (consistent from here)
    server_major: int
    tool_version: str

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    @property
    def start(self) -> int:
        return parse_lsn(self.start_lsn)

    @property
    def end(self) -> int:
        return parse_lsn(self.end_lsn)

    @classmethod
    def from_json(cls, body: Any) -> BaseBackup | None:
        """A base.json's content, or None when it is not one (never trusted further)."""
        if not isinstance(body, dict):
            return None
        try:
            made = cls(**{f: body[f] for f in cls.__dataclass_fields__})
            made.start, made.end, made.finished  # noqa: B018 - they must parse
        except (KeyError, TypeError, ValueError):
            return None
        return made


class BaseBackupService:
    """Takes base backups of ``source`` into ``store``, audited as ``base_backup`` runs."""

    def __init__(
        self,
        source: PgTarget,
        store: S3Store,
        audit: AuditLog,
        *,
        bin_dir: str | None = None,
        part_size_mib: int = 16,
        concurrency: int = 4,
    ) -> None:
        self.source = source
        self.store = store
        self.audit = audit
        self.binary = find_tool("pg_basebackup", bin_dir)
        self.part_size = part_size_mib * MiB
        self.concurrency = concurrency

    def run(self, actor: Actor, reason: str | None = None) -> BaseBackup:
        with self.audit.run("base_backup", actor, reason=reason) as run:
            began = datetime.now(UTC)
            stamp = began.strftime("%Y%m%d_%H%M%S")
            key = base_key(self.store.prefix, stamp)
            run.note(key=key)
            size, sha256, manifest = self._stream(key, stamp)
            timeline, start_lsn, end_lsn = _wal_range(manifest)
            backup = BaseBackup(
                stamp=stamp,
                key=key,
                size=size,
                sha256=sha256,
                timeline=timeline,
                start_lsn=format_lsn(start_lsn),
                end_lsn=format_lsn(end_lsn),
                started_at=began.isoformat(),
                finished_at=datetime.now(UTC).isoformat(),
                server_major=self._server_major(),
                tool_version=__version__,
            )
            self.store.put_json(base_key(self.store.prefix, stamp, "base.json"), asdict(backup))
            run.note(size=size, sha256=sha256, details={"start_lsn": backup.start_lsn})
        log.info(
            "base backup %s: %s bytes, WAL %s..%s", key, size, backup.start_lsn, backup.end_lsn
        )
        return backup

    def _stream(self, key: str, stamp: str) -> tuple[int, str, bytes]:
        """Run pg_basebackup into a multipart upload of ``key``; return size, SHA-256 and
        the end of the stream, which holds the backup manifest (pg_basebackup writes it last
        into a tar it streams). On any failure the upload is aborted."""
        argv = [
            self.binary,
            "--pgdata=-",
            "--format=tar",
            "--wal-method=none",
            "--checkpoint=fast",
            "--manifest-checksums=SHA256",
            f"--label=blnk-backup {stamp}",
            f"--dbname={self.source.conninfo}",
            "--no-password",
        ]
        upload = self.store.start_upload(
            key, first_part_size=self.part_size, concurrency=self.concurrency
        )
        sha256 = hashlib.sha256()
        size = 0
        tail: deque[bytes] = deque()
        kept = 0
        try:
            with StreamingProcess(
                argv, self.source.libpq_env(dict(os.environ)), [self.source.password]
            ) as process:
                while chunk := process.read(_READ):
                    sha256.update(chunk)
                    upload.write(chunk)
                    size += len(chunk)
                    tail.append(chunk)
                    kept += len(chunk)
                    while kept - len(tail[0]) >= _TAIL:
                        kept -= len(tail.popleft())
                code = process.wait()
                said = process.stderr_tail(20)
            if code != 0:
                raise DumpError(f"pg_basebackup exited {code}: {said}", cause=said)
            completed = upload.complete()
        except BaseException:
            upload.abort()
            raise
        info = self.store.head(key)
        if info is None or info.size != size:
            raise VerificationError(f"{key}: streamed {size} bytes, the store holds otherwise")
        problem = completed.checksum_problem(info.checksum_sha256, info.checksum_crc32)
        if problem is not None:
            raise VerificationError(f"{key}: {problem}")
        return size, sha256.hexdigest(), b"".join(tail)

    def _server_major(self) -> int:
        with self.source.connect(autocommit=True) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        return int(row[0]) // 10000 if row else tool_version(self.binary)[0]

    @staticmethod
    def list_in(store: S3Store) -> list[BaseBackup]:
        """The complete base backups in ``store`` (those with a valid base.json), oldest
        first."""
        return base_inventory(store)[0]


def base_inventory(store: S3Store) -> tuple[list[BaseBackup], list[tuple[str, datetime]]]:
    """The complete base backups in ``store`` (oldest first), and every base.tar without a
    base.json beside it, with when it was written."""
    found = []
    tars: dict[str, datetime] = {}
    described: set[str] = set()
    for obj in store.list_objects(BASE_DIR):
        directory = obj.key.rsplit("/", 1)[0]
        if obj.key.endswith("/base.json"):
            described.add(directory)
            backup = BaseBackup.from_json(store.get_json(obj.key))
            if backup is not None and backup.key == f"{directory}/base.tar":
                found.append(backup)
        elif obj.key.endswith("/base.tar"):
            tars[directory] = obj.last_modified
    orphans = [(d + "/base.tar", t) for d, t in sorted(tars.items()) if d not in described]
    return sorted(found, key=lambda b: b.stamp), orphans


def _wal_range(tail: bytes) -> tuple[int, int, int]:
    """The timeline, start and end LSN of a base backup, from the backup manifest at the end
    of its tar stream (its ``WAL-Ranges``). Raise DumpError if it cannot be read."""
    at = tail.rfind(_MANIFEST_START)
    if at < 0:
        raise DumpError("the base backup's stream ends without its backup manifest")
    end = tail.find(b"\0", at)
    try:
        manifest = json.loads(tail[at : end if end >= 0 else len(tail)])
        ranges = manifest["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        return int(last["Timeline"]), parse_lsn(first["Start-LSN"]), parse_lsn(last["End-LSN"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise DumpError(f"the base backup's manifest cannot be read: {exc}") from None
