"""Replace a dead Socket Mode connection within seconds, not a minute.

slack_sdk's built-in Socket Mode client notices a dead connection late. When the other side
closes the TCP connection without a WebSocket close frame (a load balancer or NAT timing it out),
every read returns end-of-file at once, which that client takes for "nothing yet": its reader
loop spins a core, and the connection counts as connected until five of its state checks
(one per ping interval) have failed — about a minute, measured here. A connection that goes
silent without any close (a host or network gone) is dropped only after four ping intervals
without a pong.

The watchdog looks at the current connection four times a second, without reading from it:

- the kernel's TCP state (``TCP_INFO``, Linux): once the peer has closed (``CLOSE_WAIT``) or
  reset it (``CLOSE``), the connection is dead now;
- the time of the last ping Slack answered (``last_ping_pong_time``): with pings every
  ``ping_interval`` seconds, none answered for ``STALE_PINGS`` intervals means the link is gone.

Then it closes that connection (readiness turns 503 at once) and asks the client for a new one;
if that fails, slack_sdk's own monitor keeps trying every ping interval.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

log = logging.getLogger("blnk_backup.slack.socket")

PING_INTERVAL = 5.0  # seconds between pings to Slack (Bolt's default is 10)
STALE_PINGS = 2.5  # pings unanswered for this many intervals: the connection is dead
_PEER_GONE = {7: "reset", 8: "closed by Slack without a close frame"}  # TCP_CLOSE, TCP_CLOSE_WAIT


def peer_gone(sock: Any) -> str | None:
    """Why the TCP connection under ``sock`` is finished from the other side, or None while it
    is established (or the platform cannot say)."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 8)
    except (OSError, ValueError):
        return None  # closed meanwhile: the client is replacing it already
    return _PEER_GONE.get(info[0]) if info else None


class SocketWatchdog:
    """Watches ``client`` (slack_sdk's built-in ``SocketModeClient``) from a thread of its own."""

    def __init__(
        self,
        client: Any,
        ping_interval: float = PING_INTERVAL,
        every: float = 0.25,
    ) -> None:
        self.client = client
        self.stale_after = ping_interval * STALE_PINGS
        self.every = every
        self.replaced = 0
        self._seen: tuple[Any, float] | None = None  # (a connection, when first seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-watchdog", daemon=True)

    def start(self) -> SocketWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 5)

    def check(self) -> str | None:
        """Replace the current connection if it is dead; return why, or None."""
        if self.client.closed:
            return None  # the service is shutting down
        session = self.client.current_session
        if session is None or not session.is_active():
            return None  # none yet, or slack_sdk is replacing it
        why = peer_gone(session.sock) or self._unanswered(session)
        if why is None:
            return None
        log.warning("Socket Mode connection %s; connecting again", why)
        self.replaced += 1
        session.disconnect()
        try:
            self.client.connect_to_new_endpoint()
        except Exception as exc:  # slack_sdk's monitor tries again every ping interval
            log.warning("Socket Mode reconnection failed (%s); retrying", type(exc).__name__)
        return why

    def _unanswered(self, session: Any) -> str | None:
        now = time.time()
        if self._seen is None or self._seen[0] is not session:
            self._seen = (session, now)
        answered = session.last_ping_pong_time or self._seen[1]
        silent = now - answered
        if silent <= self.stale_after:
            return None
        return f"had no answer to its pings for {silent:.0f} s"

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.check()
            except Exception:
                log.exception("the Socket Mode watchdog failed")
