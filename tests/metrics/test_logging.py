import io
import logging

import orjson

from metrics.logging import JsonFormatter, correlation_id


def _line(record_factory) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("voicegw.test.logging")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    record_factory(logger)
    return orjson.loads(stream.getvalue().strip())


def test_one_json_object_per_line_with_level_logger_and_message():
    line = _line(lambda log: log.info("call ended"))
    assert line["level"] == "info"
    assert line["logger"] == "voicegw.test.logging"
    assert line["msg"] == "call ended"
    assert line["ts"].endswith("Z")


def test_phone_numbers_are_masked_in_message_and_extra_fields():
    line = _line(
        lambda log: log.warning("caller +15551234567 hung up", extra={"to": "+442071234567"})
    )
    assert "5551234567" not in orjson.dumps(line).decode()
    assert "2071234567" not in line["to"]
    assert line["msg"].startswith("caller +1")


def test_tracebacks_are_redacted_too():
    def log_exception(log: logging.Logger) -> None:
        try:
            raise ValueError("bad number +15551234567")
        except ValueError:
            log.exception("failed")

    line = _line(log_exception)
    assert "ValueError" in line["exc"]
    assert "5551234567" not in line["exc"]


def test_correlation_id_is_attached_when_set():
    token = correlation_id.set("call_abc")
    try:
        line = _line(lambda log: log.info("x"))
    finally:
        correlation_id.reset(token)
    assert line["correlation_id"] == "call_abc"
    assert "correlation_id" not in _line(lambda log: log.info("y"))


def test_uvicorn_colour_duplicate_is_not_logged():
    line = _line(lambda log: log.info("started", extra={"color_message": "\x1b[36mstarted"}))
    assert "color_message" not in line
