"""The installed package is complete. The wheel is built from exactly the files the Dockerfile
copies, installed (not editable, as the image's ``pip install .`` does) into a fresh virtual
environment outside the checkout, and run from there: it imports its own copy, creates a Blnk
database from the SQL it ships (``generate-db``) and runs the console, whose demo database needs
that SQL too. The dependencies come from the test environment (no download), after the
package's own files on the path, and the checkout's editable install stays out."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import pytest

from core.database import PgTarget, databases_like, drop_database

ROOT = Path(__file__).resolve().parents[1]
SQL = sorted(p.name for p in (ROOT / "core" / "sql").glob("*.sql"))
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_image_installs_the_package_as_the_wheel_test_does() -> None:
    [install] = [ln for ln in DOCKERFILE.splitlines() if "pip install" in ln]
    assert re.fullmatch(r"RUN pip install --no-cache-dir \.", install.strip())  # not editable
    assert {"pyproject.toml", "core", "bot"} <= set(_copied_by_the_dockerfile())


def _copied_by_the_dockerfile() -> list[str]:
    """The sources of the Dockerfile's COPY instructions (what the image builds from)."""
    names: list[str] = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            *sources, _destination = line.split()[1:]
            names += [s for s in sources if not s.startswith("--")]
    return names


def _run(
    argv: list[str], cwd: Path, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run argv from cwd (outside the checkout) with nothing of the test's environment but
    PATH, and env."""
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), **env},
        check=False,
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in _copied_by_the_dockerfile():
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    # Offline: the build backend is the test environment's, nothing is downloaded.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = _run(
        [
            *pip,
            "wheel",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work),
            str(source),
        ],
        work,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = work.glob("blnk_backup_bot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in SQL if f"core/sql/{n}" not in names] == []
    env = work / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(env)], work)
    assert made.returncode == 0, made.stderr
    python = env / "bin" / "python"
    installed = _run(
        [*pip, "--python", str(python), "install", "--no-index", "--no-deps", str(wheel)], work
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The dependencies: the test environment's site-packages, after the venv's own. A path in a
    # .pth file is only appended to sys.path; the .pth files there (the checkout's editable
    # install among them) are not run.
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], work
    )
    Path(purelib.stdout.strip(), "dev-dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    return env


def test_the_installed_package_imports_its_own_copy_with_its_sql(venv: Path) -> None:
    done = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import json, core, bot; from importlib import resources; print(json.dumps("
            "[core.__file__, bot.__file__, "
            "sorted(p.name for p in resources.files('core').joinpath('sql').iterdir())]))",
        ],
        venv.parent,
    )
    assert done.returncode == 0, done.stderr
    core_file, bot_file, sql = json.loads(done.stdout)
    assert Path(core_file).is_relative_to(venv) and Path(bot_file).is_relative_to(venv)
    assert [n for n in sql if n.endswith(".sql")] == SQL


def test_generate_db_from_the_installed_package(venv: Path, pg_server: PgTarget) -> None:
    name = f"blnk_wheel_{uuid.uuid4().hex[:8]}"
    try:
        done = _run(
            [
                str(venv / "bin" / "blnk-backup"),
                "generate-db",
                name,
                "--transactions",
                "200",
                "--server-url",
                pg_server.secret_conninfo(),
            ],
            venv.parent,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with pg_server.with_dbname(name).connect() as conn:
            row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
        assert row is not None and row[0] >= 200
    finally:
        drop_database(pg_server, name)


def test_the_installed_console_makes_its_demo_database_and_answers(
    venv: Path, pg_server: PgTarget
) -> None:
    assert pg_server.params.get("host") == "127.0.0.1"  # where the console looks (PGPORT)
    done = _run(
        [str(venv / "bin" / "blnk-backup-bot")],
        venv.parent,
        stdin="/blnk-backups help\n/quit\n",
        PGPORT=str(pg_server.params.get("port", "5432")),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    made = re.search(r"created the demo Blnk database (blnk_console_\w+) \(5000", done.stdout)
    assert made is not None, output
    assert re.search(r"/blnk-backups help\W* — this message", done.stdout), output
    assert made[1] not in databases_like(pg_server, "blnk_console_")  # dropped at exit
