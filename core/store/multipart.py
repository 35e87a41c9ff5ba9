"""Streaming multipart upload: a stream of unknown length written as S3 parts, up to
``concurrency`` parts in flight while the next one fills, each with its own checksum — CRC32
(``S3_CHECKSUM=crc32``, the default), SHA-256 or Content-MD5.

In crc32 mode the object's checksum is a FULL_OBJECT CRC32: the CRC32 of the whole stream,
combined from the parts' CRC32s (no second pass over the bytes), which the store computes too
and which does not depend on the part layout. The whole-stream SHA-256 for the manifest is the
pump's (core/dumpstream.py), not this module's.

It knows nothing of boto3: parts go to a ``PartStore`` (core/store/s3.py's S3Store).

Memory stays bounded: the writer blocks when every worker is busy (back-pressure into pg_dump),
and parts above IN_MEMORY_PART_LIMIT spill to a temporary file. Part sizes grow so that a stream
of unknown length can reach more than 5 TiB within S3's 10,000 parts.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import threading
import zlib
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
FULL_OBJECT = "FULL_OBJECT"

# --- CRC32 arithmetic: the CRC32 of A+B from the CRC32s of A and B (zlib's crc32_combine) ---
_CRC32_POLY = 0xEDB88320  # the CRC-32 polynomial, reflected as zlib and S3 use it


def _multmodp(a: int, b: int) -> int:
    """Return a * b modulo the CRC-32 polynomial (both reflected, as zlib's multmodp)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) modulo the polynomial, k = 0..31
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """Given the CRC32 of A, the CRC32 of B and B's length, return the CRC32 of A + B."""
    p, n, k = 1 << 31, length2, 3  # x^(8 * length2): B's bits shift A's CRC along
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


def crc32_b64(crc: int) -> str:
    """A CRC32 as S3 writes it: the four bytes, big-endian, in base64."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


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
    """What is known of a part before it is sent: its size and its checksum, base64 (the one
    of the store's checksum mode; the others None)."""

    size: int
    sha256_b64: str | None
    md5_b64: str | None
    crc32_b64: str | None = None


class PartStore(Protocol):
    """Where parts go: the S3 adapter."""

    bucket: str
    checksum: str  # "crc32", "sha256" or "md5"

    def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | IO[bytes], part: UploadedPart
    ) -> str: ...

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        parts: list[dict[str, Any]],
        *,
        exclusive: bool = True,
        checksum_crc32: str | None = None,
    ) -> None: ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...


@dataclass(frozen=True)
class CompletedUpload:
    """A completed upload: its size, its parts, and the checksum(s) of what was streamed, in
    the forms a store reports them."""

    size: int
    part_count: int
    checksum_sha256: str | None  # sha256 mode: composite "base64-N"; otherwise None
    checksum_crc32: str | None = None  # crc32 mode: FULL_OBJECT CRC32 of the stream, base64
    checksum_crc32_composite: str | None = None  # crc32 mode: "base64-N" (a COMPOSITE upload)

    @property
    def store_checksum(self) -> str | None:
        """The object checksum the store is expected to report (None in md5 mode)."""
        return self.checksum_sha256 or self.checksum_crc32

    def checksum_problem(self, sha256: str | None, crc32: str | None) -> str | None:
        """Given the checksums a store reports for the object (``x-amz-checksum-sha256`` /
        ``-crc32``), return why they do not prove it holds what was streamed, or None if they
        do. A CRC32 may be the FULL_OBJECT one or, from a store that made the upload
        COMPOSITE, the composite of the parts' CRC32s; a SHA-256 is the composite."""
        if self.checksum_sha256 is not None:
            want, got = self.checksum_sha256, sha256
            if not got:
                return "the store returned no SHA-256 checksum"
            want_value, _, want_parts = want.partition("-")
            got_value, _, got_parts = got.partition("-")
            if got_value == want_value and (not got_parts or got_parts == want_parts):
                return None
            return f"checksum mismatch (streamed {want}, store reports {got})"
        if self.checksum_crc32 is not None:
            if not crc32:
                return "the store returned no CRC32 checksum"
            if crc32 in self._crc32_forms:
                return None
            return (
                f"checksum mismatch (streamed CRC32 {self.checksum_crc32}, store reports {crc32})"
            )
        return None  # md5 mode: the store checked every part's Content-MD5 on receipt

    @property
    def _crc32_forms(self) -> set[str]:
        """The CRC32 a store may report for this upload: FULL_OBJECT, or COMPOSITE with or
        without its ``-N``."""
        forms = {self.checksum_crc32, self.checksum_crc32_composite}
        if self.checksum_crc32_composite is not None:
            forms.add(self.checksum_crc32_composite.partition("-")[0])
        return {f for f in forms if f}

    def verified_checksum(self, crc32: str | None) -> str | None:
        """Given the CRC32 the store reported (and matched), return the object checksum to
        record: the composite SHA-256, the FULL_OBJECT CRC32, or the composite CRC32 (with its
        ``-N``) when the store reported that (None in md5 mode)."""
        if (
            self.checksum_crc32 is not None
            and crc32 is not None
            and crc32 != self.checksum_crc32
            and crc32 in self._crc32_forms
        ):
            return self.checksum_crc32_composite
        return self.store_checksum

    def verification(self, recorded: str | None) -> str:
        """What verification proved, for the manifest, given the recorded checksum."""
        if self.checksum_sha256 is not None:
            return "size+sha256-composite"
        if self.checksum_crc32 is not None:
            composite = recorded is not None and "-" in recorded
            return "size+crc32-composite" if composite else "size+crc32-full-object"
        return "size+content-md5-parts"


def summarise(parts: list[dict[str, Any]], size: int) -> CompletedUpload:
    """Given the uploaded parts in order (with the internal ``_sha256``/``_crc32`` and
    ``_size`` entries), return the completed upload's checksums as a store reports them."""
    count = len(parts)
    if parts and "_sha256" in parts[0]:
        joined = b"".join(p["_sha256"] for p in parts)
        composite = base64.b64encode(hashlib.sha256(joined).digest()).decode()
        return CompletedUpload(size, count, f"{composite}-{count}")
    if parts and "_crc32" in parts[0]:
        full = 0
        for part in parts:
            full = crc32_combine(full, part["_crc32"], part["_size"])
        joined = b"".join(p["_crc32"].to_bytes(4, "big") for p in parts)
        return CompletedUpload(
            size, count, None, crc32_b64(full), f"{crc32_b64(zlib.crc32(joined))}-{count}"
        )
    return CompletedUpload(size, count, None)


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

    def body_and_checksum(self, mode: str) -> tuple[bytes | IO[bytes], bytes | int]:
        """Return the body to send and its checksum in ``mode``: the SHA-256 or MD5 digest,
        or the CRC32 as an integer."""
        crc = 0
        digest = None
        if mode == "sha256":
            digest = hashlib.sha256()
        elif mode == "md5":
            digest = hashlib.md5(usedforsecurity=False)
        if self._memory is not None:
            body = b"".join(self._memory)
            self._memory = None
            if digest is None:
                return body, zlib.crc32(body)
            digest.update(body)
            return body, digest.digest()
        assert self._file is not None
        self._file.seek(0)
        while block := self._file.read(_READ_BLOCK):
            if digest is None:
                crc = zlib.crc32(block, crc)
            else:
                digest.update(block)
        self._file.seek(0)
        return self._file, crc if digest is None else digest.digest()

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
        *,
        full_object: bool = False,
    ) -> None:
        self.store = store
        self.key = key
        self.upload_id = upload_id
        # crc32 mode, and the store took the upload as FULL_OBJECT: completion then names the
        # whole stream's CRC32, which the store checks against what it received.
        self.full_object = full_object
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
            mode = self.store.checksum
            body, checksum = part.body_and_checksum(mode)
            entry: dict[str, Any] = {"PartNumber": number}
            if isinstance(checksum, int):
                described = UploadedPart(part.length, None, None, crc32_b64(checksum))
                entry["ChecksumCRC32"] = described.crc32_b64
                entry["_crc32"] = checksum
            elif mode == "sha256":
                described = UploadedPart(part.length, base64.b64encode(checksum).decode(), None)
                entry["ChecksumSHA256"] = described.sha256_b64
                entry["_sha256"] = checksum
            else:
                described = UploadedPart(part.length, None, base64.b64encode(checksum).decode())
            entry["_size"] = part.length
            entry["ETag"] = self.store.upload_part(
                self.key, self.upload_id, number, body, described
            )
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
        completed = summarise(parts, self.size)
        listed = [{k: v for k, v in p.items() if not k.startswith("_")} for p in parts]
        self.store.complete_upload(
            self.key,
            self.upload_id,
            listed,
            exclusive=True,
            checksum_crc32=completed.checksum_crc32 if self.full_object else None,
        )
        self.finished = True
        return completed

    def abort(self) -> None:
        """Stop uploading and abort the multipart upload so no part is left billed."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._part is not None:
            self._part.close()
            self._part = None
        self.store.abort_upload(self.key, self.upload_id)
