"""A ``blnk-backup-bot`` process started by a test: its port, its log, and waiting for it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.helpers import wait_until

BOT = str(Path(sys.executable).parent / "blnk-backup-bot")
LEADS = "this replica leads"


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        """Ready, as this very process answers (not some other server on a reused port)."""
        if self.proc.poll() is not None:
            return False
        try:
            url = f"http://127.0.0.1:{self.port}/healthz?check=ready"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def leads(self) -> bool:
        return LEADS in self.output()

    def wait_serving(self, timeout: float = 60) -> None:
        wait_until(
            lambda: self.healthy() or self.proc.poll() is not None, timeout, f"{self.pid} serves"
        )
        assert self.healthy(), f"replica {self.pid} did not start:\n{self.output()}"
