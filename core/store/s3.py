"""The S3 transport: one bucket and prefix — client configuration, the reads verification
trusts, complete listings, multipart parts, server-side copies, bucket configuration, deletes
and aborts. What the objects mean (dumps, manifests, which backups are complete) is the
catalog's, core/store/listing.py, as barman keeps its backup catalog apart from its
CloudInterface. botocore errors are translated by core/store/errors.py at this boundary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import botocore.session
from botocore.config import Config
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigError, StorageError, VerificationError
from core.keys import BackupKey
from core.store.errors import s3_errors
from core.store.listing import BackupListing
from core.store.multipart import FULL_OBJECT, MiB, MultipartUpload, UploadedPart

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
else:
    S3Client = Any

_READ_BLOCK = MiB
# S3_CHECKSUM modes sent as S3 additional checksums (x-amz-checksum-*), with the algorithm's name.
ADDITIONAL_CHECKSUMS = {"crc32": "CRC32", "sha256": "SHA256"}
_ABSENT = {"404", "NoSuchKey", "NotFound"}

# Bucket configuration kinds, each a (get, put) pair of S3 operations and the argument name.
BUCKET_SETTINGS: dict[str, tuple[str, str, str]] = {
    "versioning": ("get_bucket_versioning", "put_bucket_versioning", "VersioningConfiguration"),
    "encryption": (
        "get_bucket_encryption",
        "put_bucket_encryption",
        "ServerSideEncryptionConfiguration",
    ),
    "public_access_block": (
        "get_public_access_block",
        "put_public_access_block",
        "PublicAccessBlockConfiguration",
    ),
    "lifecycle": (
        "get_bucket_lifecycle_configuration",
        "put_bucket_lifecycle_configuration",
        "LifecycleConfiguration",
    ),
}
_NOT_CONFIGURED = {
    "NoSuchLifecycleConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "NoSuchPublicAccessBlockConfiguration",
}


def make_client(
    settings: Settings,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    credentials: tuple[str | None, SecretStr | None] | None = None,
) -> S3Client:
    """Build a boto3 S3 client from settings (retries, timeouts, addressing, checksums), with
    the primary's credentials unless ``credentials`` (access key id, secret) are given."""
    additional = settings.s3_checksum in ADDITIONAL_CHECKSUMS
    when: Literal["when_supported", "when_required"] = (
        "when_supported" if additional else "when_required"
    )
    config = Config(
        region_name=region or settings.aws_region,
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max(10, settings.backup_upload_concurrency * 2),
        s3={
            "addressing_style": settings.addressing_style,
            # Parts carry a signed x-amz-checksum-crc32 (or -sha256) header that the store
            # checks, so the body need not be hashed again for the signature (AWS's own
            # default over HTTPS; over plain HTTP botocore would otherwise read and SHA-256
            # every part once more). A CRC32 detects corruption, not tampering: against a
            # forger on the path, use HTTPS (a plain-HTTP link shows the whole dump anyway).
            "payload_signing_enabled": not additional,
        },
        request_checksum_calculation=when,
        response_checksum_validation=when,
    )
    key_id, secret = credentials or (settings.aws_access_key_id, settings.aws_secret_access_key)
    # botocore's session, not boto3's: the same client and credential chain (environment,
    # profiles, instance roles) without importing boto3's transfer manager, which this program
    # does not use (its own multipart loop completes only after pg_dump exited 0).
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        endpoint_url=endpoint_url or settings.s3_endpoint_url,
        config=config,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    )
    return cast("S3Client", client)


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    checksum_sha256: str | None
    last_modified: datetime | None = None
    checksum_crc32: str | None = None
    checksum_type: str | None = None  # FULL_OBJECT or COMPOSITE, when the store says
    # the encryption the store applied (AES256, aws:kms, aws:kms:dsse), None when it says none
    sse: str | None = None
    etag: str | None = None


@dataclass(frozen=True)
class ListedObject:
    """One object as a listing shows it."""

    key: str
    size: int
    last_modified: datetime
    etag: str


@dataclass(frozen=True)
class IncompleteUpload:
    key: str
    upload_id: str
    initiated: datetime | None


class S3Store:
    """One bucket and prefix holding backups. Safe to share between threads."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        storage_class: str = "STANDARD",
        sse: str = "none",
        kms_key_id: str | None = None,
        checksum: str = "crc32",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.storage_class = storage_class
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.checksum = checksum
        # The backups this bucket holds (dumps, manifests, records): the catalog side.
        self.listing = BackupListing(self)

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
        key_id, secret = settings.s3_replica_access_key_id, settings.s3_replica_secret_access_key
        if (key_id is None) != (secret is None):
            raise ConfigError(
                ["S3_REPLICA_ACCESS_KEY_ID and S3_REPLICA_SECRET_ACCESS_KEY: set both or neither"]
            )
        client = make_client(
            settings,
            region=settings.s3_replica_region or settings.aws_region,
            endpoint_url=settings.s3_replica_endpoint_url or settings.s3_endpoint_url,
            credentials=(key_id, secret) if key_id is not None else None,
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
    def create_bucket(self) -> None:
        """Create the bucket (for demos and the local console's own S3 server)."""
        with s3_errors(f"creating the bucket {self.bucket}"):
            self.client.create_bucket(Bucket=self.bucket)

    def check_bucket(self) -> None:
        """Raise ConfigError if the bucket is missing, StorageError if unreachable."""
        with s3_errors("checking the bucket", self.bucket):
            self.client.head_bucket(Bucket=self.bucket)

    def head(self, key: str) -> ObjectInfo | None:
        """Return size and checksum of key as the store reports them, or None if absent."""
        try:
            with s3_errors(f"reading {key}"):
                # md5 mode is for stores that reject the newer checksum headers: ask for none.
                extra: dict[str, Any] = (
                    {"ChecksumMode": "ENABLED"} if self.checksum in ADDITIONAL_CHECKSUMS else {}
                )
                response = self.client.head_object(Bucket=self.bucket, Key=key, **extra)
        except StorageError as exc:
            if exc.s3_code in _ABSENT:
                return None
            raise
        return ObjectInfo(
            response["ContentLength"],
            response.get("ChecksumSHA256"),
            response.get("LastModified"),
            response.get("ChecksumCRC32"),
            response.get("ChecksumType"),
            response.get("ServerSideEncryption"),
            response.get("ETag"),
        )

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def read_small(self, key: str) -> bytes | None:
        """Return the bytes of a small object (manifest, record), or None if it is absent."""
        try:
            with s3_errors(f"reading {key}"):
                body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except StorageError as exc:
            if exc.s3_code in _ABSENT:
                return None
            raise
        return body

    def list_objects(self, start: str) -> Iterator[ListedObject]:
        """Every object whose key starts with ``start`` (after the prefix), in key order, page
        by page; raise StorageError if the listing cannot be completed."""
        with s3_errors("listing backups", self.bucket):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + start):
                for obj in page.get("Contents", []):
                    yield ListedObject(
                        obj["Key"], obj["Size"], obj["LastModified"], obj.get("ETag", "")
                    )

    def download(
        self, key: str, destination: IO[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> tuple[int, str]:
        """Stream key into destination; return (size, SHA-256 hex) of the bytes received."""
        sha256 = hashlib.sha256()
        size = 0
        for chunk in self.read_chunks(key):
            sha256.update(chunk)
            destination.write(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(size)
        return size, sha256.hexdigest()

    def read_chunks(self, key: str, block: int = _READ_BLOCK) -> Iterator[bytes]:
        """Yield the bytes of key in blocks, streamed (never the whole object in memory)."""
        with s3_errors(f"reading {key}", self.bucket):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                while chunk := body.read(block):
                    yield chunk
            finally:
                body.close()

    def get_json(self, key: str) -> Any | None:
        """Return the parsed JSON at key, or None if it does not exist or is not JSON."""
        raw = self.read_small(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def put_json(self, key: str, body: Any) -> None:
        with s3_errors(f"writing {key}", self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=json.dumps(body, indent=2, sort_keys=True, default=str).encode(),
                ContentType="application/json",
                **self.write_args(),
            )

    def put_verified(self, key: str, body: bytes) -> ObjectInfo:
        """PUT a small object held in memory (a WAL segment) with its checksum, which the store
        checks on receipt, then read back its size and checksum; raise VerificationError if
        the store holds anything else."""
        args = self.write_args()
        crc = base64.b64encode((zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")).decode()
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if self.checksum == "crc32":
            args["ChecksumCRC32"] = crc
        elif self.checksum == "sha256":
            args["ChecksumSHA256"] = sha
        else:
            args["ContentMD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324
        with s3_errors(f"writing {key}", self.bucket):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **args)
        info = self.head(key)
        if info is None or info.size != len(body):
            raise VerificationError(
                f"{key}: the store holds {'nothing' if info is None else info.size} "
                f"instead of {len(body):,} bytes"
            )
        expected = {"crc32": (info.checksum_crc32, crc), "sha256": (info.checksum_sha256, sha)}
        found, wanted = expected.get(self.checksum, (None, None))
        if found is not None and found != wanted:
            raise VerificationError(f"{key}: the store's {self.checksum} is not the bytes' one")
        return info

    def holds(self, key: str, body: bytes) -> bool:
        """True when ``key`` holds exactly ``body``: the same size and the same checksum as
        the store reports it (CRC32 or SHA-256, as ``put_verified`` wrote it; in md5 mode a
        plain ETag). False when it cannot tell: the caller writes it again."""
        info = self.head(key)
        if info is None or info.size != len(body):
            return False
        if self.checksum == "crc32" and info.checksum_crc32:
            crc = (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")
            return info.checksum_crc32 == base64.b64encode(crc).decode()
        if self.checksum == "sha256" and info.checksum_sha256:
            digest = hashlib.sha256(body).digest()
            return info.checksum_sha256 == base64.b64encode(digest).decode()
        # A store that keeps no additional checksum: a one-part PUT's ETag is its MD5 (not
        # under SSE-KMS, where this answers False and the caller writes it again).
        md5 = hashlib.md5(body).hexdigest()  # noqa: S324 - compared with the store's ETag
        return (info.etag or "").strip('"') == md5

    def incomplete_uploads(self) -> list[IncompleteUpload]:
        """Return the store's in-progress multipart uploads of backup keys under the prefix
        (what a killed process leaves), whatever the local audit log knows."""
        found = []
        with s3_errors("listing incomplete uploads", self.bucket):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "blnk_backup_"):
                for upload in page.get("Uploads", []):
                    key = upload.get("Key", "")
                    if BackupKey.parse(key, self.prefix) and upload.get("UploadId"):
                        found.append(
                            IncompleteUpload(key, upload["UploadId"], upload.get("Initiated"))
                        )
        return found

    # --- writes -----------------------------------------------------------------------------
    def write_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"StorageClass": self.storage_class}
        if self.sse != "none":
            args["ServerSideEncryption"] = self.sse
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def create_upload(self, key: str) -> str:
        """Begin a multipart upload of key and return its id. This is also the bucket's
        write-permission check."""
        return self.begin_upload(key)[0]

    def begin_upload(self, key: str) -> tuple[str, bool]:
        """Begin a multipart upload of key; return its id and whether the store took it as a
        FULL_OBJECT CRC32 upload (crc32 mode: asked for; a store that does not know the
        checksum type makes it COMPOSITE, and completion must then not name a full CRC32)."""
        args = self.write_args()
        algorithm = ADDITIONAL_CHECKSUMS.get(self.checksum)
        if algorithm is not None:
            args["ChecksumAlgorithm"] = algorithm
        if algorithm == "CRC32":
            args["ChecksumType"] = FULL_OBJECT
        with s3_errors(f"starting the upload of {key}", self.bucket):
            response = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **args)
        return response["UploadId"], response.get("ChecksumType") == FULL_OBJECT

    def start_upload(
        self,
        key: str,
        *,
        first_part_size: int,
        concurrency: int,
        on_part: Callable[[int, int], None] | None = None,
    ) -> MultipartUpload:
        """Begin a streaming multipart upload of key (see core/store/multipart.py)."""
        upload_id, full_object = self.begin_upload(key)
        return MultipartUpload(
            self, key, upload_id, first_part_size, concurrency, on_part, full_object=full_object
        )

    def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | IO[bytes], part: UploadedPart
    ) -> str:
        """Upload one part with its checksum (CRC32, SHA-256, or Content-MD5 in md5 mode);
        return its ETag."""
        args: dict[str, Any] = {}
        if part.crc32_b64 is not None:
            args = {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": part.crc32_b64}
        elif part.sha256_b64 is not None:
            args = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": part.sha256_b64}
        elif part.md5_b64 is not None:
            args = {"ContentMD5": part.md5_b64}
        with s3_errors(f"uploading part {number} of {key}", self.bucket):
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=part.size,
                **args,
            )
        return response["ETag"]

    def upload_part_copy(
        self, key: str, upload_id: str, number: int, source: S3Store, first: int, last: int
    ) -> dict[str, Any]:
        """Copy bytes first..last of the same key in ``source`` as part ``number``, server-side;
        return the part entry for completion (ETag, and the part's checksum when given)."""
        with s3_errors(f"copying part {number} of {key}", self.bucket):
            result = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": source.bucket, "Key": key},
                CopySourceRange=f"bytes={first}-{last}",
            )["CopyPartResult"]
        part: dict[str, Any] = {"PartNumber": number, "ETag": result["ETag"]}
        for name in ("ChecksumSHA256", "ChecksumCRC32"):
            if result.get(name):
                part[name] = result[name]
        return part

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        parts: list[dict[str, Any]],
        *,
        exclusive: bool = True,
        checksum_crc32: str | None = None,
    ) -> None:
        """Complete a multipart upload from its parts; with ``exclusive`` send
        ``If-None-Match: *`` so a store that supports it refuses to overwrite a backup. With
        ``checksum_crc32`` (a FULL_OBJECT upload) name the whole object's CRC32, which the store
        checks against what it received before it completes."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if exclusive else {}
        if checksum_crc32 is not None:
            extra |= {"ChecksumCRC32": checksum_crc32, "ChecksumType": FULL_OBJECT}
        with s3_errors(f"completing the upload of {key}", self.bucket):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                **extra,
            )

    def copy_from(self, source: S3Store, key: str) -> None:
        """Server-side copy of the same key from ``source`` (up to 5 GiB), asking the store for
        a checksum of the copy (CRC32 or SHA-256, by the checksum mode)."""
        args = self.write_args()
        if self.checksum in ADDITIONAL_CHECKSUMS:
            args["ChecksumAlgorithm"] = ADDITIONAL_CHECKSUMS[self.checksum]
        with s3_errors(f"copying {key} to {self.location}", self.bucket):
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": source.bucket, "Key": key},
                **args,
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

    # --- bucket configuration -----------------------------------------------------------------
    def bucket_setting(self, kind: str) -> dict[str, Any] | None:
        """Return the bucket's configuration of ``kind`` (a BUCKET_SETTINGS name), or None if
        it has none. Raise StorageError (s3_code NotImplemented, ...) if the store cannot say."""
        getter, _setter, _arg = BUCKET_SETTINGS[kind]
        try:
            with s3_errors(f"reading the {kind} of {self.bucket}", self.bucket):
                response: dict[str, Any] = getattr(self.client, getter)(Bucket=self.bucket)
        except StorageError as exc:
            if exc.s3_code in _NOT_CONFIGURED:
                return None
            raise
        response.pop("ResponseMetadata", None)
        return response

    def put_bucket_setting(self, kind: str, configuration: dict[str, Any]) -> None:
        """Set the bucket's configuration of ``kind``. Raise StorageError if refused."""
        _getter, setter, arg = BUCKET_SETTINGS[kind]
        with s3_errors(f"changing the {kind} of {self.bucket}", self.bucket):
            getattr(self.client, setter)(Bucket=self.bucket, **{arg: configuration})
