"""The S3 adapter: one bucket and prefix holding backups — client configuration, reads the
verification trusts, complete listings, manifests, deletes and aborts. Streaming uploads are in
core/multipart.py; botocore errors are translated by core/s3errors.py at this boundary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config

from core.config import Settings
from core.errors import StorageError
from core.keys import MANIFEST_SUFFIX, RESTORE_TEST_SUFFIX, BackupKey
from core.manifest import Manifest
from core.multipart import MiB, MultipartUpload
from core.s3errors import s3_errors

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
else:
    S3Client = Any

_READ_BLOCK = MiB


def make_client(
    settings: Settings, *, region: str | None = None, endpoint_url: str | None = None
) -> S3Client:
    """Build a boto3 S3 client from settings (retries, timeouts, addressing, checksums)."""
    when: Literal["when_supported", "when_required"] = (
        "when_supported" if settings.s3_checksum == "sha256" else "when_required"
    )
    config = Config(
        region_name=region or settings.aws_region,
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max(10, settings.backup_upload_concurrency * 2),
        s3={
            "addressing_style": settings.addressing_style,
            # Parts carry a signed x-amz-checksum-sha256 header that the store checks, so the
            # body need not be hashed again for the signature (AWS's own default over HTTPS;
            # over plain HTTP botocore would otherwise read and hash every part once more).
            "payload_signing_enabled": settings.s3_checksum != "sha256",
        },
        request_checksum_calculation=when,
        response_checksum_validation=when,
    )
    secret = settings.aws_secret_access_key
    session = boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    )
    return session.client(
        "s3", endpoint_url=endpoint_url or settings.s3_endpoint_url, config=config
    )


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    checksum_sha256: str | None


@dataclass(frozen=True)
class StoredBackup:
    """A dump found in the bucket; ``complete`` only if its manifest exists."""

    key: BackupKey
    size: int
    last_modified: datetime
    complete: bool
    restore_tested_at: datetime | None = None  # when its restore-test record was written


@dataclass(frozen=True)
class Inventory:
    backups: list[StoredBackup]
    orphan_side_files: list[str]


class S3Store:
    """One bucket and prefix holding backups."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        storage_class: str = "STANDARD",
        sse: str = "none",
        kms_key_id: str | None = None,
        checksum: str = "sha256",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.storage_class = storage_class
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.checksum = checksum

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        settings.require("s3_bucket")
        assert settings.s3_bucket is not None
        return cls(
            make_client(settings),
            settings.s3_bucket,
            settings.s3_prefix,
            storage_class=settings.s3_storage_class,
            sse=settings.s3_sse,
            kms_key_id=settings.s3_sse_kms_key_id,
            checksum=settings.s3_checksum,
        )

    @classmethod
    def replica_from_settings(cls, settings: Settings) -> S3Store | None:
        """The second-region store (S3_REPLICA_*), or None if not configured. Same prefix,
        storage class and encryption as the primary."""
        if settings.s3_replica_bucket is None:
            return None
        client = make_client(
            settings,
            region=settings.s3_replica_region or settings.aws_region,
            endpoint_url=settings.s3_replica_endpoint_url or settings.s3_endpoint_url,
        )
        return cls(
            client,
            settings.s3_replica_bucket,
            settings.s3_prefix,
            storage_class=settings.s3_storage_class,
            sse=settings.s3_sse,
            kms_key_id=settings.s3_sse_kms_key_id,
            checksum=settings.s3_checksum,
        )

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # --- reads ------------------------------------------------------------------------------
    def check_bucket(self) -> None:
        """Raise ConfigError if the bucket is missing, StorageError if unreachable."""
        with s3_errors("checking the bucket", self.bucket):
            self.client.head_bucket(Bucket=self.bucket)

    def head(self, key: str) -> ObjectInfo | None:
        """Return size and checksum of key as the store reports them, or None if absent."""
        try:
            with s3_errors(f"reading {key}"):
                response = self.client.head_object(
                    Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
                )
        except StorageError as exc:
            if exc.s3_code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ObjectInfo(response["ContentLength"], response.get("ChecksumSHA256"))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def _read_small(self, key: str) -> bytes | None:
        """Return the bytes of a small object (manifest, record), or None if it is absent."""
        try:
            with s3_errors(f"reading {key}"):
                body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except StorageError as exc:
            if exc.s3_code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return body

    def get_manifest(self, key: BackupKey) -> Manifest | None:
        """Return the manifest of a backup, or None if it has none."""
        raw = self._read_small(key.manifest_key)
        return Manifest.from_json(raw) if raw is not None else None

    def list_backups(self) -> list[StoredBackup]:
        """Return every dump matching the naming pattern, oldest first.

        The listing is complete or this raises StorageError: callers that delete rely on it.
        """
        return self.inventory().backups

    def inventory(self) -> Inventory:
        """List the prefix once: the dumps (with manifest and restore-test flags) and the
        side files (manifests, restore-test records) whose dump is gone — what an interrupted
        prune leaves. Complete or StorageError."""
        dumps: dict[str, tuple[int, datetime]] = {}
        manifests: set[str] = set()
        restore_tests: dict[str, datetime] = {}
        with s3_errors("listing backups", self.bucket):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "blnk_backup_"):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith(MANIFEST_SUFFIX):
                        manifests.add(key.removesuffix(MANIFEST_SUFFIX))
                    elif key.endswith(RESTORE_TEST_SUFFIX):
                        restore_tests[key.removesuffix(RESTORE_TEST_SUFFIX)] = obj["LastModified"]
                    elif BackupKey.parse(key, self.prefix):
                        dumps[key] = (obj["Size"], obj["LastModified"])
        found = []
        for key, (size, modified) in dumps.items():
            parsed = BackupKey.parse(key, self.prefix)
            assert parsed is not None
            found.append(
                StoredBackup(parsed, size, modified, key in manifests, restore_tests.get(key))
            )
        orphans = sorted(
            [k + MANIFEST_SUFFIX for k in manifests - set(dumps) if BackupKey.parse(k, self.prefix)]
            + [
                k + RESTORE_TEST_SUFFIX
                for k in set(restore_tests) - set(dumps)
                if BackupKey.parse(k, self.prefix)
            ]
        )
        return Inventory(sorted(found, key=lambda b: b.key), orphans)

    def download(
        self, key: str, destination: IO[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> tuple[int, str]:
        """Stream key into destination; return (size, SHA-256 hex) of the bytes received."""
        sha256 = hashlib.sha256()
        size = 0
        with s3_errors(f"downloading {key}", self.bucket):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            while chunk := body.read(_READ_BLOCK):
                sha256.update(chunk)
                destination.write(chunk)
                size += len(chunk)
                if on_bytes is not None:
                    on_bytes(size)
        return size, sha256.hexdigest()

    def get_json(self, key: str) -> Any | None:
        """Return the parsed JSON object at key, or None if it does not exist."""
        raw = self._read_small(key)
        return json.loads(raw) if raw is not None else None

    def put_json(self, key: str, body: Any) -> None:
        with s3_errors(f"writing {key}", self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=json.dumps(body, indent=2, sort_keys=True, default=str).encode(),
                ContentType="application/json",
                **self.write_args(),
            )

    # --- writes -----------------------------------------------------------------------------
    def write_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"StorageClass": self.storage_class}
        if self.sse != "none":
            args["ServerSideEncryption"] = self.sse
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def start_upload(
        self,
        key: str,
        *,
        first_part_size: int,
        concurrency: int,
        on_part: Callable[[int, int], None] | None = None,
    ) -> MultipartUpload:
        """Begin a multipart upload of key. This is also the bucket's write-permission check."""
        args = self.write_args()
        if self.checksum == "sha256":
            args["ChecksumAlgorithm"] = "SHA256"
        with s3_errors(f"starting the upload of {key}", self.bucket):
            response = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **args)
        return MultipartUpload(
            self, key, response["UploadId"], first_part_size, concurrency, on_part
        )

    def put_manifest(self, manifest: Manifest) -> None:
        key = manifest.key + MANIFEST_SUFFIX
        with s3_errors(f"writing the manifest {key}", self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=manifest.to_json(),
                ContentType="application/json",
                **self.write_args(),
            )

    def delete(self, key: str) -> None:
        with s3_errors(f"deleting {key}", self.bucket):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: list[str]) -> list[str]:
        """Delete keys in batches of 1,000; return the keys that could not be deleted, each
        with the store's reason. Stores that reject batch deletes get one request per key."""
        failed: list[str] = []
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                with s3_errors("deleting backups", self.bucket):
                    response = self.client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    )
            except StorageError as exc:
                if exc.s3_code in {"AccessDenied", "NoSuchBucket"}:
                    raise
                failed += self._delete_one_by_one(batch)
                continue
            failed += [
                f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}".strip()
                for e in response.get("Errors", [])
            ]
        return failed

    def _delete_one_by_one(self, keys: list[str]) -> list[str]:
        failed = []
        for key in keys:
            try:
                self.delete(key)
            except StorageError as exc:
                failed.append(f"{key}: {exc.s3_code}")
        return failed

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; an upload that no longer exists counts as aborted."""
        try:
            with s3_errors(f"aborting the upload of {key}", self.bucket):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except StorageError as exc:
            if exc.s3_code != "NoSuchUpload":
                raise
