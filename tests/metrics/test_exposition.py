"""After a simulated call through a real gateway, ``/metrics`` shows every family the gateway
updates with a non-zero value, and ``promtool check metrics`` finds nothing to report."""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import subprocess
from collections.abc import Iterable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UNIT
from tests.e2e.carrier import (
    Gateway,
    caller_audio,
    free_port,
    place_call,
    post_twilio,
    twilio_params,
)

pytestmark = pytest.mark.e2e

FORGED = base64.b64encode(bytes(20)).decode()  # well-formed HMAC-SHA1 length, wrong value

Sample = tuple[str, frozenset[tuple[str, str]]]

# Authentication failures are counted when a request fails authentication, which this call
# does not do; the agents' families when the agent uses a tool, transfers or hangs up, which an
# echo call does not (tests/agents); call commands when the API gives one (tests/e2e).
NOT_YET_UPDATED = frozenset(
    {
        "voicegw_auth_failures",
        "voicegw_tool_calls",
        "voicegw_tool_call_seconds",
        "voicegw_transfers",
        "voicegw_agent_ended_calls",
        "voicegw_call_commands",
        "voicegw_dials_placed",  # outbound calls: tests/e2e/test_outbound.py, test_toll_fraud.py
        "voicegw_dials_blocked",
    }
)
# Updated only on faults: Redis failing (tests/security/test_replay.py, test_ratelimit.py), an
# audit flood (tests/security/test_audit.py), a refused endpoint (tests/security/test_egress.py).
FAULT_ONLY = frozenset(
    {"voicegw_state_fallback", "voicegw_audit_events_suppressed", "voicegw_egress_refused"}
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is needed to check the exposition and is not on PATH: install Debian's "
            "`prometheus` package (apt-get install prometheus); ./scripts/test does this"
        )
    return path


def parse(text: str) -> dict[Sample, float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def grew(before: dict[Sample, float], after: dict[Sample, float], names: Iterable[str]) -> set[str]:
    """The names whose summed value did not grow between the two scrapes."""
    return {name for name in names if total(after, name) <= total(before, name)}


async def scrape(gw: Gateway) -> str:
    async with httpx.AsyncClient(base_url=gw.url, timeout=5 * UNIT) as http:
        reply = await http.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return reply.text


async def new_call_webhook(gw: Gateway) -> int:
    params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
    return (await post_twilio(gw, "/webhooks/twilio/voice", params)).status_code


async def test_a_call_fills_the_call_webhook_media_and_provider_families(make_gateway):
    # OpenAI first, on a port nobody listens on: the call fails over to echo at set-up.
    gw = await make_gateway(
        "openai,echo",
        VOICEGW_OPENAI_REALTIME_URL=f"ws://127.0.0.1:{free_port()}/v1/realtime",
        VOICEGW_RATE_LIMIT_PER_MINUTE="4",
    )
    before = parse(await scrape(gw))

    # One call, streamed at real-time pace and echoed back.
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(40))
    await leg.wait_audio(10)
    await leg.send_raw("not a media frame")  # dropped as malformed
    during = parse(await scrape(gw))
    assert total(during, "voicegw_active_calls", carrier="twilio", provider="echo") >= 1
    await leg.stop()
    await gw.wait_ended(leg.ticket)

    # A delivered twice (duplicate), one forged (signature), then over the limit (rate limit).
    params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
    assert (await post_twilio(gw, "/webhooks/twilio/voice", params)).status_code == 200
    assert (await post_twilio(gw, "/webhooks/twilio/voice", params)).status_code == 200
    async with httpx.AsyncClient(base_url=gw.url, timeout=5 * UNIT) as http:
        forged = await http.post(
            "/webhooks/twilio/voice", data=params, headers={"X-Twilio-Signature": FORGED}
        )
    assert forged.status_code == 403, forged.text
    statuses = [await new_call_webhook(gw) for _ in range(4)]
    assert 429 in statuses, statuses

    text = await scrape(gw)
    after = parse(text)

    # The families of the call, webhook, media and provider paths all moved.
    assert not grew(
        before,
        after,
        [
            "voicegw_calls_total",
            "voicegw_call_duration_seconds_count",
            "voicegw_webhook_requests_total",
            "voicegw_webhook_rejections_total",
            "voicegw_webhook_duplicates_total",
            "voicegw_rate_limited_total",
            "voicegw_http_request_duration_seconds_count",
            "voicegw_media_frames_total",
            "voicegw_media_relay_seconds_count",
            "voicegw_media_frames_dropped_total",
            "voicegw_provider_connect_seconds_count",
            "voicegw_provider_errors_total",
            "voicegw_failovers_total",
        ],
    )
    assert total(after, "voicegw_calls_total", carrier="twilio", provider="echo") > total(
        before, "voicegw_calls_total", carrier="twilio", provider="echo"
    )
    for direction in ("from_carrier", "to_carrier"):
        assert total(after, "voicegw_media_frames_total", direction=direction) > total(
            before, "voicegw_media_frames_total", direction=direction
        )
        assert total(after, "voicegw_media_relay_seconds_count", direction=direction) > 0
    assert total(after, "voicegw_webhook_rejections_total", layer="signature") > 0
    assert total(after, "voicegw_provider_errors_total", provider="openai", kind="connect") > 0
    assert total(after, "voicegw_failovers_total", from_provider="openai", to_provider="echo") > 0
    assert total(after, "voicegw_provider_up", provider="echo") == 1
    assert (
        "voicegw_breaker_state",
        frozenset({("provider", "echo")}),
    ) in after  # 0: closed
    assert total(after, "voicegw_active_calls", carrier="twilio", provider="echo") == 0
    assert total(after, "voicegw_build_info") == 1

    # Every family is exposed; only the later and the Redis-failure ones may have no sample.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    empty = {name for name, f in families.items() if not f.samples}
    assert empty <= NOT_YET_UPDATED | FAULT_ONLY, empty - NOT_YET_UPDATED - FAULT_ONLY
    assert total(after, "voicegw_media_frames_dropped_total", reason="malformed") > 0

    # No label carries a phone number, a call id or an address.
    for (_, labels), _value in after.items():
        for _, value in labels:
            assert "+1555" not in value and "CA" not in value[:2] and "127.0.0.1" not in value


async def test_promtool_finds_nothing_in_the_exposition(make_gateway):
    gw = await make_gateway("echo")
    leg = await place_call(gw, "telnyx")
    await leg.play(caller_audio(10))
    await leg.stop()
    await gw.wait_ended(leg.ticket)
    text = await scrape(gw)
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"promtool check metrics:\n{findings}"
