"""The pump that reads pg_dump's pipe: every byte, in order, in 1 MiB chunks, hashed — and in
far fewer reads than the writer's 4 KiB writes (it naps while the pipe fills)."""

from __future__ import annotations

import hashlib
import os
import sys
import threading

from core.database import PgTarget
from core.dumpstream import DumpStream
from core.processes import StreamingProcess

WRITES = 2_000
# Like pg_dump: 4 KiB writes, at a few MB/s with pauses, then a burst, then a short tail.
WRITER = f"""
import os, time
block = bytes(range(256)) * 16
for i in range({WRITES}):
    os.write(1, block[i % 7 :] + block[: i % 7])
    if i < {WRITES} // 2:
        time.sleep(0.0005)
    elif i % 400 == 0:
        time.sleep(0.05)
os.write(1, b"tail")
"""


def _expected() -> bytes:
    block = bytes(range(256)) * 16
    return b"".join(block[i % 7 :] + block[: i % 7] for i in range(WRITES)) + b"tail"


def test_the_pump_hands_on_every_byte_in_1_mib_chunks_in_few_reads() -> None:
    stream = DumpStream(
        PgTarget.from_url("postgresql://nobody@127.0.0.1:1/none"),
        pg_bin_dir=None,
        compression_level=1,
    )
    process = StreamingProcess([sys.executable, "-c", WRITER], dict(os.environ))
    reads: list[int] = []
    readinto = process.readinto

    def counting(buffer: memoryview) -> int:
        reads.append(readinto(buffer))
        return reads[-1]

    process.readinto = counting  # type: ignore[method-assign]
    stream._process = process
    pump = threading.Thread(target=stream._run_pump)
    pump.start()
    try:
        chunks = [bytes(chunk) for chunk in stream.chunks()]
        pump.join(timeout=60)
        assert process.wait(timeout=60) == 0
    finally:
        process.close()
    expected = _expected()
    assert b"".join(chunks) == expected
    assert all(len(c) == 1 << 20 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 1 << 20
    assert stream.size == len(expected)
    assert stream._hasher.hexdigest() == hashlib.sha256(expected).hexdigest()
    # A reader that read whenever data was there would read about once per write.
    assert len(reads) < WRITES / 4, len(reads)
