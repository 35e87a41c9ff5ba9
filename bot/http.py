"""The HTTP front end: one WSGI app served by waitress (a production-grade, multi-threaded
server), holding Blnk's documented backup endpoint, health checks, metrics and — in Slack's HTTP
mode — ``/slack/events``.

- ``GET /backup-s3`` with ``Authorization: Bearer $BLNK_API_KEY`` (or ``X-Blnk-Key``):
  synchronous, like Blnk's. 200 with the backup's key, size, SHA-256 and duration; 400
  configuration error; 401 missing or wrong key (compared in constant time); 403 when no API key
  is configured (the endpoint is off, not open); 409 a backup is already running; 500 failure.
  Error bodies are ``{"error": {"code", "message"}}`` — never a secret or a traceback.
- ``GET /healthz`` — liveness: 200 while the process serves requests (restart it otherwise).
  The body also reports readiness and freshness.
- ``GET /healthz?check=ready`` — readiness: 503 while Socket Mode is not connected (when used)
  or the audit database cannot be reached (take it out of rotation, do not restart it).
- ``GET /healthz?check=backups`` — 503 when backups need attention (stale, failed restore
  test): for an external monitor, never for a restart policy.
- ``GET /metrics`` — Prometheus text (bot/metrics.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from bot.api_keys import KeyGuard
from bot.metrics import EngineCollector, metrics_text
from bot.render import json as render_json
from core.actor import Actor
from core.errors import EngineError
from core.redact import neutralise
from core.services import Services

if TYPE_CHECKING:
    from slack_bolt import App

log = logging.getLogger("blnk_backup.http")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
MAX_BODY = 1 << 20  # on every path: Slack payloads are small, the other endpoints take none
HEALTH_CACHE_SECONDS = 60.0  # /healthz?check=backups lists the bucket at most this often
SLACK_SIGNATURE_VALID = timedelta(minutes=5)  # Slack's window; a replay within it is refused
_SLACK_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SLACK_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
# Answered at DEBUG when they succeed: probes and scrapes come every few seconds.
_QUIET_PATHS = {"/healthz", "/metrics"}
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    413: "413 Payload Too Large",
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


@dataclass
class Probes:
    """What readiness depends on, supplied by the composition root."""

    socket_connected: Callable[[], bool] | None = None  # None: Socket Mode not used


class HttpApi:
    """The WSGI application."""

    def __init__(
        self,
        services: Services,
        *,
        slack_app: App | None = None,
        collector: EngineCollector | None = None,
        probes: Probes | None = None,
        health_cache_seconds: float = HEALTH_CACHE_SECONDS,
    ) -> None:
        self.services = services
        self.health_cache_seconds = health_cache_seconds
        self.slack_app = slack_app
        self.collector = collector or EngineCollector(services)
        self.probes = probes or Probes()
        self.keys = KeyGuard()
        self._seen: Any = None  # core.replay.SeenRequests, built on the first Slack request
        self._seen_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request, and log its outcome in one line (no query, no body)."""
        began = time.monotonic()
        answered: list[int] = []

        def recording(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            answered.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, *rest)

        body: Iterable[bytes] = []
        try:
            body = self._answer(environ, recording)
            return body
        finally:
            status = answered[0] if answered else 0
            _log_request(environ, status, time.monotonic() - began, _error_code(status, body))

    def _answer(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if _content_length(environ) > MAX_BODY:
            return _json(start_response, 413, _error("too_large", "request body too large"))
        try:
            if path == "/slack/events" and self.slack_app is not None:
                if method != "POST":
                    return _json(start_response, 405, _error("method_not_allowed", "use POST"))
                return self._slack(environ, start_response)
            if path == "/backup-s3":
                if method not in {"GET", "POST"}:
                    return _json(start_response, 405, _error("method_not_allowed", "use GET"))
                return self._backup(environ, start_response)
            if path == "/healthz" and method == "GET":
                return self._health(environ, start_response)
            if path == "/metrics" and method == "GET":
                body = metrics_text(self.collector, self.keys)
                start_response(
                    "200 OK",
                    [
                        ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                        ("Content-Length", str(len(body))),
                    ],
                )
                return [body]
            return _json(start_response, 404, _error("not_found", f"no such endpoint: {path}"))
        except Exception:
            error_id = uuid.uuid4().hex[:8]
            log.exception("HTTP request %s %s failed (error id %s)", method, _shown(path), error_id)
            return _json(
                start_response,
                500,
                _error("internal_error", f"internal error (error id {error_id}); see the log"),
            )

    # --- Blnk's endpoint ----------------------------------------------------------------------
    def _backup(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        key = self.services.settings.blnk_api_key
        if key is None:
            return _json(
                start_response,
                403,
                _error("api_disabled", "BLNK_API_KEY is not set: the backup endpoint is off"),
            )
        # The right key always gets in; wrong ones are counted per client address (behind
        # HTTP_TRUSTED_PROXY, the one it forwarded for) and, past the limit, answered 429.
        client = str(environ.get("REMOTE_ADDR") or "unknown")
        given = _api_key(environ)
        if given is None or not hmac.compare_digest(
            given.encode(), key.get_secret_value().encode()
        ):
            wait = self.keys.blocked(client)
            if wait is not None:
                return _json(
                    start_response,
                    429,
                    _error("too_many_failures", "too many wrong API keys from here; try later"),
                    extra=[("Retry-After", str(max(1, round(wait))))],
                )
            self.keys.failed(client)
            log.warning(
                "a request to /backup-s3 from %s had %s API key",
                _shown(client),
                "no" if given is None else "a wrong",
            )
            return _json(
                start_response,
                401,
                _error("unauthorized", "a valid API key is required (Authorization: Bearer …)"),
                extra=[("WWW-Authenticate", 'Bearer realm="blnk-backup"')],
            )
        query = parse_qs(environ.get("QUERY_STRING", ""))
        reason = (query.get("reason") or [None])[0]
        try:
            result = self.services.backups.run(Actor("api", "api"), reason=reason)
        except EngineError as exc:
            return _json(start_response, exc.http_status, render_json.error(exc))
        body = render_json.backup(result.manifest, self.services.store.bucket)
        body["run_id"] = result.run_id
        return _json(start_response, 200, body)

    # --- health -------------------------------------------------------------------------------
    def _health(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        check = (parse_qs(environ.get("QUERY_STRING", "")).get("check") or ["alive"])[0]
        body: dict[str, Any] = {"alive": True}
        socket = self.probes.socket_connected
        body["socket_mode"] = None if socket is None else socket()
        try:
            self.services.audit.ping()
            body["audit_database"] = True
        except Exception:
            body["audit_database"] = False
        missing = self.services.settings.missing(*BACKUP_NEEDS)
        body["configured"] = not missing
        if missing:
            body["missing"] = missing
        ready = body["audit_database"] and body["socket_mode"] is not False and not missing
        body["ready"] = ready
        if check == "backups":
            # Anyone who reaches the port may ask: the answer names no endpoint, bucket,
            # prefix or key (breach codes only), and the bucket is listed at most once a
            # minute however often it is asked.
            try:
                status = self.services.catalog.status(max_age=self.health_cache_seconds)
                body["backups_fresh"] = status.healthy
                body["breaches"] = status.breach_codes
                body["checked_at"] = status.checked_at.isoformat()
            except EngineError as exc:
                body["backups_fresh"] = False
                body["breaches"] = [exc.code]
            if self.services.settings.wal_archive:
                self._recovery_point(body)
            return _json(start_response, 200 if body["backups_fresh"] else 503, body)
        if check == "ready":
            return _json(start_response, 200 if body["ready"] else 503, body)
        return _json(start_response, 200, body)

    def _recovery_point(self, body: dict[str, Any]) -> None:
        """With WAL_ARCHIVE: the recovery point's lag, and a breach for each problem of
        continuous protection (core/wal/health.py): ``wal_lag``, ``no_recovery_window``,
        ``chain_broken``, ``slot_retention``, ``receiver_down`` — codes only, read at most once
        per cache period."""
        try:
            wal = self.services.wal_health.check(max_age=self.health_cache_seconds)
        except EngineError as exc:
            body["backups_fresh"] = False
            body["breaches"] = [*body.get("breaches", []), f"wal_{exc.code}"]
            return
        lag = wal.recovery_point_lag_seconds
        body["recovery_point_lag_seconds"] = round(lag, 3) if lag is not None else None
        codes = list(dict.fromkeys(p.code for p in wal.problems()))
        if codes:
            body["backups_fresh"] = False
            body["breaches"] = [*body.get("breaches", []), *codes]

    # --- Slack --------------------------------------------------------------------------------
    def _slack(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        from slack_bolt.request import BoltRequest

        assert self.slack_app is not None
        length = _content_length(environ)
        raw = environ["wsgi.input"].read(length) if length else b""
        body = raw.decode("utf-8", "replace")
        refused = self._check_slack_signature(environ, body)
        if refused is not None:
            log.warning("refused a Slack request: %s", refused)
            return _json(start_response, 401, _error("invalid_request", "invalid request"))
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        response = self.slack_app.dispatch(
            BoltRequest(body=body, query=environ.get("QUERY_STRING", ""), headers=headers)
        )
        status = _STATUS.get(response.status, f"{response.status} Response")
        payload = (response.body or "").encode()
        out = [(k, v) for k, values in response.headers.items() for v in values]
        out = [(k, v) for k, v in out if k.lower() != "content-length"]
        out.append(("Content-Length", str(len(payload))))
        start_response(status, out)
        return [payload]

    def _check_slack_signature(self, environ: dict[str, Any], body: str) -> str | None:
        """Why a request to /slack/events is refused (before Bolt sees it), or None: the
        timestamp and signature headers must have their shape, the signature must verify
        within Slack's five minutes, and the same signature must not have been seen before
        (a replay). Bolt checks the signature again."""
        from slack_sdk.signature import SignatureVerifier

        timestamp = str(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP") or "")
        signature = str(environ.get("HTTP_X_SLACK_SIGNATURE") or "")
        if not _SLACK_TIMESTAMP.fullmatch(timestamp):
            return "no valid X-Slack-Request-Timestamp"
        if not _SLACK_SIGNATURE.fullmatch(signature):
            return "no valid X-Slack-Signature"
        secret = self.services.settings.slack_signing_secret
        if secret is None:
            return "no signing secret is configured"
        verifier = SignatureVerifier(secret.get_secret_value())
        if not verifier.is_valid(body, timestamp, signature):
            return "bad signature or stale timestamp"
        if not self._seen_requests().first_time(signature, SLACK_SIGNATURE_VALID * 2):
            return "a replay of a request already answered"
        return None

    def _seen_requests(self) -> Any:
        with self._seen_lock:
            if self._seen is None:
                from core.replay import SeenRequests

                self._seen = SeenRequests(self.services.audit)
            return self._seen


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def _shown(text: str, limit: int = 200) -> str:
    """Request text (a path, an address) fit for one log line: control characters visible,
    cut at ``limit``."""
    shown = neutralise(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _error_code(status: int, body: Iterable[bytes]) -> str:
    """The ``error.code`` of one of our JSON error answers, or ''."""
    if status < 400 or not isinstance(body, list) or len(body) != 1 or len(body[0]) > 4096:
        return ""
    try:
        code = json.loads(body[0])["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f" {code}" if isinstance(code, str) else ""


def _log_request(environ: dict[str, Any], status: int, seconds: float, code: str = "") -> None:
    """One line per request: method, path, status (and error code), time, client; never the
    query or the body."""
    path = str(environ.get("PATH_INFO") or "/")
    level = logging.WARNING if status >= 500 or status == 0 else logging.INFO
    if path in _QUIET_PATHS:  # a probe's 503 is its answer, not a fault of the service
        level = logging.DEBUG if status < 400 else logging.INFO
    log.log(
        level,
        "%s %s -> %s%s in %.3f s from %s",
        _shown(str(environ.get("REQUEST_METHOD") or "?"), 10),
        _shown(path),
        status or "no answer",
        _shown(code, 60),
        seconds,
        _shown(str(environ.get("REMOTE_ADDR") or "unknown"), 60),
    )


def _api_key(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return environ.get("HTTP_X_BLNK_KEY") or None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _json(
    start_response: StartResponse,
    status: int,
    body: dict[str, Any],
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    payload = json.dumps(body, default=str).encode()
    start_response(
        _STATUS[status],
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *(extra or []),
        ],
    )
    return [payload]


# What a backup needs; without it the service cannot do its job, so it is not ready.
BACKUP_NEEDS = ("database_url", "s3_bucket")
# Shutting down (SIGTERM): requests in flight get DRAIN_SECONDS to finish, then running backups
# are stopped and get OVERDUE_SECONDS to clean up and answer — 25 s, inside Kubernetes' 30 s.
DRAIN_SECONDS = 15.0
OVERDUE_SECONDS = 10.0


def serve(
    api: HttpApi, host: str, port: int, threads: int = 8, trusted_proxy: str | None = None
) -> Any:
    """Create (not yet run) the waitress server for api; serve with ``run_until``. With
    ``trusted_proxy`` (its address), that proxy's X-Forwarded-For names the client (and is
    dropped from anyone else)."""
    from waitress.server import create_server

    proxy: dict[str, Any] = {}
    if trusted_proxy:
        proxy = {
            "trusted_proxy": trusted_proxy,
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": {"x-forwarded-for"},
            "clear_untrusted_proxy_headers": True,
        }
    return create_server(
        api,
        host=host,
        port=port,
        threads=threads,
        ident="blnk-backup",
        # Chunked bodies too are cut off past twice the limit; a body that declares its length
        # reaches the app, which refuses it past MAX_BODY with a JSON 413 and a log line.
        max_request_body_size=2 * MAX_BODY,
        **proxy,
    )


def run_until(
    server: Any,
    stop: threading.Event,
    drain_seconds: float = DRAIN_SECONDS,
    on_overdue: Callable[[], object] = lambda: None,
    overdue_seconds: float = OVERDUE_SECONDS,
) -> None:
    """Serve until ``stop`` is set (wake the loop with ``server.pull_trigger()``), then shut
    down gracefully: stop accepting connections, give the requests in flight up to
    ``drain_seconds`` to finish and be sent (a ``/backup-s3`` during a rolling update); if some
    still run, call ``on_overdue`` (which stops the backups: they fail as interrupted and clean
    up) and give them ``overdue_seconds`` more to send that answer — together within
    Kubernetes' 30 s grace — and close. All on this thread, the server's own loop, so no worker
    finishing a response ever finds the server's wake-up pipe closed under it."""
    from waitress import wasyncore

    def turn(timeout: float) -> None:
        wasyncore.loop(
            timeout=timeout, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1
        )

    def drain(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while _in_flight(server) and time.monotonic() < deadline:
            turn(0.1)

    while not stop.is_set():
        turn(1.0)
    server.accepting = False  # new connections wait in the backlog and are refused on close
    drain(drain_seconds)
    if _in_flight(server):
        log.warning("requests still running after %.0f s: stopping them", drain_seconds)
        on_overdue()
        drain(overdue_seconds)
    if _in_flight(server):
        log.warning("shutting down with requests still running")
    server.close()
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)


def _in_flight(server: Any) -> bool:
    """True while a request is being handled or its response is not yet sent."""
    if server.task_dispatcher.queue:
        return True
    return any(c.requests or c.total_outbufs_len for c in list(server.active_channels.values()))
