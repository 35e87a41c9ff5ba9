"""Streaming multipart upload: a stream of unknown length written as S3 parts, up to
``concurrency`` parts in flight while the next one fills, each with its own SHA-256.

It knows nothing of boto3: parts go to a ``PartStore`` (core/s3store.py's S3Store).

Memory stays bounded: the writer blocks when every worker is busy (back-pressure into pg_dump),
and parts above IN_MEMORY_PART_LIMIT spill to a temporary file. Part sizes grow so that a stream
of unknown length can reach more than 5 TiB within S3's 10,000 parts.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Protocol

from core.errors import StorageError

MiB = 1 << 20
GiB = 1 << 30
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * GiB
PART_GROWTH_EVERY = 500  # parts; doubling every 500 reaches > 25 TiB from a 5 MiB start
IN_MEMORY_PART_LIMIT = 16 * MiB  # larger parts spill to a temporary file
_READ_BLOCK = MiB


def part_size(part_number: int, base: int) -> int:
    """Given a 1-based part number and the first part size, return that part's size.

    Doubles every PART_GROWTH_EVERY parts (capped at 5 GiB) so a stream of unknown length can
    reach at least 5 TiB within S3's 10,000 parts while small backups keep small parts.
    """
    return min(base << ((part_number - 1) // PART_GROWTH_EVERY), MAX_PART_SIZE)


def max_stream_size(base: int) -> int:
    """Return the largest stream the part schedule can carry within 10,000 parts."""
    return sum(part_size(n, base) for n in range(1, MAX_PARTS + 1))


@dataclass(frozen=True)
class UploadedPart:
    """What is known of a part before it is sent: its size and checksum(s), base64."""

    size: int
    sha256_b64: str | None
    md5_b64: str | None


class PartStore(Protocol):
    """Where parts go: the S3 adapter."""

    bucket: str
    checksum: str  # "sha256" or "md5"

    def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | IO[bytes], part: UploadedPart
    ) -> str: ...

    def complete_upload(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], *, exclusive: bool = True
    ) -> None: ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...


@dataclass(frozen=True)
class CompletedUpload:
    size: int
    part_count: int
    checksum_sha256: str | None  # composite "base64-N", or None in md5 mode


class _PartBuffer:
    """One part being filled. Parts up to IN_MEMORY_PART_LIMIT live in memory and are sent as
    one bytes body (one sendall, no 8 KiB file reads); larger ones spill to a temporary file."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        # In memory: views of the chunks as read (no copy yet), joined once when sent.
        self._memory: list[memoryview] | None = None
        self._file: IO[bytes] | None = None
        if capacity <= IN_MEMORY_PART_LIMIT:
            self._memory = []
        else:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

    @property
    def room(self) -> int:
        return self.capacity - self.length

    def write(self, chunk: memoryview) -> None:
        if self._memory is not None:
            self._memory.append(chunk)
        else:
            assert self._file is not None
            self._file.write(chunk)
        self.length += len(chunk)

    def body_and_digests(self, with_md5: bool) -> tuple[bytes | IO[bytes], bytes, bytes | None]:
        """Return the body to send, its SHA-256 digest and (if asked) its MD5 digest."""
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
        if self._memory is not None:
            body = b"".join(self._memory)
            self._memory = None
            sha256.update(body)
            if md5 is not None:
                md5.update(body)
            return body, sha256.digest(), md5.digest() if md5 else None
        assert self._file is not None
        self._file.seek(0)
        while block := self._file.read(_READ_BLOCK):
            sha256.update(block)
            if md5 is not None:
                md5.update(block)
        self._file.seek(0)
        return self._file, sha256.digest(), md5.digest() if md5 else None

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()


class MultipartUpload:
    """Writes a stream of unknown length as parts, uploading up to ``concurrency`` parts while
    the next one fills. Memory stays bounded: the writer blocks when all workers are busy, and
    parts above IN_MEMORY_PART_LIMIT spill to a temporary file."""

    def __init__(
        self,
        store: PartStore,
        key: str,
        upload_id: str,
        first_part_size: int,
        concurrency: int,
        on_part: Callable[[int, int], None] | None,
    ) -> None:
        self.store = store
        self.key = key
        self.upload_id = upload_id
        self._base = first_part_size
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3-part")
        self._futures: list[Future[dict[str, Any]]] = []
        self._error: BaseException | None = None
        self._on_part = on_part
        self._uploaded_bytes = 0
        self._lock = threading.Lock()
        self._part_number = 0
        self._part: _PartBuffer | None = None
        self.size = 0
        self.finished = False

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data to the stream. Raise the first part failure, if any. The bytes are kept
        by reference until their part is sent: pass immutable bytes, not a reused buffer."""
        view = memoryview(data)
        while view:
            if self._error is not None:
                raise self._error
            if self._part is None:
                self._part_number += 1
                if self._part_number > MAX_PARTS:
                    raise StorageError("the dump exceeds what 10,000 parts can hold")
                self._part = _PartBuffer(part_size(self._part_number, self._base))
            chunk = view[: self._part.room]
            self._part.write(chunk)
            self.size += len(chunk)
            view = view[len(chunk) :]
            if not self._part.room:
                self._submit()

    def _submit(self) -> None:
        assert self._part is not None
        part, number = self._part, self._part_number
        self._part = None
        self._slots.acquire()
        try:
            future = self._pool.submit(self._upload_part, part, number)
        except BaseException:
            self._slots.release()
            part.close()
            raise
        self._futures.append(future)

    def _upload_part(self, part: _PartBuffer, number: int) -> dict[str, Any]:
        try:
            sha256_mode = self.store.checksum == "sha256"
            body, sha256, md5 = part.body_and_digests(with_md5=not sha256_mode)
            described = UploadedPart(
                part.length,
                base64.b64encode(sha256).decode() if sha256_mode else None,
                base64.b64encode(md5).decode() if md5 is not None else None,
            )
            entry: dict[str, Any] = {"PartNumber": number}
            if described.sha256_b64 is not None:
                entry["ChecksumSHA256"] = described.sha256_b64
            entry["ETag"] = self.store.upload_part(
                self.key, self.upload_id, number, body, described
            )
            entry["_sha256"] = sha256
            with self._lock:
                self._uploaded_bytes += part.length
                uploaded = self._uploaded_bytes
            if self._on_part is not None:
                self._on_part(number, uploaded)
            return entry
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise
        finally:
            part.close()
            self._slots.release()

    def complete(self) -> CompletedUpload:
        """Upload the last part, wait for all parts and complete the upload.

        Call only after the producer succeeded. Raise StorageError if any part failed.
        """
        if self.size == 0:
            raise StorageError("nothing to upload: the stream was empty")
        if self._part is not None:
            self._submit()
        parts = [future.result() for future in self._futures]
        self._pool.shutdown()
        if self._error is not None:
            raise self._error
        composite: str | None = None
        if self.store.checksum == "sha256":
            joined = b"".join(p["_sha256"] for p in parts)
            composite = f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(parts)}"
        listed = [{k: v for k, v in p.items() if not k.startswith("_")} for p in parts]
        self.store.complete_upload(self.key, self.upload_id, listed, exclusive=True)
        self.finished = True
        return CompletedUpload(self.size, len(parts), composite)

    def abort(self) -> None:
        """Stop uploading and abort the multipart upload so no part is left billed."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._part is not None:
            self._part.close()
            self._part = None
        self.store.abort_upload(self.key, self.upload_id)
