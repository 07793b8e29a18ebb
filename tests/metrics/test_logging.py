import io
import logging
import re
import stat
import sys

import orjson
import pytest

from metrics.logging import (
    FRAME_LOGGERS,
    IP_HASH_KEY_FILE,
    JsonFormatter,
    configure,
    correlation_id,
    load_ip_hash_key,
)
from security.redaction import hash_ip

KEY = b"test-ip-hash-key"


def _line(record_factory, *, key: bytes = KEY) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(ip_hash_key=key))
    logger = logging.getLogger("voicegw.test.logging")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    record_factory(logger)
    return orjson.loads(stream.getvalue().strip())


def test_one_json_object_per_line_with_level_logger_and_event():
    line = _line(lambda log: log.info("call ended"))
    assert line["level"] == "info"
    assert line["logger"] == "voicegw.test.logging"
    assert line["event"] == "call ended"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_phone_numbers_are_masked_in_message_and_extra_fields():
    line = _line(
        lambda log: log.warning("caller +15551234567 hung up", extra={"to": "+442071234567"})
    )
    assert "5551234567" not in orjson.dumps(line).decode()
    assert line["to"] == "+44********67"
    assert line["event"].startswith("caller +1")


def test_emails_are_masked():
    line = _line(lambda log: log.info("user alice@example.com", extra={"who": "bob@example.com"}))
    assert line["event"] == "user a***@example.com"
    assert line["who"] == "b***@example.com"


def test_client_addresses_are_replaced_by_a_keyed_hash():
    line = _line(
        lambda log: log.info(
            "connection from 203.0.113.9:51234", extra={"client_ip": "2001:db8::7"}
        )
    )
    text = orjson.dumps(line).decode()
    assert "203.0.113.9" not in text and "2001:db8::7" not in text
    assert line["event"] == f"connection from ip-{hash_ip('203.0.113.9', KEY)}:51234"
    assert line["client_ip"] == f"ip-{hash_ip('2001:db8::7', KEY)}"
    # Without a key configured, addresses are still hashed (with a per-process key).
    assert (
        "203.0.113.9"
        not in orjson.dumps(_line(lambda log: log.info("from 203.0.113.9"), key=b"")).decode()
    )


@pytest.mark.parametrize(
    "field",
    [
        "token",
        "stream_token",
        "authorization",
        "Cookie",
        "set_cookie",
        "x_twilio_signature",
        "api_key",
        "OPENAI_API_KEY",
        "secret",
        "password",
        "dsn",
    ],
)
def test_credential_fields_are_never_logged(field):
    line = _line(lambda log: log.info("x", extra={field: "s3cr3t-value-123"}))
    assert line[field] == "[redacted]"
    assert "s3cr3t" not in orjson.dumps(line).decode()


def test_credentials_inside_text_and_nested_fields_are_masked():
    line = _line(
        lambda log: log.info(
            "GET /media?token=abc123 with Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln",
            extra={"request": {"headers": {"cookie": "sid=1"}, "from": "+15550100001"}},
        )
    )
    text = orjson.dumps(line).decode()
    assert "abc123" not in text and "eyJ" not in text and "sid=1" not in text
    assert "5550100001" not in text
    assert line["request"]["headers"]["cookie"] == "[redacted]"


def test_values_of_other_types_are_logged_as_redacted_text():
    class Caller:
        def __str__(self) -> str:
            return "caller +15550100001"

    line = _line(lambda log: log.info("x", extra={"caller_obj": Caller(), "n": 3, "ok": True}))
    assert line["caller_obj"] == "caller +1********01"
    assert line["n"] == 3 and line["ok"] is True


def test_tracebacks_are_redacted_too():
    def log_exception(log: logging.Logger) -> None:
        try:
            raise ValueError("bad number +15551234567 from 198.51.100.4")
        except ValueError:
            log.exception("failed")

    line = _line(log_exception)
    assert "ValueError" in line["exc"]
    assert "5551234567" not in line["exc"]
    assert "198.51.100.4" not in line["exc"]


def test_correlation_id_is_attached_when_set():
    token = correlation_id.set("call_abc")
    try:
        line = _line(lambda log: log.info("x"))
    finally:
        correlation_id.reset(token)
    assert line["correlation_id"] == "call_abc"
    assert "correlation_id" not in _line(lambda log: log.info("y"))


def test_extra_fields_never_overwrite_the_line_s_own():
    line = _line(lambda log: log.info("real", extra={"event": "fake", "level": "none"}))
    assert line["event"] == "real" and line["level"] == "info"
    assert line["extra_event"] == "fake" and line["extra_level"] == "none"


def test_uvicorn_colour_duplicate_is_not_logged():
    line = _line(lambda log: log.info("started", extra={"color_message": "\x1b[36mstarted"}))
    assert "color_message" not in line


@pytest.fixture
def restore_logging():
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", *FRAME_LOGGERS)
    loggers = [logging.getLogger(n) for n in names]
    saved = [(log, log.handlers[:], log.level, log.propagate) for log in loggers]
    yield
    for log, handlers, level, propagate in saved:
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


def test_configure_writes_to_stdout_by_default(restore_logging, capsys):
    configure("INFO", ip_hash_key=KEY)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stdout
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8000")
    logging.getLogger("uvicorn.error").info("peer 198.51.100.4:4431 went away")
    logging.getLogger("uvicorn.access").info("dropped: access lines are not logged")
    out = capsys.readouterr().out.splitlines()
    first, second = [orjson.loads(x) for x in out]
    assert first["logger"] == "uvicorn.error"
    # The listen address identifies no one; a client's address is hashed.
    assert first["event"] == "Uvicorn running on http://127.0.0.1:8000"
    assert second["event"] == f"peer ip-{hash_ip('198.51.100.4', KEY)}:4431 went away"


def test_configure_honours_the_level(restore_logging):
    stream = io.StringIO()
    configure("WARNING", stream=stream)
    logging.getLogger("voicegw.test").info("quiet")
    logging.getLogger("voicegw.test").warning("loud")
    assert [orjson.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["loud"]


def test_ip_hash_key_is_created_once_private_and_reused(tmp_path):
    data = tmp_path / "data"
    key = load_ip_hash_key(data)
    assert len(key) == 32
    path = data / IP_HASH_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_ip_hash_key(data) == key
    assert load_ip_hash_key(tmp_path / "other") != key


def test_ip_hash_key_falls_back_to_a_random_key_when_the_directory_cannot_be_made(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    data = blocked / "data"
    first, second = load_ip_hash_key(data), load_ip_hash_key(data)
    assert len(first) == 32 and first != second


# -- frame dumps (issue 15, item 15) -----------------------------------------------------------

CANARY_TOKEN = "st-canary-0123456789abcdef"


async def _echo_app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": message["text"]})
    await receive()  # the client's close


async def test_debug_logging_keeps_websocket_frames_out(restore_logging):
    """At DEBUG, a real uvicorn server with the gateway's WebSocket protocol and a real
    websockets client exchange a frame carrying a stream token: no line shows it."""
    import asyncio

    import websockets

    from tests.conftest import UNIT
    from tests.http.test_wsprotocol import serve  # uvicorn with the gateway's protocol

    stream = io.StringIO()
    configure("DEBUG", ip_hash_key=KEY, stream=stream)
    async with serve(_echo_app) as (url, _):
        async with asyncio.timeout(10 * UNIT), websockets.connect(url + "media/twilio/CA1") as ws:
            await ws.send(
                orjson.dumps({"event": "start", "start": {"token": CANARY_TOKEN}}).decode()
            )
            assert CANARY_TOKEN in await ws.recv()
    logging.getLogger("voicegw.test").debug("debug lines are written")
    out = stream.getvalue()
    assert "debug lines are written" in out  # DEBUG is on
    assert CANARY_TOKEN not in out and "TEXT" not in out, out


def test_the_command_lines_error_format_is_redacted():
    from metrics.logging import LineFormatter

    record = logging.LogRecord(
        "voicegw.store", logging.ERROR, __file__, 1, "no call for %s", ("+14155550199",), None
    )
    line = LineFormatter().format(record)
    assert line.startswith("voicegw: voicegw.store: no call for ")
    assert "4155550199" not in line
