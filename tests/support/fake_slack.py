"""A fake Slack Web API on loopback, for slack_sdk's ``WebClient``.

    with FakeSlack(token="xoxb-test", user_groups={"S1": ["U1"]}) as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)  # ends with "/api/"
        client.chat_postMessage(channel="C1", text="hi", blocks=[...])
        assert slack.messages("C1")[0].text == "hi"

It speaks HTTP like Slack: every method answers 200 with ``{"ok": ...}``, a rate limit answers
429 with ``Retry-After``; the token is checked (``not_authed`` without one, ``invalid_auth`` for
another); form-encoded and JSON bodies are both accepted, as slack_sdk sends them (JSON for
chat.* and views.publish, form for the rest; ``blocks``/``view`` given as JSON strings are
decoded). Methods: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
``views.publish``, ``usergroups.users.list``, ``conversations.open``, and
``apps.connections.open`` once ``socket_mode_url`` is set (a callable giving a fresh WebSocket URL,
e.g. ``FakeSocketMode.new_url``; only the app-level token, in the Authorization header, may call
it, and only it: a bot token there, or the app token elsewhere, gets ``not_allowed_token_type``);
anything else is ``unknown_method``. It also serves response URLs (``response_url(name)``), which
Bolt's ``respond()`` posts to.

Every call is recorded (``calls``), and the latest state of every message is kept
(``messages``, ``message``) with its earlier versions, so a test can assert on what a person
would see. Block Kit is checked here on its own, independently of bot/render/slack_limits.py,
against Slack's published limits (50 blocks per message, 100 per view, section text 3,000,
fields 2,000 and 10, header 150, button text 75, ids 255, unique block ids): a message over
them gets ``invalid_blocks``, blocks over 13,000 characters of JSON ``msg_blocks_too_long``.
Stricter than Slack on one point: a message without a non-empty ``text`` gets ``no_text``
(Slack only warns when blocks come without a fallback text; we always send one).

Faults: ``rate_limit(method, times, retry_after)``, ``fail(method, error, times)``,
``delay(method, seconds, times)``, and ``hold(method)``: the next call waits until the test
releases it, to make something happen at an exact point of the bot's work (between two calls it
makes); ``method="*"`` matches every method.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ALL = "*"
FAKE_TOKEN = "xoxb-fake-token"
FAKE_APP_TOKEN = "xapp-1-test"  # app-level token (Socket Mode)
MESSAGE_METHODS = ("chat.postMessage", "chat.update", "chat.postEphemeral")
# Slack's published limits, restated here on purpose (not imported from the bot).
SLACK_MAX_BLOCKS = {"message": 50, "view": 100}
SLACK_MAX_SECTION_TEXT = 3000
SLACK_MAX_FIELD_TEXT = 2000
SLACK_MAX_FIELDS = 10
SLACK_MAX_HEADER_TEXT = 150
SLACK_MAX_BUTTON_TEXT = 75
SLACK_MAX_ID = 255
SLACK_MAX_BLOCKS_JSON = 13_000
SLACK_MAX_TEXT = 40_000
HOLD_LIMIT = 30.0  # seconds a held call waits at most for its release


@dataclass(frozen=True)
class Call:
    """One request as the fake saw it, and what it answered."""

    method: str
    params: dict[str, Any]
    token: str | None
    at: float  # time.monotonic() when it arrived
    status: int
    response: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))


@dataclass
class FakeMessage:
    """A message as a person would see it now; ``versions`` holds every state, oldest first."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    user: str | None = None  # who sees it, for an ephemeral message
    thread_ts: str | None = None
    versions: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    @property
    def updates(self) -> int:
        return len(self.versions) - 1

    def visible_text(self) -> str:
        """The fallback text and every text in the blocks, one per line."""
        return "\n".join([self.text, *block_texts(self.blocks)])


class Hold:
    """A call the fake keeps waiting: ``wait_arrived()`` until it comes in, then
    ``release()`` to answer it. Released anyway by ``clear_faults``, when the fake stops or
    after HOLD_LIMIT seconds, so a test that fails midway never hangs. (The bot's WebClient
    gives up on a call after 15 s: release it sooner.)"""

    def __init__(self, method: str) -> None:
        self.method = method
        self._arrived = threading.Event()
        self._released = threading.Event()

    def wait_arrived(self, timeout: float = 20.0) -> None:
        if not self._arrived.wait(timeout):
            raise AssertionError(f"no {self.method} call came within {timeout} s")

    def release(self) -> None:
        self._released.set()

    def arrive_and_wait(self) -> None:
        """What the fake does with the held call."""
        self._arrived.set()
        self._released.wait(HOLD_LIMIT)


@dataclass
class _Fault:
    method: str
    remaining: int | None  # None: forever
    status: int = 200
    error: str | None = None
    retry_after: int | None = None
    seconds: float = 0.0
    hold: Hold | None = None


def block_texts(value: Any) -> list[str]:
    """Every ``text`` string inside blocks (or a view), depth first."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                found.append(item)
            else:
                found += block_texts(item)
    elif isinstance(value, list):
        for item in value:
            found += block_texts(item)
    return found


def slack_would_reject(blocks: Any, surface: str = "message") -> str | None:
    """Return the error Slack gives for these blocks (``invalid_blocks``,
    ``msg_blocks_too_long``), or None if they are within the published limits."""
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > SLACK_MAX_BLOCKS[surface]:
        return "invalid_blocks"
    ids: list[str] = []
    for block in blocks:
        if not isinstance(block, dict) or "type" not in block:
            return "invalid_blocks"
        if block.get("block_id") is not None:
            ids.append(block["block_id"])
        if not _block_ok(block):
            return "invalid_blocks"
    if len(ids) != len(set(ids)) or any(len(str(i)) > SLACK_MAX_ID for i in ids):
        return "invalid_blocks"
    if surface == "message" and len(json.dumps(blocks, ensure_ascii=False)) > SLACK_MAX_BLOCKS_JSON:
        return "msg_blocks_too_long"
    return None


def _text_of(obj: Any) -> str | None:
    if isinstance(obj, dict) and obj.get("type") in ("plain_text", "mrkdwn"):
        text = obj.get("text")
        return text if isinstance(text, str) else None
    return None


def _block_ok(block: dict[str, Any]) -> bool:
    kind = block["type"]
    if kind == "section":
        text, fields = block.get("text"), block.get("fields") or []
        if text is None and not fields:
            return False
        if text is not None:
            body = _text_of(text)
            if not body or len(body) > SLACK_MAX_SECTION_TEXT:
                return False
        if len(fields) > SLACK_MAX_FIELDS:
            return False
        return all(0 < len(_text_of(f) or "") <= SLACK_MAX_FIELD_TEXT for f in fields)
    if kind == "header":
        body = _text_of(block.get("text"))
        return bool(body) and len(body or "") <= SLACK_MAX_HEADER_TEXT
    if kind in ("actions", "context"):
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            return False
        for element in elements:
            if not isinstance(element, dict):
                return False
            if len(str(element.get("action_id", ""))) > SLACK_MAX_ID:
                return False
            if element.get("type") == "button":
                label = _text_of(element.get("text"))
                if not label or len(label) > SLACK_MAX_BUTTON_TEXT:
                    return False
        return len(elements) <= (25 if kind == "actions" else 10)
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients at once (the default backlog of 5 stalls them)


class FakeSlack:
    """The fake Web API server. Start it with ``with FakeSlack() as slack:`` (or start/stop)."""

    def __init__(
        self,
        token: str = FAKE_TOKEN,
        *,
        user_groups: dict[str, list[str]] | None = None,
        bot_user_id: str = "UBOT0001",
        team_id: str = "T0000FAKE",
        app_token: str = FAKE_APP_TOKEN,
        socket_mode_url: Callable[[], str] | None = None,
    ) -> None:
        self.tokens = {token}
        self.app_tokens = {app_token}
        self.socket_mode_url = socket_mode_url  # what apps.connections.open answers
        self.user_groups = dict(user_groups or {})
        self.bot_user_id = bot_user_id
        self.team_id = team_id
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._messages: dict[tuple[str, str], FakeMessage] = {}
        self._ephemeral: list[FakeMessage] = []
        self._views: dict[str, list[dict[str, Any]]] = {}
        self._responses: dict[str, list[dict[str, Any]]] = {}
        self._faults: list[_Fault] = []
        self._holds: list[Hold] = []
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-slack",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.clear_faults()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the fake first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """For ``WebClient(base_url=...)``; the trailing slash matters."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "default") -> str:
        """A response_url for a slash command or interaction payload; what is posted to it is
        kept under ``name`` (``responses(name)``)."""
        return f"http://127.0.0.1:{self.port}/respond/{name}"

    # --- faults ---------------------------------------------------------------------------------
    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of method with 429 and ``Retry-After``."""
        self._add_fault(_Fault(method, times, status=429, retry_after=retry_after))

    def fail(self, method: str, error: str, times: int | None = 1) -> None:
        """Answer the next ``times`` calls of method (None: all) with ``ok: false, error``."""
        self._add_fault(_Fault(method, times, error=error))

    def delay(self, method: str, seconds: float, times: int | None = None) -> None:
        """Wait ``seconds`` before answering the next ``times`` calls (None: all)."""
        self._add_fault(_Fault(method, times, seconds=seconds))

    def hold(self, method: str) -> Hold:
        """Keep the next call of method waiting until ``release()`` (then answer it)."""
        held = Hold(method)
        with self._lock:
            self._holds.append(held)
        self._add_fault(_Fault(method, 1, hold=held))
        return held

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            for held in self._holds:
                held.release()

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_faults(self, method: str) -> tuple[float, list[Hold], _Fault | None]:
        """Count this call against the faults for its method: return how long to wait first
        (every matching delay), the holds to wait for, and the failure to answer with (the
        oldest matching one)."""
        wait, holds, failure = 0.0, [], None
        with self._lock:
            for fault in list(self._faults):
                if fault.method not in (method, ALL):
                    continue
                if fault.status != 200 or fault.error is not None:
                    if failure is not None:
                        continue  # one failure per call; this one waits its turn
                    failure = fault
                elif fault.hold is not None:
                    holds.append(fault.hold)
                else:
                    wait += fault.seconds
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
        return wait, holds, failure

    # --- queries --------------------------------------------------------------------------------
    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def messages(self, channel: str | None = None) -> list[FakeMessage]:
        """Channel messages (not ephemeral) in the order they were posted, as they look now."""
        with self._lock:
            return [m for m in self._messages.values() if channel in (None, m.channel)]

    def message(self, channel: str, ts: str) -> FakeMessage:
        with self._lock:
            return self._messages[(channel, ts)]

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[FakeMessage]:
        with self._lock:
            return [
                m
                for m in self._ephemeral
                if channel in (None, m.channel) and user in (None, m.user)
            ]

    def views(self, user_id: str) -> list[dict[str, Any]]:
        """Every view published for this user, oldest first."""
        with self._lock:
            return list(self._views.get(user_id, []))

    def responses(self, name: str = "default") -> list[dict[str, Any]]:
        """What was posted to response_url(name), oldest first."""
        with self._lock:
            return list(self._responses.get(name, []))

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
    ) -> None:
        """Wait until condition() holds; raise AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake Slack did not see it within {timeout} s")
            time.sleep(interval)

    def reset(self) -> None:
        """Forget calls, messages, views, responses and faults."""
        with self._lock:
            self._calls.clear()
            self._messages.clear()
            self._ephemeral.clear()
            self._views.clear()
            self._responses.clear()
        self.clear_faults()

    # --- HTTP -----------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        at = time.monotonic()
        url = urlsplit(request.path)
        size = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(size) if size else b""
        if url.path.startswith("/respond/"):
            self._respond_url(request, url.path.removeprefix("/respond/"), raw, at)
            return
        if not url.path.startswith("/api/"):
            self._send(request, 404, {"ok": False, "error": "not_found"})
            return
        method = url.path.removeprefix("/api/")
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, headers = 200, {}
        response: dict[str, Any]
        try:
            params.update(_parse_body(request.headers.get("Content-Type") or "", raw))
        except ValueError:
            response = {"ok": False, "error": "invalid_json"}
            self._record(method, params, None, at, 200, response)
            self._send(request, 200, response)
            return
        bearer = _bearer(request.headers.get("Authorization"))
        token = bearer or params.pop("token", None)
        app_level = method == "apps.connections.open"
        if token is None:
            response = {"ok": False, "error": "not_authed"}
        elif token not in self.tokens | self.app_tokens or (app_level and bearer is None):
            response = {"ok": False, "error": "invalid_auth"}
        elif app_level != (token in self.app_tokens):
            response = {"ok": False, "error": "not_allowed_token_type"}
        else:
            wait, holds, failure = self._take_faults(method)
            for held in holds:
                held.arrive_and_wait()
            if wait:
                time.sleep(wait)
            if failure is not None and failure.status == 429:
                status, response = 429, {"ok": False, "error": "ratelimited"}
                headers = {"Retry-After": str(failure.retry_after)}
            elif failure is not None:
                response = {"ok": False, "error": failure.error}
            else:
                response = self._dispatch(method, params)
        self._record(method, params, token, at, status, response)
        self._send(request, status, response, headers)

    def _record(
        self,
        method: str,
        params: dict[str, Any],
        token: str | None,
        at: float,
        status: int,
        response: dict[str, Any],
    ) -> None:
        with self._lock:
            self._calls.append(Call(method, params, token, at, status, response))

    def _respond_url(
        self, request: BaseHTTPRequestHandler, name: str, raw: bytes, at: float
    ) -> None:
        try:
            body = _parse_body(request.headers.get("Content-Type") or "", raw)
        except ValueError:
            self._send(request, 400, {"ok": False, "error": "invalid_json"}, plain="invalid_json")
            return
        problem = _message_problem(body)
        response: dict[str, Any] = {"ok": problem is None}
        if problem:
            response["error"] = problem
        with self._lock:
            self._calls.append(Call("response_url", body, None, at, 200, response))
            if problem is None:
                self._responses.setdefault(name, []).append(body)
        # Slack's response_url answers 200 "ok" as plain text, or 4xx with the error.
        if problem is None:
            self._send(request, 200, response, plain="ok")
        else:
            self._send(request, 400, response, plain=problem)

    def _send(
        self,
        request: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        plain: str | None = None,
    ) -> None:
        data = (plain if plain is not None else json.dumps(body)).encode()
        request.send_response(status)
        kind = "text/plain" if plain is not None else "application/json; charset=utf-8"
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    # --- methods --------------------------------------------------------------------------------
    def _dispatch(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "views.publish": self._views_publish,
            "usergroups.users.list": self._usergroup_users,
            "conversations.open": self._conversations_open,
        }.get(method)
        if method == "apps.connections.open" and self.socket_mode_url is not None:
            handler = self._connections_open
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        return handler(params)

    def _auth_test(self, _params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake Team",
            "user": "blnk-backup",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": "BFAKE0001",
        }

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _channel(self, params: dict[str, Any]) -> str | None:
        channel = str(params.get("channel") or "")
        if not channel:
            return None
        if channel[0] in "UW":  # posting to a user ID goes to the DM with them
            return "D" + channel
        return channel

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        problem = _message_problem(params)
        if problem:
            return {"ok": False, "error": problem}
        with self._lock:
            ts = self._next_ts()
            text, blocks = str(params.get("text")), list(params.get("blocks") or [])
            self._messages[(channel, ts)] = FakeMessage(
                channel,
                ts,
                text,
                blocks,
                thread_ts=params.get("thread_ts"),
                versions=[(text, blocks)],
            )
        return {"ok": True, "channel": channel, "ts": ts, "message": self._shown(text, blocks, ts)}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = str(params.get("ts") or "")
        problem = _message_problem(params)
        with self._lock:
            found = self._messages.get((channel, ts))
            if found is None:
                return {"ok": False, "error": "message_not_found"}
            if problem:
                return {"ok": False, "error": problem}
            found.text = str(params.get("text"))
            found.blocks = list(params.get("blocks") or [])
            found.versions.append((found.text, found.blocks))
            shown = self._shown(found.text, found.blocks, ts)
        return {"ok": True, "channel": channel, "ts": ts, "text": found.text, "message": shown}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        user = str(params.get("user") or "")
        if not user:
            return {"ok": False, "error": "user_not_in_channel"}
        problem = _message_problem(params)
        if problem:
            return {"ok": False, "error": problem}
        with self._lock:
            ts = self._next_ts()
            text, blocks = str(params.get("text")), list(params.get("blocks") or [])
            self._ephemeral.append(
                FakeMessage(channel, ts, text, blocks, user=user, versions=[(text, blocks)])
            )
        return {"ok": True, "message_ts": ts}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = str(params.get("user_id") or "")
        view = params.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return {"ok": False, "error": "invalid_arguments"}
        if not user_id:
            return {"ok": False, "error": "user_not_found"}
        if not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        problem = slack_would_reject(view.get("blocks"), "view")
        if problem:
            return {"ok": False, "error": problem}
        with self._lock:
            self._views.setdefault(user_id, []).append(view)
            number = sum(len(v) for v in self._views.values())
        return {"ok": True, "view": {"id": f"V{number:08d}", **view}}

    def _usergroup_users(self, params: dict[str, Any]) -> dict[str, Any]:
        group = str(params.get("usergroup") or "")
        if group not in self.user_groups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.user_groups[group])}

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = [u for u in str(params.get("users") or "").split(",") if u]
        if params.get("channel"):
            return {"ok": True, "channel": {"id": str(params["channel"])}}
        if not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": "D" + "".join(sorted(users))}}

    def _connections_open(self, _params: dict[str, Any]) -> dict[str, Any]:
        assert self.socket_mode_url is not None
        return {"ok": True, "url": self.socket_mode_url()}

    def _shown(self, text: str, blocks: list[dict[str, Any]], ts: str) -> dict[str, Any]:
        return {
            "type": "message",
            "text": text,
            "blocks": blocks,
            "ts": ts,
            "user": self.bot_user_id,
            "bot_id": "BFAKE0001",
        }


def _bearer(header: str | None) -> str | None:
    if header and header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip() or None
    return None


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """Parse a JSON or form body into params; JSON strings in ``blocks``/``view`` are decoded.
    Raise ValueError for a body that is not what its Content-Type says."""
    if not raw:
        return {}
    if content_type.startswith("application/json"):
        body = json.loads(raw.decode("utf-8"))
        if not isinstance(body, dict):
            raise ValueError("not an object")
    else:
        body = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
    for name in ("blocks", "attachments"):
        if isinstance(body.get(name), str):
            body[name] = json.loads(body[name])
    return dict(body)


def _message_problem(params: dict[str, Any]) -> str | None:
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        return "no_text"
    if len(text) > SLACK_MAX_TEXT:
        return "msg_too_long"
    return slack_would_reject(params.get("blocks"))
