"""JSON log lines on stdout with a correlation id (contextvars); personal data redacted.

Every line is one JSON object: ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``event`` (the
message), ``correlation_id`` (per request and per call) when one is set, then the record's
extra fields (``carrier``, ``provider``, ...) and ``exc`` for a traceback. Before anything is
written, phone numbers and email addresses are masked, client addresses are replaced by a keyed
hash (:func:`security.redaction.hash_ip`) and fields named like credentials (``token``,
``signature``, ``api_key``, ``cookie``, ...) are replaced by ``[redacted]``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from security.redaction import redact_value

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "voicegw_correlation_id", default=None
)

IP_HASH_KEY_FILE: Final = "log-ip-hash.key"

_RESERVED: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of msg
}
FRAME_LOGGERS: Final = ("websockets", "uvicorn.error", "uvicorn.asgi")
"""Loggers that print frame or message contents below INFO; ``configure`` keeps them at INFO
or above, whatever ``VOICEGW_LOG_LEVEL`` says."""
_OWN_FIELDS: Final = frozenset({"ts", "level", "logger", "event", "correlation_id", "exc"})


def _jsonable(value: Any) -> Any:
    """``value`` as JSON-native data: anything else becomes its ``str`` (so it is redacted)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, correlation id, extra fields.

    ``ip_hash_key`` keys the client-address hash; without one a random per-process key is
    used (hashes then correlate within one process only). Tracebacks are logged (to operators)
    but never sent to a peer; all text is redacted.
    """

    def __init__(self, *, ip_hash_key: bytes | None = None) -> None:
        super().__init__()
        self.ip_hash_key = ip_hash_key or secrets.token_bytes(32)

    def format(self, record: logging.LogRecord) -> str:
        key = self.ip_hash_key
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact_value(record.getMessage(), ip_key=key),
        }
        cid = correlation_id.get()
        if cid is not None:
            line["correlation_id"] = cid
        for name, value in record.__dict__.items():
            if name in _RESERVED or name.startswith("_"):
                continue
            field = f"extra_{name}" if name in _OWN_FIELDS else name
            line[field] = redact_value(_jsonable(value), ip_key=key, key=name)
        if record.exc_info:
            line["exc"] = redact_value(self.formatException(record.exc_info), ip_key=key)
        if record.stack_info:
            line["stack"] = redact_value(self.formatStack(record.stack_info), ip_key=key)
        return orjson.dumps(line).decode()


class LineFormatter(JsonFormatter):
    """The command line's one-line errors (``voicegw: logger: message``), redacted as the JSON
    lines are: a command prints to a terminal that may be logged too."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact_value(record.getMessage(), ip_key=self.ip_hash_key)
        return f"voicegw: {record.name}: {message}"


def load_ip_hash_key(data_dir: Path) -> bytes:
    """The key that hashes client addresses in logs: 32 random bytes kept in ``data_dir``
    (created mode 0600 on first use, so every restart and every process sharing the data
    directory hashes alike). A random key is returned when the directory cannot be written."""
    path = data_dir / IP_HASH_KEY_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) >= 16:
                return key
            raise OSError(f"{path} is too short") from None
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    except OSError:
        return secrets.token_bytes(32)


def configure(
    level: str = "INFO", *, ip_hash_key: bytes | None = None, stream: TextIO | None = None
) -> None:
    """Send every log line, uvicorn's included, to ``stream`` (stdout) as redacted JSON.
    WebSocket frame dumps stay out even at DEBUG (``FRAME_LOGGERS``).

    ``ip_hash_key`` (see :func:`load_ip_hash_key`) keys the client-address hash.
    """
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(JsonFormatter(ip_hash_key=ip_hash_key))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # the root's level applies
    # Access lines carry raw paths and client addresses; our own middleware logs requests.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Below INFO these dump frames and ASGI messages (websockets' "< TEXT '...'" lines go to
    # uvicorn.error): stream tokens, audio, transcripts. They never log below INFO.
    floor = max(root.getEffectiveLevel(), logging.INFO)
    for name in FRAME_LOGGERS:
        logging.getLogger(name).setLevel(floor)
