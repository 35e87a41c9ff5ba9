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
from core.s3errors import s3_errors
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
                checksum = self._copy_object(key, size, sha256)
            elif method == "multipart server-side copy":
                checksum = self._multipart_copy(key, size, store_checksum, first_part_size)
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
    def _copy_object(self, key: str, size: int, sha256: str) -> str | None:
        args = self.replica.write_args()
        if self.replica.checksum == "sha256":
            args["ChecksumAlgorithm"] = "SHA256"
        with s3_errors(f"copying {key} to the replica", self.replica.bucket):
            self.replica.client.copy_object(
                Bucket=self.replica.bucket,
                Key=key,
                CopySource={"Bucket": self.primary.bucket, "Key": key},
                **args,
            )
        full = base64.b64encode(bytes.fromhex(sha256)).decode()
        return self._verify(key, size, accept={full})

    def _multipart_copy(
        self, key: str, size: int, store_checksum: str | None, first_part_size: int
    ) -> str | None:
        client, bucket = self.replica.client, self.replica.bucket
        args = self.replica.write_args()
        if self.replica.checksum == "sha256":
            args["ChecksumAlgorithm"] = "SHA256"
        with s3_errors(f"copying {key} to the replica", bucket):
            upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **args)["UploadId"]
        try:
            parts, offset, number = [], 0, 0
            while offset < size:
                number += 1
                if number > MAX_PARTS:
                    raise StorageError("the part layout exceeds 10,000 parts")
                end = min(size, offset + part_size(number, first_part_size)) - 1
                with s3_errors(f"copying part {number} of {key}", bucket):
                    result = client.upload_part_copy(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.primary.bucket, "Key": key},
                        CopySourceRange=f"bytes={offset}-{end}",
                    )["CopyPartResult"]
                part: dict[str, Any] = {"PartNumber": number, "ETag": result["ETag"]}
                if result.get("ChecksumSHA256"):
                    part["ChecksumSHA256"] = result["ChecksumSHA256"]
                parts.append(part)
                offset = end + 1
            with s3_errors(f"completing the copy of {key}", bucket):
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            self.replica.abort_upload(key, upload_id)
            raise
        return self._verify(key, size, accept={store_checksum} if store_checksum else set())

    def _streamed_copy(self, key: str, size: int, sha256: str, first_part_size: int) -> str | None:
        upload = self.replica.start_upload(
            key, first_part_size=first_part_size, concurrency=self.concurrency
        )
        hasher = hashlib.sha256()
        try:
            with s3_errors(f"reading {key} from the primary", self.primary.bucket):
                body = self.primary.client.get_object(Bucket=self.primary.bucket, Key=key)["Body"]
                while chunk := body.read(1 << 20):
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
        accept = {completed.checksum_sha256} if completed.checksum_sha256 else set()
        return self._verify(key, size, accept=accept)

    # --- verification and clean-up -------------------------------------------------------------
    def _verify(self, key: str, size: int, accept: set[str]) -> str | None:
        info = self.replica.head(key)
        if info is None or info.size != size:
            found = "nothing" if info is None else f"{info.size} bytes"
            raise VerificationError(f"replica of {key}: expected {size} bytes, found {found}")
        if not accept:  # md5 mode: the store checked each part on receipt
            return info.checksum_sha256
        got = (info.checksum_sha256 or "").split("-")[0]
        if got not in {a.split("-")[0] for a in accept}:
            raise VerificationError(
                f"replica of {key}: checksum {info.checksum_sha256} does not match "
                f"{', '.join(sorted(accept))}"
            )
        return info.checksum_sha256

    def _remove_partial(self, key: str) -> None:
        try:
            self.replica.delete(key)
        except BackupError as exc:  # the store may be down; its lifecycle rule is the backstop
            log.warning("could not remove the partial replica of %s: %s", key, exc)
