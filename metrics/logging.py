"""JSON log lines with a correlation id (contextvars); phone numbers redacted in every line."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any, Final

import orjson

from security.redaction import redact

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "voicegw_correlation_id", default=None
)

_RESERVED: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of msg
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, correlation id, extra fields.

    Tracebacks are logged (to operators) but never sent to a peer; all text is redacted.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        cid = correlation_id.get()
        if cid is not None:
            line["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "INFO") -> None:
    """Send every ``voicegw`` and uvicorn log line to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Access lines carry raw paths and client addresses; our own middleware logs requests.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
