"""A private PostgreSQL cluster with password (scram) authentication, for the tests that need
a server that actually checks passwords (the shared one trusts everybody on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.s3server import free_port


def _bin_dir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
    if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
        return Path(out.stdout.strip())
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        raise RuntimeError("initdb not found")
    return candidates[-1].parent


class PasswordCluster:
    user = "ledger"
    password = "correct-horse-battery-staple"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="blnk-pg-"))
        self.bin = _bin_dir()

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            shutil.chown(self.dir, "postgres", "postgres")
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def start(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        data = self.dir / "data"
        subprocess.run(
            self._as_owner(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    self.user,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                ]
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            self._as_owner(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(data),
                    "-w",
                    "-l",
                    str(self.dir / "log"),
                    "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def url(self, password: str | None = None) -> str:
        return (
            f"postgresql://{self.user}:{password or self.password}@127.0.0.1:{self.port}/postgres"
        )

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(
                [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"]
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)
