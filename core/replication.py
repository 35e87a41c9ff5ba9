"""Second-region replication of a verified backup.

After the primary is verified, the dump is copied to ``S3_REPLICA_BUCKET`` and the copy is
verified in turn:

- same endpoint (AWS to AWS across regions, or one S3-compatible store), up to 5 GiB: a
  server-side ``CopyObject`` asking for a SHA-256 checksum, which the store computes over the
  whole copy and which must equal the manifest's SHA-256;
- same endpoint, larger: a multipart server-side copy with the primary's exact part layout, so
  the replica's composite checksum must equal the primary's;
- different endpoints: a streamed copy (download → multipart upload, nothing buffered whole),
  checking the full SHA-256 on the way and the composite checksum at the end.

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

from core.errors import BackupError, StorageError, VerificationError
from core.multipart import MAX_PARTS, part_size
from core.s3store import S3Store

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
        BackupError: a failure is a record with status "failed")."""
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
        except BackupError as exc:
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
        return self._verify(key, size, sha256, primary_composite=store_checksum)

    def _multipart_copy(
        self, key: str, size: int, sha256: str, store_checksum: str | None, first_part_size: int
    ) -> str | None:
        upload_id = self.replica.create_upload(key)
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
            self.replica.complete_upload(key, upload_id, parts, exclusive=False)
        except BaseException:
            self.replica.abort_upload(key, upload_id)
            raise
        return self._verify(key, size, sha256, primary_composite=store_checksum)

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
        return self._verify(key, size, sha256, primary_composite=completed.checksum_sha256)

    # --- verification and clean-up -------------------------------------------------------------
    def _verify(
        self, key: str, size: int, sha256: str, *, primary_composite: str | None
    ) -> str | None:
        """Check the replica's size, then its checksum like with like: a full-object SHA-256
        against the manifest's; a one-part composite (``X-1``, what some stores answer for a
        server-side copy) against the SHA-256 of the full digest; an N-part composite (with or
        without its ``-N``) against the primary's composite of the same layout. When the store
        gives no checksum or one that cannot be compared, read the copy back and hash it: a
        mismatch there is a VerificationError."""
        info = self.replica.head(key)
        if info is None or info.size != size:
            found = "nothing" if info is None else f"{info.size} bytes"
            raise VerificationError(f"replica of {key}: expected {size} bytes, found {found}")
        got = info.checksum_sha256
        full = base64.b64encode(bytes.fromhex(sha256)).decode()
        one_part = base64.b64encode(hashlib.sha256(bytes.fromhex(sha256)).digest()).decode()
        known = {full, one_part, one_part + "-1"}
        if primary_composite:  # the same part layout gives the same composite
            known |= {primary_composite, primary_composite.partition("-")[0]}
        if got is not None and got in known:
            return got
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
        except BackupError as exc:  # the store may be down; its lifecycle rule is the backstop
            log.warning("could not remove the partial replica of %s: %s", key, exc)
