"""The README's run command: the demo works end to end on a fresh machine's services."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.database import PgTarget, databases_like


def test_the_demo_backs_up_restore_tests_and_cleans_up(tmp_path: Path, pg_server: PgTarget) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "blnk-backup"), "demo", "--transactions", "500"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for step in (
        "backup uploaded and verified",
        "all checks passed",
        "last backup proven restorable",
        "✓ healthy",
    ):
        assert step in done.stdout
    assert databases_like(pg_server, "blnk_backup_demo") == []
    assert databases_like(pg_server, "blnk_restore_test_") == []
