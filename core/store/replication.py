"""Second-region replication of a verified backup.

After the primary is verified, the dump is copied to ``S3_REPLICA_BUCKET`` and the copy is
verified in turn:

- same endpoint (AWS to AWS across regions, or one S3-compatible store), up to 5 GiB: a
  server-side ``CopyObject`` asking for a checksum of the copy in the checksum mode — a
  FULL_OBJECT CRC32, which must equal the primary's (it does not depend on the part layout), or
  a SHA-256 over the whole copy, which must equal the manifest's SHA-256;
- same endpoint, larger: a multipart server-side copy with the primary's exact part layout, so
  the replica's composite checksum (or full CRC32) must equal the primary's;
- different endpoints: a streamed copy (download → multipart upload, nothing buffered whole),
  checking the full SHA-256 on the way and the store's checksum at the end.

A checksum the replica reports that cannot be compared like with like is not trusted: the copy
is read back and its SHA-256 checked.

A failed replication is reported (the caller records and alerts) and never turns the verified
primary into a failure. Whatever a failed copy left on the replica is removed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from core.errors import EngineError, StorageError, VerificationError
from core.store.multipart import MAX_PARTS, part_size
from core.store.s3 import S3Store

log = logging.getLogger("blnk_backup.replication")

SINGLE_COPY_LIMIT = 5 << 30


@dataclass(frozen=True)
class ReplicaRecord:
    bucket: str
    key: str
    status: str  # verified | failed
    method: str
    seconds: float
    checksum: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Replicator:
    def __init__(
        self,
        primary: S3Store,
        replica: S3Store,
        *,
        same_endpoint: bool,
        concurrency: int = 3,
        single_copy_limit: int = SINGLE_COPY_LIMIT,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.same_endpoint = same_endpoint
        self.concurrency = concurrency
        self.single_copy_limit = single_copy_limit

    def replicate(
        self, key: str, size: int, sha256: str, store_checksum: str | None, first_part_size: int
    ) -> ReplicaRecord:
        """Copy key to the replica and verify it; return the record (never raises a
        EngineError: a failure is a record with status "failed")."""
        began = time.monotonic()
        if self.same_endpoint and size <= self.single_copy_limit:
            method = "server-side copy"
        elif self.same_endpoint:
            method = "multipart server-side copy"
        else:
            method = "streamed copy"
        try:
            if method == "server-side copy":
                checksum = self._copy_object(key, size, sha256, store_checksum)
            elif method == "multipart server-side copy":
                checksum = self._multipart_copy(key, size, sha256, store_checksum, first_part_size)
            else:
                checksum = self._streamed_copy(key, size, sha256, first_part_size)
        except EngineError as exc:
            log.error("replication of %s to %s failed: %s", key, self.replica.location, exc)
            self._remove_partial(key)
            return ReplicaRecord(
                self.replica.bucket,
                key,
                "failed",
                method,
                round(time.monotonic() - began, 3),
                error=exc.cause[:500],
            )
        return ReplicaRecord(
            self.replica.bucket,
            key,
            "verified",
            method,
            round(time.monotonic() - began, 3),
            checksum=checksum,
        )

    # --- methods ------------------------------------------------------------------------------
    def _copy_object(
        self, key: str, size: int, sha256: str, store_checksum: str | None
    ) -> str | None:
        self.replica.copy_from(self.primary, key)
        # Some stores keep the source's composite checksum on a copy instead of a new one.
        return self._verify(key, size, sha256, primary_checksum=store_checksum)

    def _multipart_copy(
        self, key: str, size: int, sha256: str, store_checksum: str | None, first_part_size: int
    ) -> str | None:
        upload_id, full_object = self.replica.begin_upload(key)
        # A FULL_OBJECT CRC32 upload is completed naming the primary's CRC32, if it is one.
        full_crc32 = (
            store_checksum
            if full_object and self._primary_crc32 and store_checksum and "-" not in store_checksum
            else None
        )
        try:
            parts, offset, number = [], 0, 0
            while offset < size:
                number += 1
                if number > MAX_PARTS:
                    raise StorageError("the part layout exceeds 10,000 parts")
                end = min(size, offset + part_size(number, first_part_size)) - 1
                parts.append(
                    self.replica.upload_part_copy(key, upload_id, number, self.primary, offset, end)
                )
                offset = end + 1
            self.replica.complete_upload(
                key, upload_id, parts, exclusive=False, checksum_crc32=full_crc32
            )
        except BaseException:
            self.replica.abort_upload(key, upload_id)
            raise
        return self._verify(key, size, sha256, primary_checksum=store_checksum)

    def _streamed_copy(self, key: str, size: int, sha256: str, first_part_size: int) -> str | None:
        upload = self.replica.start_upload(
            key, first_part_size=first_part_size, concurrency=self.concurrency
        )
        hasher = hashlib.sha256()
        try:
            for chunk in self.primary.read_chunks(key):
                hasher.update(chunk)
                upload.write(chunk)
            if hasher.hexdigest() != sha256:
                raise VerificationError(
                    f"{key} read back from the primary has SHA-256 {hasher.hexdigest()}, "
                    f"the manifest says {sha256}"
                )
            completed = upload.complete()
        except BaseException:
            if not upload.finished:
                upload.abort()
            raise
        return self._verify(key, size, sha256, primary_checksum=completed.store_checksum)

    # --- verification and clean-up -------------------------------------------------------------
    @property
    def _primary_crc32(self) -> bool:
        """Whether the primary's store checksum is a CRC32 (crc32 mode), not a SHA-256."""
        return self.primary.checksum == "crc32"

    def _verify(self, key: str, size: int, sha256: str, *, primary_checksum: str | None) -> str:
        """Check the replica's size, then its checksum like with like: a full-object SHA-256
        against the manifest's; a one-part composite (``X-1``, what some stores answer for a
        server-side copy) against the SHA-256 of the full digest; an N-part composite (with or
        without its ``-N``) or a CRC32 against the primary's checksum of the same kind. When the
        store gives no checksum or one that cannot be compared, read the copy back and hash it:
        a mismatch there is a VerificationError."""
        info = self.replica.head(key)
        if info is None or info.size != size:
            found = "nothing" if info is None else f"{info.size} bytes"
            raise VerificationError(f"replica of {key}: expected {size} bytes, found {found}")
        full = base64.b64encode(bytes.fromhex(sha256)).decode()
        one_part = base64.b64encode(hashlib.sha256(bytes.fromhex(sha256)).digest()).decode()
        known_sha256 = {full, one_part, one_part + "-1"}
        known_crc32: set[str] = set()
        if primary_checksum:  # the same part layout gives the same composite
            same = {primary_checksum, primary_checksum.partition("-")[0]}
            if self._primary_crc32:
                known_crc32 |= same
            else:
                known_sha256 |= same
        if info.checksum_sha256 is not None and info.checksum_sha256 in known_sha256:
            return info.checksum_sha256
        if info.checksum_crc32 is not None and info.checksum_crc32 in known_crc32:
            return info.checksum_crc32
        # No checksum, or one over a part layout we cannot reproduce: read the copy back.
        return self._read_back(key, size, sha256)

    def _read_back(self, key: str, size: int, sha256: str) -> str:
        hasher, length = hashlib.sha256(), 0
        for chunk in self.replica.read_chunks(key):
            hasher.update(chunk)
            length += len(chunk)
        if length != size or hasher.hexdigest() != sha256:
            raise VerificationError(
                f"replica of {key} read back: {length} bytes, SHA-256 {hasher.hexdigest()} "
                f"(expected {size} bytes, {sha256})"
            )
        return "read back: sha256 " + sha256

    def _remove_partial(self, key: str) -> None:
        try:
            self.replica.delete(key)
        except EngineError as exc:  # the store may be down; its lifecycle rule is the backstop
            log.warning("could not remove the partial replica of %s: %s", key, exc)
