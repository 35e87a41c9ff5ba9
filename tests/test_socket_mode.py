"""The service in Socket Mode, end to end: a real ``blnk-backup-bot`` process (no signing
secret, an app-level token) calls ``apps.connections.open`` on the fake Web API, connects over a
real WebSocket to the fake Socket Mode server (tests/support/fake_socket_mode.py) with
slack_sdk's built-in client, and answers slash command envelopes: each is acknowledged over the
socket within Slack's 3 s, and the work follows through the Web API and response URLs.
Readiness follows the socket: 503 while it is down, 200 again once slack_sdk has reconnected.
SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from core.audit import AuditLog
from core.config import Settings
from tests.support.bot_process import BOT, Replica
from tests.support.fake_slack import FAKE_APP_TOKEN, FAKE_TOKEN, FakeSlack
from tests.support.fake_socket_mode import FakeSocketMode, frame
from tests.support.helpers import wait_until
from tests.support.s3server import free_port
from tests.support.settings import settings_env
from tests.support.slack_requests import (
    ALERTS,
    CHANNEL,
    OPERATOR,
    check_everything_sent,
    visible,
    wait_message,
)
from tests.support.stores import SECRET_KEY, bucket_keys

SLACK_ACK_LIMIT = 3.0  # Slack shows the person an error when an envelope is not acked in 3 s
# slack_sdk's built-in client checks its session every ping_interval (5 s here) and reconnects
# a closed one at that check.
RECONNECT_WITHIN = 40.0


@dataclass
class SocketBot:
    proc: Replica
    fake: FakeSlack
    socket_mode: FakeSocketMode
    settings: Settings

    def ready_status(self) -> int | None:
        """What /healthz?check=ready answers (None: nothing answers)."""
        try:
            url = self.proc.url("/healthz?check=ready")
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback)
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def wait_ready(self, status: int, timeout: float) -> None:
        wait_until(
            lambda: self.ready_status() == status or self.proc.proc.poll() is not None,
            timeout,
            f"readiness {status}",
        )
        assert self.ready_status() == status, self.proc.output()

    def command(self, command: str, text: str, name: str) -> str:
        """Send a slash command envelope (its response_url named ``name``); return its id."""
        return self.socket_mode.slash_command(
            command,
            text,
            user_id=OPERATOR,
            channel_id=CHANNEL,
            response_url=self.fake.response_url(name),
        )


@pytest.fixture
def socket_bot(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[SocketBot]:
    """A ``blnk-backup-bot`` in Socket Mode, connected; killed afterwards if still running,
    then everything it sent to Slack is validated and searched for secrets."""
    with FakeSocketMode() as socket_mode, FakeSlack(FAKE_TOKEN) as fake:
        fake.socket_mode_url = socket_mode.new_url
        settings = make_settings()
        env = settings_env(settings) | {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port := free_port()),
            "SLACK_BOT_TOKEN": FAKE_TOKEN,
            "SLACK_APP_TOKEN": FAKE_APP_TOKEN,
            "SLACK_API_BASE_URL": fake.base_url,
            "SLACK_OPERATORS": OPERATOR,
            "SLACK_ALERT_CHANNEL": ALERTS,
            "BACKUP_SCHEDULE": "",
            "RETENTION_SCHEDULE": "",
            "MONITOR_SCHEDULE": "",
            "RESTORE_TEST_SCHEDULE": "",
        }
        log = tmp_path / "bot.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [BOT], env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        bot = SocketBot(Replica(proc, port, log), fake, socket_mode, settings)
        try:
            socket_mode.wait_connected(timeout=60)
            bot.wait_ready(200, timeout=30)
            yield bot
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        check_everything_sent(fake, [SECRET_KEY, FAKE_APP_TOKEN])


def test_it_connects_with_the_app_token_and_acks_a_command_over_the_socket(
    socket_bot: SocketBot,
) -> None:
    fake, socket_mode = socket_bot.fake, socket_bot.socket_mode
    # The WebSocket URL came from apps.connections.open, called with the app-level token;
    # everything else with the bot token.
    [opened] = fake.calls("apps.connections.open")
    assert opened.token == FAKE_APP_TOKEN and opened.ok
    assert {c.token for c in fake.calls() if c.method != "apps.connections.open"} == {FAKE_TOKEN}
    [(request_line, status)] = socket_mode.handshakes()
    assert request_line.startswith("GET /link/?ticket=") and status == 101
    [conn] = socket_mode.connections()
    socket_mode.wait_for(lambda: bool(conn.pings), timeout=5)  # slack_sdk pings on connect

    envelope = socket_bot.command("/blnk-backups", "help", "help")
    ack = socket_mode.wait_ack(envelope, timeout=SLACK_ACK_LIMIT)
    assert ack.seconds < SLACK_ACK_LIMIT
    assert ack.payload is None  # a bare ack: the help follows through the response_url
    fake.wait_for(lambda: bool(fake.responses("help")), timeout=20)
    [reply] = fake.responses("help")
    assert reply["response_type"] == "ephemeral"
    assert "Blnk backup commands" in visible(reply)

    # A bad argument is answered in the acknowledgement itself, over the socket.
    envelope = socket_bot.command("/blnk-backups", "frobnicate", "bad")
    ack = socket_mode.wait_ack(envelope, timeout=SLACK_ACK_LIMIT)
    assert ack.seconds < SLACK_ACK_LIMIT
    assert ack.payload is not None and ack.payload["text"].startswith("Not understood")
    assert fake.responses("bad") == []
    assert len(socket_mode.acks()) == 2  # each envelope acked once


def test_a_backup_command_over_the_socket_runs_a_real_backup(
    socket_bot: SocketBot, s3: Any, bucket: str
) -> None:
    envelope = socket_bot.command("/blnk-backup", "before socket migration", "backup")
    ack = socket_bot.socket_mode.wait_ack(envelope, timeout=SLACK_ACK_LIMIT)
    assert ack.seconds < SLACK_ACK_LIMIT and ack.payload is None
    done = wait_message(socket_bot.fake, "Backup complete", timeout=120)
    assert "before socket migration" in visible(done)
    audit = AuditLog(socket_bot.settings.audit_database_url)
    try:
        [run] = [e for e in audit.events(action="backup", limit=50) if e.outcome == "succeeded"]
    finally:
        audit.close()
    assert (run.actor, run.trigger, run.reason) == (OPERATOR, "slack", "before socket migration")
    assert run.key is not None and run.key in visible(done)
    assert run.key in bucket_keys(s3, bucket)


def test_readiness_follows_the_socket_and_slack_sdk_reconnects_by_itself(
    socket_bot: SocketBot,
) -> None:
    socket_mode, fake = socket_bot.socket_mode, socket_bot.fake
    socket_mode.refuse = True  # new handshakes fail until we allow them again
    socket_mode.drop(close_frame=True)
    socket_bot.wait_ready(503, timeout=5)
    # slack_sdk tries again by itself (a new URL from apps.connections.open each time) and is
    # refused; readiness stays 503 meanwhile.
    wait_until(
        lambda: any(status == 503 for _line, status in socket_mode.handshakes()),
        RECONNECT_WITHIN,
        "a reconnection attempt",
    )
    assert socket_bot.ready_status() == 503
    socket_mode.refuse = False
    began = time.monotonic()
    socket_bot.wait_ready(200, timeout=RECONNECT_WITHIN)
    conn = socket_mode.wait_connected(count=2, timeout=5)
    assert time.monotonic() - began < RECONNECT_WITHIN
    assert len(fake.calls("apps.connections.open")) >= 3  # first, refused, accepted
    # The new connection works.
    envelope = socket_bot.command("/blnk-backups", "help", "after")
    ack = socket_mode.wait_ack(envelope, timeout=SLACK_ACK_LIMIT)
    assert ack.connection == conn.number and ack.seconds < SLACK_ACK_LIMIT
    fake.wait_for(lambda: bool(fake.responses("after")), timeout=20)
    assert socket_bot.proc.proc.poll() is None
    assert "Traceback" not in socket_bot.proc.output()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _works_on_the_new_connection(socket_bot: SocketBot, name: str) -> None:
    conn = socket_bot.socket_mode.connections()[-1]
    envelope = socket_bot.command("/blnk-backups", "help", name)
    ack = socket_bot.socket_mode.wait_ack(envelope, timeout=SLACK_ACK_LIMIT)
    assert ack.connection == conn.number and ack.seconds < SLACK_ACK_LIMIT
    socket_bot.fake.wait_for(lambda: bool(socket_bot.fake.responses(name)), timeout=20)
    assert socket_bot.ready_status() == 200
    assert "Traceback" not in socket_bot.proc.output()


def test_a_connection_closed_without_a_close_frame_is_replaced_at_once_without_spinning(
    socket_bot: SocketBot,
) -> None:
    # slack_sdk's built-in client alone read end-of-file in a busy loop (a core at 100 %) and
    # called the connection connected for about a minute (measured: 59 s, 59 CPU-seconds).
    socket_mode, pid = socket_bot.socket_mode, socket_bot.proc.pid
    [first] = socket_mode.connections()
    cpu_before, began = cpu_seconds(pid), time.monotonic()
    socket_mode.drop(close_frame=False)
    second = socket_mode.wait_connected(count=2, timeout=5)
    replaced_in = time.monotonic() - began
    time.sleep(2)  # a spinning reader would show here
    cpu_used = cpu_seconds(pid) - cpu_before
    assert not first.open and second.open and replaced_in < 5
    assert cpu_used < 1.5, f"{cpu_used:.1f} CPU-seconds in {time.monotonic() - began:.1f} s"
    assert "closed by Slack without a close frame" in socket_bot.proc.output()
    _works_on_the_new_connection(socket_bot, "after-fin")


def test_a_connection_gone_silent_is_replaced_once_its_pings_go_unanswered(
    socket_bot: SocketBot,
) -> None:
    socket_mode = socket_bot.socket_mode
    [first] = socket_mode.connections()
    socket_mode.wait_for(lambda: len(first.pings) >= 1, timeout=10)  # pings every 5 s
    began = time.monotonic()
    socket_mode.go_silent()
    second = socket_mode.wait_connected(count=2, timeout=25)
    replaced_in = time.monotonic() - began
    # Two and a half ping intervals unanswered (12.5 s), seen within a quarter second.
    assert 10 < replaced_in < 20, replaced_in
    socket_mode.wait_for(lambda: not first.open, timeout=5)  # the client let the old one go
    assert second.open and "had no answer to its pings" in socket_bot.proc.output()
    _works_on_the_new_connection(socket_bot, "after-silence")


def test_sigterm_closes_the_socket_and_exits_0(socket_bot: SocketBot) -> None:
    [conn] = socket_bot.socket_mode.connections()
    socket_bot.proc.proc.send_signal(signal.SIGTERM)
    assert socket_bot.proc.proc.wait(30) == 0, socket_bot.proc.output()
    assert "Traceback" not in socket_bot.proc.output()
    socket_bot.socket_mode.wait_for(lambda: not conn.open, timeout=5)
    assert socket_bot.ready_status() is None


# --- the fakes themselves ---------------------------------------------------------------------
def test_the_fakes_issue_one_time_urls_to_the_app_token_and_speak_rfc_6455() -> None:
    with FakeSocketMode() as socket_mode, FakeSlack(socket_mode_url=socket_mode.new_url) as fake:
        client = WebClient(base_url=fake.base_url)
        with pytest.raises(SlackApiError) as refused:
            client.apps_connections_open(app_token=FAKE_TOKEN)  # a bot token
        assert refused.value.response["error"] == "not_allowed_token_type"
        with pytest.raises(SlackApiError) as refused:
            WebClient(token=FAKE_APP_TOKEN, base_url=fake.base_url).auth_test()
        assert refused.value.response["error"] == "not_allowed_token_type"
        url = client.apps_connections_open(app_token=FAKE_APP_TOKEN)["url"]
        target = urllib.parse.urlsplit(url)
        path = f"{target.path}?{target.query}"
        key = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example: its accept value is known

        def handshake() -> tuple[socket.socket, bytes]:
            sock = socket.create_connection((target.hostname, target.port), timeout=5)
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(4096)
            return sock, answer

        sock, answer = handshake()
        with sock:
            assert answer.startswith(b"HTTP/1.1 101 ")
            assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
            hello = answer.partition(b"\r\n\r\n")[2]
            while len(hello) < 4 or len(hello) < 4 + struct.unpack("!H", hello[2:4])[0]:
                hello += sock.recv(4096)
            assert hello[:2] == bytes([0x81, 126])  # a final text frame, unmasked, 16-bit size
            size = struct.unpack("!H", hello[2:4])[0]
            assert json.loads(hello[4 : 4 + size])["type"] == "hello"
            sock.sendall(frame(0x1, b'{"envelope_id": "x"}'))  # unmasked: a protocol error
            closing = sock.recv(4096)
            assert closing[0] == 0x88 and closing[2:4] == struct.pack("!H", 1002)
        second, answer = handshake()  # the same ticket again
        second.close()
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert [status for _line, status in socket_mode.handshakes()] == [101, 401]
        assert socket_mode.acks() == []
