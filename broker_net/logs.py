"""Structured, quiet-by-default logging for every broker-net process."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record, so a stream swapped
    in and closed by a caller (test runners, CLI harnesses) is never written to later."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _OneLineBrokerClientErrors(logging.Filter):
    """Folds the tracebacks aio-pika and aiormq attach to expected events (a broker closing a
    connection, a channel lost while reconnecting) into one line: the error's type and text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.split(".")[0] in _BROKER_CLIENTS:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_BROKER_CLIENTS = ("aio_pika", "aiormq")


def configure_logging(level: str = "WARNING", *, json_lines: bool = False) -> None:
    """Send broker-net's logs to stderr at ``level`` (warnings only by default).

    Args:
        level: a logging level name.
        json_lines: write JSON lines instead of human-readable text.
    """
    handler: logging.Handler = _StderrHandler()
    handler.addFilter(_OneLineBrokerClientErrors())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika and aiormq are chatty about reconnections; our own logs say what matters.
    for noisy in _BROKER_CLIENTS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
