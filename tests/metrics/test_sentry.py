"""Sentry starts only with a DSN, and the events it would send carry no personal data."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import orjson

from metrics import sentry
from tests.conftest import UNIT
from tests.metrics import sentry_probe

ROOT = Path(__file__).resolve().parents[2]


def test_no_dsn_no_sentry():
    assert sentry.init(None, environment="test") is False
    assert sentry.init("", environment="test") is False


def test_denylist_has_sentry_s_and_ours():
    names = sentry.denylist()
    for name in ("password", "authorization", "cookie", "x_forwarded_for", "token"):
        assert name in names
    for name in ("x-twilio-signature", "stream_token", "from", "to", "email", "api_key"):
        assert name in names


def test_scrubber_redacts_a_whole_event():
    event = {
        "message": "call +15550100001 failed",
        "logentry": {"message": "user %s", "params": ["alice@example.com"]},
        "exception": {
            "values": [
                {
                    "type": "RuntimeError",
                    "value": "token=abc123 for 203.0.113.7",
                    "stacktrace": {
                        "frames": [
                            {
                                "vars": {"stream_token": "abc123", "caller": "'+15550100002'"},
                                "context_line": '    phone = "+15550100001"',
                            }
                        ]
                    },
                }
            ]
        },
        "request": {"headers": {"Authorization": "Bearer abc123", "Host": "gw"}},
        "breadcrumbs": {"values": [{"message": "from +15550100001", "data": {"api_key": "k"}}]},
    }
    out = sentry.scrubber(b"key")(event, {})
    text = orjson.dumps(out).decode()
    for leak in ("5550100001", "5550100002", "alice@", "abc123", "203.0.113.7", '"k"'):
        assert leak not in text, leak
    assert out["request"]["headers"]["Host"] == "gw"


def probe_envelopes() -> list[bytes]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.metrics.sentry_probe"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "send_default_pii=False" in result.stderr
    return [base64.b64decode(line) for line in result.stdout.split()]


def test_events_sent_to_sentry_carry_no_personal_data():
    envelopes = probe_envelopes()
    items = [
        orjson.loads(line)
        for envelope in envelopes
        for line in envelope.splitlines()[1:]
        if line.startswith(b"{") and b'"type"' not in line[:10]
    ]
    events = [i for i in items if "exception" in i or "message" in i or "logentry" in i]
    # The exception, and the message; the error log line of the same exception is deduplicated.
    assert len(events) >= 2, items
    exception = next(e for e in events if "exception" in e)
    (value,) = exception["exception"]["values"]
    assert value["type"] == "RuntimeError"
    assert "+1********01" in value["value"]  # masked, not dropped: still useful to read
    frames = value["stacktrace"]["frames"]
    assert any(f.get("vars") for f in frames)  # local variables were captured ...
    breadcrumbs = exception["breadcrumbs"]["values"]
    assert any("incoming call" in (b.get("message") or "") for b in breadcrumbs)

    raw = b"\n".join(envelopes)
    national = sentry_probe.PHONE.removeprefix("+1").encode()
    secrets = [
        national,  # ... but no phone number,
        sentry_probe.EMAIL.encode(),  # no email,
        sentry_probe.EMAIL.split("@")[0].encode(),
        sentry_probe.TOKEN.encode(),  # no token,
        sentry_probe.CLIENT_IP.encode(),  # no client address,
        b"c2lnbmF0dXJl",  # no carrier signature
    ]
    for secret in secrets:
        assert secret not in raw, secret

    # The failing route's event has its request, without body, cookies or credentials.
    routed = next(e for e in events if "cannot route call" in orjson.dumps(e).decode())
    request = routed["request"]
    assert not request.get("data") and not request.get("cookies")  # no body, no cookies
    assert request["url"].endswith("/webhooks/twilio/voice")
