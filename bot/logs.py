"""Logging for every door: one line per record, whatever it quotes, and nothing of a request.

Log lines quote text from outside — a path, a Slack user ID, an error from S3 or pg_dump. A
newline in it could forge a stand-alone line ("... INFO backup uploaded and verified"), and a
huge value could flood the log. So every record's message is one line (control, bidi and
zero-width characters made visible) cut at ``MAX_MESSAGE`` characters, and the lines of a
traceback are marked as its continuation.

Libraries that log what they receive are held back: Bolt logs rejected request bodies (at INFO,
raw) and slack_sdk and botocore log payloads at DEBUG, so they only ever log warnings and
errors here, even with ``-v``, and those pass through the same one-line formatter.
"""

from __future__ import annotations

import logging
from typing import TextIO

from core.redact import neutralise

MAX_MESSAGE = 2000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that may log request or response bodies, tokens in headers, or payloads.
QUIET = ("slack_bolt", "slack_sdk", "botocore", "boto3", "urllib3", "s3transfer", "waitress")
CHATTY = ("apscheduler",)


class QuietLibraries(logging.Filter):
    """Let through only warnings and errors from the libraries in ``QUIET`` (and their child
    loggers), whatever level those loggers were given: Bolt sets each of its loggers' levels
    from the root logger's when an app is built, after any configuration here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == n or record.name.startswith(n + ".") for n in QUIET)


class OneLineFormatter(logging.Formatter):
    """Every record is one line; its traceback, if any, follows on lines marked ``  | ``."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} (could not format its arguments)"
        message = neutralise(message)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  | {neutralise(t)}" for t in trace.splitlines())
        return line


def configure(
    verbose: bool = False, level: int | None = None, stream: TextIO | None = None
) -> None:
    """Log to stderr (or ``stream``) through the one-line formatter: INFO (or DEBUG with
    ``verbose``) for this program, WARNING for libraries that could log what a request
    carried."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(QuietLibraries())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level is not None else logging.DEBUG if verbose else logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
