"""A fake Slack Socket Mode server on loopback, standard library only, for slack_sdk's built-in
Socket Mode client (``slack_sdk.socket_mode.builtin``, what Bolt's ``SocketModeHandler`` uses).

    with FakeSocketMode() as socket_mode, FakeSlack() as slack:
        slack.socket_mode_url = socket_mode.new_url  # apps.connections.open answers with it
        ...  # the app connects
        envelope = socket_mode.slash_command("/blnk-backups", "help", user_id="U1", ...)
        ack = socket_mode.wait_ack(envelope)
        assert ack.seconds < 3

What it does, as Slack does it (https://docs.slack.dev/apis/events-api/using-socket-mode/):

- ``new_url()`` issues a one-time ticket, ``ws://127.0.0.1:PORT/link/?ticket=…&app_id=…`` (Slack:
  ``wss://wss-….slack.com/link/?ticket=…&app_id=…``); a handshake with an unknown or used ticket
  is answered 401 and closed.
- The RFC 6455 opening handshake: ``GET`` with ``Upgrade: websocket``, ``Connection: Upgrade``,
  ``Sec-WebSocket-Version: 13`` and a ``Sec-WebSocket-Key``, answered ``101 Switching Protocols``
  with ``Sec-WebSocket-Accept`` = base64(SHA-1(key + GUID)). Anything else gets 400.
- On connect the server sends ``{"type": "hello", ...}``.
- Frames: the server sends unmasked single-frame messages; client frames must be masked (an
  unmasked one is a protocol error: close 1002). Text frames are JSON acknowledgements
  (``{"envelope_id": ..., "payload": {...}?}``), recorded with their arrival time; pings are
  answered with a pong carrying the same payload (slack_sdk pings every ``ping_interval`` and
  disconnects a session that has not had a pong for 4 intervals); pongs are recorded; a close
  frame is answered with a close frame and the connection ends.
- ``envelope(type, payload)`` / ``slash_command(...)`` push an envelope to the newest connection;
  ``disconnect_message()`` sends Slack's ``{"type": "disconnect"}`` warning; ``drop()`` ends every
  connection (with a close frame, or by just closing the TCP connection); ``refuse = True`` makes
  new handshakes fail (503) until it is set back to False.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE = 16 * 1024
MAX_MESSAGE = 1 << 20


def websocket_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455, 4.2.2)."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame as a server sends it."""
    head = bytes([0x80 | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([size])
    elif size < 1 << 16:
        head += bytes([126]) + struct.pack("!H", size)
    else:
        head += bytes([127]) + struct.pack("!Q", size)
    return head + payload


class ProtocolError(Exception):
    """The client broke RFC 6455; the connection is closed with 1002."""


@dataclass(frozen=True)
class Envelope:
    """An envelope the server sent, and when (time.monotonic())."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    connection: int
    sent_at: float


@dataclass(frozen=True)
class Ack:
    """An acknowledgement the client sent back, and when it arrived (time.monotonic())."""

    envelope_id: str
    payload: dict[str, Any] | None  # the response payload, for envelopes that accept one
    connection: int
    at: float
    envelope: Envelope | None  # None: an ack for an envelope this server never sent

    @property
    def seconds(self) -> float:
        """From sending the envelope to receiving its ack."""
        assert self.envelope is not None
        return self.at - self.envelope.sent_at


@dataclass
class Connection:
    """One accepted WebSocket connection."""

    number: int
    sock: socket.socket
    path: str
    headers: dict[str, str]
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None  # from the client's close frame, if it sent one
    pings: list[bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    silent: bool = False  # the link is gone without a trace: nothing is answered or sent
    _send_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def send(self, opcode: int, payload: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(frame(opcode, payload))


class FakeSocketMode:
    """The fake Socket Mode server. Start it with ``with FakeSocketMode() as server:``."""

    def __init__(self, app_id: str = "A0FAKEAPP") -> None:
        self.app_id = app_id
        self.refuse = False  # answer new handshakes 503 while True
        self._lock = threading.Lock()
        self._tickets: set[str] = set()
        self._connections: list[Connection] = []
        self._envelopes: dict[str, Envelope] = {}
        self._acks: list[Ack] = []
        self._handshakes: list[tuple[str, int]] = []  # (request line, status answered)
        self._numbers = itertools.count(1)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeSocketMode:
        listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        listener.settimeout(0.05)
        self._listener = listener
        self._spawn(self._accept_loop, "fake-socket-mode")
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.drop(close_frame=False)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener is not None, "start the fake first"
        return int(self._listener.getsockname()[1])

    def new_url(self) -> str:
        """A WebSocket URL with a fresh one-time ticket, as apps.connections.open issues."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"

    # --- queries --------------------------------------------------------------------------------
    def connections(self, *, open_only: bool = False) -> list[Connection]:
        with self._lock:
            return [c for c in self._connections if c.open or not open_only]

    def handshakes(self) -> list[tuple[str, int]]:
        """Every opening handshake: its request line and the status answered."""
        with self._lock:
            return list(self._handshakes)

    def acks(self, envelope_id: str | None = None) -> list[Ack]:
        with self._lock:
            return [a for a in self._acks if envelope_id in (None, a.envelope_id)]

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake Socket Mode server did not see it in {timeout} s")
            time.sleep(interval)

    def wait_connected(self, count: int = 1, timeout: float = 30.0) -> Connection:
        """Wait until ``count`` connections have been accepted in all and the newest is open;
        return it."""

        def ready() -> bool:
            every = self.connections()
            return len(every) >= count and every[-1].open

        self.wait_for(ready, timeout)
        return self.connections()[-1]

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> Ack:
        self.wait_for(lambda: bool(self.acks(envelope_id)), timeout)
        return self.acks(envelope_id)[0]

    # --- what Slack sends -----------------------------------------------------------------------
    def envelope(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        envelope_id: str | None = None,
    ) -> str:
        """Send an envelope on the newest open connection; return its envelope_id."""
        target = self._newest()
        envelope_id = envelope_id or str(uuid.uuid4())
        message = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": type,
            "accepts_response_payload": accepts_response_payload,
        }
        sent = Envelope(envelope_id, type, payload, target.number, time.monotonic())
        with self._lock:
            self._envelopes[envelope_id] = sent
        target.send(OP_TEXT, json.dumps(message).encode())
        return envelope_id

    def slash_command(
        self,
        command: str,
        text: str = "",
        *,
        user_id: str,
        channel_id: str,
        response_url: str,
        team_id: str = "T0000FAKE",
    ) -> str:
        """A ``slash_commands`` envelope, its payload the fields Slack posts in HTTP mode (as
        strings); return its envelope_id."""
        payload = {
            "token": "deprecated-verification-token",
            "team_id": team_id,
            "team_domain": "fake",
            "channel_id": channel_id,
            "channel_name": "ops",
            "user_id": user_id,
            "user_name": f"name-of-{user_id}",
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
        }
        return self.envelope("slash_commands", payload, accepts_response_payload=True)

    def disconnect_message(self, reason: str = "refresh_requested") -> None:
        """Slack's warning that it is about to close this connection (the client reconnects)."""
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-applink"}}
        self._newest().send(OP_TEXT, json.dumps(message).encode())

    def drop(self, *, close_frame: bool = True, code: int = 1001) -> None:
        """End every open connection: with a close frame (``code``, 1001 going away), or by
        just closing the TCP connection."""
        for conn in self.connections(open_only=True):
            if close_frame:
                with contextlib.suppress(OSError):
                    conn.send(OP_CLOSE, struct.pack("!H", code) + b"server going away")
            self._close(conn)

    def go_silent(self) -> None:
        """Act like a link that died without a close or a reset (a vanished host or NAT
        entry): the TCP connections stay open, but nothing is answered or sent on them."""
        for conn in self.connections(open_only=True):
            conn.silent = True

    def _newest(self) -> Connection:
        open_now = self.connections(open_only=True)
        assert open_now, "no client is connected"
        return open_now[-1]

    # --- the server -----------------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            self._spawn(self._serve, "fake-socket-mode-conn", sock)

    def _serve(self, sock: socket.socket) -> None:
        try:
            conn = self._handshake(sock)
        except (OSError, ValueError):
            sock.close()
            return
        if conn is None:
            sock.close()
            return
        hello = {
            "type": "hello",
            "num_connections": len(self.connections(open_only=True)),
            "debug_info": {
                "host": "fake-applink",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }
        try:
            conn.send(OP_TEXT, json.dumps(hello).encode())
            self._read_frames(conn)
        except ProtocolError:
            with contextlib.suppress(OSError):
                conn.send(OP_CLOSE, struct.pack("!H", 1002))
        except OSError:
            pass  # closed under us (drop, stop) or reset by the client
        finally:
            self._close(conn)

    def _handshake(self, sock: socket.socket) -> Connection | None:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(4096)
            if not chunk or len(raw) > MAX_HANDSHAKE:
                return None
            raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        request_line = lines[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return self._refuse(sock, request_line, 400)
            headers[name.strip().lower()] = value.strip()
        method, _, rest_line = request_line.partition(" ")
        target = rest_line.rpartition(" ")[0]
        url = urlsplit(target)
        ticket = (parse_qs(url.query).get("ticket") or [""])[0]
        key = headers.get("sec-websocket-key", "")
        if (
            method != "GET"
            or not rest_line.endswith("HTTP/1.1")
            or headers.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in headers.get("connection", "").lower()
            or headers.get("sec-websocket-version") != "13"
            or len(base64.b64decode(key, validate=True) if key else b"") != 16
            or rest  # no body, and nothing before the 101
        ):
            return self._refuse(sock, request_line, 400)
        if url.path not in ("/link", "/link/"):
            return self._refuse(sock, request_line, 404)
        if self.refuse:
            return self._refuse(sock, request_line, 503)
        with self._lock:
            if ticket not in self._tickets:
                known = False
            else:
                known = True
                self._tickets.discard(ticket)  # one connection per ticket
        if not known:
            return self._refuse(sock, request_line, 401)
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {websocket_accept(key)}\r\n"
                "\r\n"
            ).encode()
        )
        conn = Connection(next(self._numbers), sock, target, headers, time.monotonic())
        with self._lock:
            self._handshakes.append((request_line, 101))
            self._connections.append(conn)
        return conn

    def _refuse(self, sock: socket.socket, request_line: str, status: int) -> None:
        with self._lock:
            self._handshakes.append((request_line, status))
        reason = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
        body = b"refused"
        with contextlib.suppress(OSError):
            sock.sendall(
                f"HTTP/1.1 {status} {reason.get(status, 'Service Unavailable')}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        return None

    def _read_frames(self, conn: Connection) -> None:
        reader = _Reader(conn.sock)
        message, message_opcode = b"", None
        while True:
            fin, opcode, payload = reader.frame()
            if opcode >= OP_CLOSE:  # control frames: never fragmented, at most 125 bytes
                if not fin or len(payload) > 125:
                    raise ProtocolError("bad control frame")
                if opcode == OP_PING:
                    conn.pings.append(payload)
                    if not conn.silent:
                        conn.send(OP_PONG, payload)
                elif opcode == OP_PONG:
                    conn.pongs.append(payload)
                elif opcode == OP_CLOSE:
                    if len(payload) >= 2:
                        conn.close_code = struct.unpack("!H", payload[:2])[0]
                    with contextlib.suppress(OSError):
                        conn.send(OP_CLOSE, payload[:2])
                    return
                else:
                    raise ProtocolError(f"unknown opcode {opcode}")
                continue
            if opcode == OP_CONTINUATION:
                if message_opcode is None:
                    raise ProtocolError("continuation without a first frame")
            elif opcode in (OP_TEXT, OP_BINARY):
                if message_opcode is not None:
                    raise ProtocolError("a new message inside a fragmented one")
                message_opcode = opcode
            else:
                raise ProtocolError(f"unknown opcode {opcode}")
            message += payload
            if len(message) > MAX_MESSAGE:
                raise ProtocolError("message too big")
            if fin:
                if message_opcode == OP_TEXT:
                    self._on_text(conn, message.decode("utf-8"))
                message, message_opcode = b"", None

    def _on_text(self, conn: Connection, text: str) -> None:
        at = time.monotonic()
        try:
            body = json.loads(text)
        except ValueError:
            return
        if not isinstance(body, dict) or "envelope_id" not in body:
            return
        envelope_id = str(body["envelope_id"])
        with self._lock:
            sent = self._envelopes.get(envelope_id)
            payload = body.get("payload")
            self._acks.append(
                Ack(
                    envelope_id,
                    payload if isinstance(payload, dict) else None,
                    conn.number,
                    at,
                    sent,
                )
            )

    def _close(self, conn: Connection) -> None:
        with self._lock:
            if conn.closed_at is not None:
                return
            conn.closed_at = time.monotonic()
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.sock.close()


class _Reader:
    """Reads client frames (which must be masked) from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the client closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self.exactly(2)
        if b1 & 0x70:
            raise ProtocolError("reserved bits set without an extension")
        size = b2 & 0x7F
        if size == 126:
            size = struct.unpack("!H", self.exactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self.exactly(8))[0]
        if not b2 & 0x80:
            raise ProtocolError("an unmasked client frame")
        if size > MAX_MESSAGE:
            raise ProtocolError("frame too big")
        mask = self.exactly(4)
        data = self.exactly(size)
        payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))
        return bool(b1 & 0x80), b1 & 0x0F, payload
