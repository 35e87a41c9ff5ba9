"""The one module that runs subprocesses (pg_dump, pg_restore, their --version).

Argument lists only, never a shell. Passwords travel in the child's environment
(``PGPASSWORD``) with ``--no-password`` on the command line, so ``ps`` never shows them. The
last lines of stderr are kept, with known secrets masked, for the error a person reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from core.errors import PreflightError
from core.redact import mask

_STDERR_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1
_MAX_STDERR_LINES = 10_000
_F_SETPIPE_SZ = 1031  # Linux: grow the pipe so pg_dump is not woken every 64 KiB.
_F_GETPIPE_SZ = 1032
_PIPE_SIZE = 1 << 20
_DEFAULT_PIPE_SIZE = 64 << 10  # Linux's, where the size cannot be read


# What a child process that could not run or finish in time raises (a timeout, ...).
SubprocessError = subprocess.SubprocessError


def _die_with_parent() -> None:
    """In the child, before exec: be sent SIGTERM when the parent dies (Linux), so a long-lived
    child (pg_receivewal holding a replication slot) never outlives a killed bot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the caller's clean-up has to do
        pass


class StreamingProcess:
    """A child whose stdout is read as a byte stream while its stderr tail is collected."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        secrets: Iterable[str | None] = (),
        *,
        die_with_parent: bool = False,
    ) -> None:
        self.name = Path(argv[0]).name
        self._secrets = [s for s in secrets if s]
        self._tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self._proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._stdout_fd = self._proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._stdout_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self.pipe_size = _DEFAULT_PIPE_SIZE  # what stdout's pipe holds before the child waits
        with contextlib.suppress(OSError):
            self.pipe_size = fcntl.fcntl(self._stdout_fd, _F_GETPIPE_SZ)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"{self.name}-stderr", daemon=True
        )
        self._stderr_thread.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(mask(line, self._secrets))

    def read(self, size: int) -> bytes:
        """Return up to size bytes of stdout; b"" at end of stream."""
        return os.read(self._stdout_fd, size)

    def readinto(self, buffer: memoryview) -> int:
        """Read up to len(buffer) bytes of stdout into buffer; return how many (0 at end)."""
        return os.readv(self._stdout_fd, [buffer])

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and its stderr to drain; return its exit status."""
        returncode = self._proc.wait(timeout)
        self._stderr_thread.join(timeout=5)
        return returncode

    def poll(self) -> int | None:
        """The child's exit status, or None while it runs."""
        return self._proc.poll()

    def interrupt(self, timeout: float = 10) -> int | None:
        """Ask the child to finish (SIGINT: pg_receivewal flushes and exits) and wait up to
        ``timeout`` seconds; kill it if it has not. Return its exit status."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._proc.poll()

    def kill(self) -> None:
        """Kill the child if it still runs (idempotent)."""
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)

    def stderr_tail(self, lines: int = 8) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def close(self) -> None:
        self.kill()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> StreamingProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: str | Path | None = None,
    as_user: tuple[int, int] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion and return its result (never raises on exit status).
    ``as_user`` (uid, gid), for a root process: run it as that user and group alone."""
    uid, gid = as_user if as_user is not None else (None, None)
    return subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        user=uid,
        group=gid,
        extra_groups=None if as_user is None else [],
    )


@dataclass(frozen=True)
class ToolRun:
    """How a tool run ended: exit status, stdout, and stderr (masked) whole and as a tail."""

    status: int
    stdout: str
    stderr_lines: list[str]

    @property
    def tail(self) -> str:
        return "\n".join(self.stderr_lines[-_STDERR_TAIL_LINES:])


def run_tool(
    argv: Sequence[str], env: dict[str, str], secrets: Iterable[str | None] = ()
) -> ToolRun:
    """Run a tool such as pg_restore to completion (it is killed if this process is
    interrupted) and return how it ended, with known secrets masked."""
    done = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False)
    lines = [mask(ln, secrets) for ln in done.stderr.splitlines() if ln.strip()]
    return ToolRun(done.returncode, done.stdout, lines[-_MAX_STDERR_LINES:])


# "pg_dump (PostgreSQL) 18.6", "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)",
# "pg_dump (PostgreSQL) 19devel": the version is the token after "(PostgreSQL)".
_VERSION = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*(?:[a-z]+\d*)?)")


_versions: dict[tuple[str, float], tuple[int, str]] = {}


def tool_version(binary: str) -> tuple[int, str]:
    """Given a pg_dump/pg_restore path, return (major, version text such as "15.20"). The
    answer is remembered per path until the file changes (an upgrade)."""
    try:
        stamp = (binary, os.stat(binary).st_mtime)
    except OSError as exc:
        raise PreflightError(f"cannot run {binary}: {exc.strerror}") from exc
    if stamp in _versions:
        return _versions[stamp]
    try:
        out = run([binary, "--version"], timeout=10).stdout.strip()
    except OSError as exc:
        raise PreflightError(f"cannot run {binary}: {exc.strerror}") from exc
    match = _VERSION.search(out)
    if not match:
        raise PreflightError(f"cannot read the version of {binary} from {out!r}")
    _versions[stamp] = (int(match[2]), match[1])
    return _versions[stamp]


def find_tool(name: str, bin_dir: str | None) -> str:
    """Return the path of pg_dump/pg_restore to use.

    With ``PG_BIN_DIR`` set, use that directory. Otherwise take the newest of the one on PATH
    and Debian's versioned ``/usr/lib/postgresql/N/bin`` (a newer pg_dump reads older servers,
    never the other way round); of equal versions, the real binary rather than Debian's
    ``pg_wrapper`` script. Raise PreflightError if none exists.
    """
    if bin_dir:
        path = Path(bin_dir) / name
        if not path.is_file():
            raise PreflightError(f"{name} not found in PG_BIN_DIR ({bin_dir})")
        return str(path)
    candidates = [p for p in [shutil.which(name)] if p]
    candidates += [str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")]
    if not candidates:
        raise PreflightError(f"{name} not found on PATH; install the PostgreSQL client tools")
    return max(
        candidates,
        key=lambda p: (tool_version(p)[0], Path(p).resolve().name != "pg_wrapper"),
    )
