"""An HTTP proxy in front of the S3 server that can fail on purpose: answer 503, go down
(refuse and drop connections) after a chosen request, or tamper with requests and responses.
It forwards everything else unchanged, so the client talks real S3 HTTP to a real server
behind it."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.s3server import free_port


@dataclass
class Request:
    method: str
    path: str


@dataclass
class Faults:
    # Answer these requests with (status, S3 error code) instead of forwarding.
    fail: Callable[[Request], tuple[int, str] | None] = lambda _r: None
    # Seconds to wait before forwarding (a slow store).
    delay: Callable[[Request], float] = lambda _r: 0.0
    # Called after each forwarded request; may stop the proxy.
    after: Callable[[Request], None] = lambda _r: None
    # Rewrite response headers of forwarded requests.
    headers: Callable[[Request, dict[str, str]], dict[str, str]] = lambda _r, h: h
    # Rewrite request bodies before forwarding them (corruption in transit).
    body: Callable[[Request, bytes], bytes] = lambda _r, b: b
    log: list[Request] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.faults = Faults()
        self._server: ThreadingHTTPServer | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._sockets.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._sockets.discard(self.connection)
                super().finish()

            def log_message(self, *_args: object) -> None:
                pass

            def _handle(self) -> None:
                request = Request(self.command, self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.faults.log.append(request)
                failure = proxy.faults.fail(request)
                if failure is not None:
                    status, code = failure
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>injected by the test proxy</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                time.sleep(proxy.faults.delay(request))
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                body = proxy.faults.body(request, body)
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                out = dict(response.getheaders())
                out = proxy.faults.headers(request, out)
                self.send_response(response.status)
                for key, value in out.items():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                content_length = out.get("Content-Length") or out.get("content-length")
                if self.command == "HEAD" and content_length is not None:
                    self.send_header("Content-Length", content_length)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()
                proxy.faults.after(request)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Go down: refuse new connections and cut the open ones."""
        server, self._server = self._server, None
        if server is None:
            return
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.socket.close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()
