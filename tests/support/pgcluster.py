"""A private PostgreSQL cluster with password (scram) authentication, for the tests that need
a server that actually checks passwords (the shared one trusts everybody on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bot.embedded import run_base, server_user
from core.processes import run
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
    """As root, the cluster runs as the postgres user (bot.embedded.server_user) in a directory
    it can enter even when TMPDIR is private to root (bot.embedded.run_base)."""

    user = "ledger"
    password = "correct-horse-battery-staple"

    def __init__(self) -> None:
        self.port = free_port()
        self.owner = server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="blnk-pg-", dir=run_base(self.owner)))
        if self.owner is not None:
            os.chown(self.dir, self.owner.uid, self.owner.gid)
        self.bin = _bin_dir()

    def _run(self, argv: list[str], *, check: bool = True) -> None:
        # initdb and postgres refuse to run as root: as root they run as self.owner.
        done = run(argv, timeout=120, cwd=self.dir, as_user=self.owner.ids if self.owner else None)
        if check and done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stderr}")

    def start(self, conf: dict[str, str] | None = None, hba: list[str] | None = None) -> None:
        """initdb and start; ``conf`` goes into postgresql.conf, ``hba`` lines on top of
        pg_hba.conf, before the first start."""
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.owner is not None:
            os.chown(pwfile, self.owner.uid, self.owner.gid)
        data = self.dir / "data"
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
            ]
        )
        if conf:
            with (data / "postgresql.conf").open("a") as out:
                out.writelines(f"{name} = '{value}'\n" for name, value in conf.items())
        if hba:
            path = data / "pg_hba.conf"
            path.write_text("\n".join(hba) + "\n" + path.read_text())
        self._run(
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
        )

    def url(self, password: str | None = None, dbname: str = "postgres", user: str = "") -> str:
        return (
            f"postgresql://{user or self.user}:{password or self.password}@127.0.0.1:"
            f"{self.port}/{dbname}"
        )

    def stop(self) -> None:
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)
