"""Run as ``python -m tests.metrics.sentry_probe``: starts Sentry through ``metrics.sentry.init``
with an in-memory transport, reports an exception, an error log line and an uncaught error
from a starlette route, all full of personal data and credentials, and prints every envelope
the SDK would have sent (one base64 line each) on stdout.

A subprocess, so the SDK's global integrations never touch the rest of the test suite."""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
from typing import Any

import httpx
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from metrics import sentry

PHONE = "+15550100001"
EMAIL = "caller.person@example.com"
TOKEN = "sk-probe-4f9c2a7be1d04e55"
CLIENT_IP = "203.0.113.77"
DSN = "https://public@sentry.invalid/1"


class MemoryTransport(Transport):
    """Keeps envelopes instead of sending them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def fail_with_personal_data(to: str, email: str, api_key: str) -> None:
    caller = {"from": to, "email": email, "client_ip": CLIENT_IP, "note": f"call {to}"}
    headers = {"Authorization": f"Bearer {api_key}", "X-Twilio-Signature": "c2lnbmF0dXJl"}
    stream_token = api_key
    raise RuntimeError(
        f"provider refused {to} ({email}) from {CLIENT_IP} with token={stream_token} "
        f"{caller!r} {headers!r}"
    )


async def post_to_a_failing_route() -> None:
    """A webhook-shaped POST (body, signature, cookie, forwarded address) to a route that
    raises: the starlette integration reports it with the request attached."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def voice(request: Request) -> Response:
        form = await request.form()
        raise RuntimeError(f"cannot route call from {form['From']}")

    app = Starlette(routes=[Route("/webhooks/twilio/voice", voice, methods=["POST"])])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        await http.post(
            f"/webhooks/twilio/voice?token={TOKEN}",
            data={"From": PHONE, "To": "+15550100002", "Email": EMAIL},
            headers={
                "X-Twilio-Signature": "c2lnbmF0dXJl",
                "Authorization": f"Bearer {TOKEN}",
                "Cookie": f"session={TOKEN}",
                "X-Forwarded-For": CLIENT_IP,
            },
        )


def main() -> int:
    transport = MemoryTransport()
    started = sentry.init(DSN, environment="test", ip_hash_key=b"probe-key", transport=transport)
    assert started
    log = logging.getLogger("voicegw.probe")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    log.info("incoming call from %s <%s> at %s", PHONE, EMAIL, CLIENT_IP)
    try:
        fail_with_personal_data(PHONE, EMAIL, TOKEN)
    except RuntimeError:
        sentry_sdk.capture_exception()
        log.exception("call failed for %s", PHONE, extra={"to": PHONE, "api_key": TOKEN})
    sentry_sdk.capture_message(f"plain message about {PHONE} and {EMAIL} token={TOKEN}")
    asyncio.run(post_to_a_failing_route())
    sentry_sdk.flush()
    client = sentry_sdk.get_client()
    print(f"options send_default_pii={client.options['send_default_pii']!r}", file=sys.stderr)
    for envelope in transport.envelopes:
        print(base64.b64encode(envelope.serialize()).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
