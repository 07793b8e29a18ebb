"""The compliance report of a seeded deployment, end to end through the real app (SQLite in a
temporary directory): calls through signed webhooks, an export and an erasure through the
API, a retention sweep, ``voicegw audit verify``, and rejected webhooks of every layer. The
report must count exactly those, hold none of the personal data that went in, answer only
auditors and admins, and say the same from ``voicegw compliance report`` in both formats."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway import devkeys
from gateway.cli.admin import create_api_key
from gateway.cli.main import main
from gateway.compliance import build_report
from gateway.records.base import AuditQuery, CallRecord, Role
from gateway.records.privacy import DAY_S, RETENTION_RUN, RetentionPeriods, RetentionSweeper
from security.secret import Secret
from tests.gateway.conftest import Gateway, call_control_id, call_sid, telnyx_event
from tests.gateway.test_calls import eventually
from tests.sessions.harness import CORS, PUBLIC_URL, Gw, running

SUBJECT = "+14155550123"
OTHER = "+14155559876"
PERSONAL = (SUBJECT, "4155550123", "555-0123", "5550123", OTHER, "4155559876", "5559876")
OUTSIDER = "203.0.113.9"
LIMIT = 3  # verified webhooks per carrier per minute, so a fourth is rate limited
ENV = {"VOICEGW_RATE_LIMIT_PER_MINUTE": str(LIMIT)}
LAYER_COUNTS = {
    "request": 1,
    "allowlist": 1,
    "freshness": 1,
    "signature": 1,
    "replay": 1,
    "rate_limit": 1,
}


@dataclasses.dataclass
class Seeded:
    gw: Gw
    auditor_key: str
    call_sid: str
    erasure_id: str


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment ``voicegw`` reads, describing the same deployment as the app."""
    env = {
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": PUBLIC_URL,
        "VOICEGW_CORS_ORIGINS": ",".join(CORS),
        **ENV,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield


async def voicegw(*argv: str) -> int:
    """Run the ``voicegw`` command (its own event loop, in a thread)."""
    return await asyncio.to_thread(main, list(argv))


async def reject_one_of_each_layer(carrier: Gateway) -> str:
    """A signed call (the subject calls), then one rejection per layer. Returns the CallSid."""
    sid = call_sid()
    params = {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": SUBJECT, "To": OTHER}
    assert (await carrier.twilio("/webhooks/twilio/voice", params)).status_code == 200
    # replay: the same delivery again is answered, not processed again
    assert (await carrier.twilio("/webhooks/twilio/voice", params)).status_code == 200
    # signature
    wrong = carrier.twilio_signature("/webhooks/twilio/voice", {**params, "To": SUBJECT})
    forged = await carrier.twilio("/webhooks/twilio/voice", params, signature=wrong)
    assert forged.status_code == 403
    # allowlist
    async with carrier.client_from(OUTSIDER) as outside:
        assert (
            await carrier.twilio("/webhooks/twilio/voice", params, http=outside)
        ).status_code == 403
    # freshness: a Telnyx event signed ten minutes ago
    stale = telnyx_event("call.bridged", call_control_id())
    assert (await carrier.telnyx(stale, timestamp=int(time.time()) - 600)).status_code == 403
    # request: not JSON
    plain = [("content-type", "text/plain")]
    assert (await carrier.telnyx(b"hello", headers=plain)).status_code == 415
    # rate limit: the fourth verified Telnyx delivery within a minute
    for _ in range(LIMIT):
        ok = await carrier.telnyx(telnyx_event("call.bridged", call_control_id()))
        assert ok.status_code == 200
    limited = await carrier.telnyx(telnyx_event("call.bridged", call_control_id()))
    assert limited.status_code == 429
    return sid


async def retention_sweep(gw: Gw) -> None:
    """A call record past its retention, removed by a sweep (after the gateway's own first
    pass, so that pass cannot take it first)."""
    store = gw.runtime.store

    async def first_pass() -> bool:
        return await store.get_last_run(RETENTION_RUN) is not None

    await eventually(first_pass, "the gateway's first retention pass")
    old = time.time() - 40 * DAY_S
    await store.put_call(CallRecord("call_old", "twilio", "CAold", started_at=old))
    sweeper = RetentionSweeper(store, RetentionPeriods(), gw.runtime.auditor)
    assert (await sweeper.sweep_once()).calls == 1


@pytest.fixture
async def seeded(tmp_path: Path, cli_env: None) -> AsyncIterator[Seeded]:
    async with running(tmp_path, env=ENV) as gw:
        for role in Role:
            await gw.user(f"{role.value}-user", role)
        new, _ = await create_api_key(gw.store, "dsr-desk", Role.AUDITOR)
        bearer = {"Authorization": f"Bearer {new.token}"}
        async with gw.client() as http:
            carrier = Gateway(
                app=gw.app,
                runtime=gw.runtime,
                settings=gw.settings,
                keys=devkeys.load_or_create(gw.settings.data_dir),
                http=http,
            )
            sid = await reject_one_of_each_layer(carrier)
            subject = "/api/v1/users/%2B14155550123"
            exported = await http.get(f"{subject}/data", headers=bearer)
            assert exported.status_code == 200 and len(exported.json()["calls"]) == 1
            erased = await http.post(f"{subject}/delete", headers=bearer)
            assert erased.status_code == 200 and erased.json()["calls_anonymised"] == 1
        await retention_sweep(gw)
        assert await voicegw("audit", "verify") == 0
        yield Seeded(gw, new.token, sid, erased.json()["request_id"])


async def get_report(seeded: Seeded, query: str = "") -> httpx.Response:
    async with seeded.gw.client() as http:
        return await http.get(
            f"/api/v1/compliance/report{query}",
            headers={"Authorization": f"Bearer {seeded.auditor_key}"},
        )


def assert_no_personal_data(text: str, seeded: Seeded) -> None:
    gw = seeded.gw
    forbidden = (
        *PERSONAL,
        OUTSIDER,
        "127.0.0.1",
        gw.runtime.blind_index.of(SUBJECT),
        seeded.call_sid,
        *(f"{role.value}-user" for role in Role),
        "dsr-desk",
    )
    for value in forbidden:
        assert value not in text, value


async def test_the_report_counts_what_happened(seeded: Seeded) -> None:
    response = await get_report(seeded)
    assert response.status_code == 200
    report = response.json()
    evidence = report["evidence"]

    rejections = evidence["webhook_rejections"]
    assert rejections["by_layer"] == LAYER_COUNTS and rejections["total"] == 6
    assert rejections["by_carrier"]["twilio"] == {
        **dict.fromkeys(LAYER_COUNTS, 0),
        "signature": 1,
        "allowlist": 1,
        "replay": 1,
    }
    assert rejections["by_carrier"]["telnyx"] == {
        **dict.fromkeys(LAYER_COUNTS, 0),
        "request": 1,
        "freshness": 1,
        "rate_limit": 1,
    }

    requests = evidence["subject_requests"]
    for kind in ("export", "erase"):
        served = requests[kind]
        assert (served["served"], served["failed"], served["timed"]) == (1, 0, 1), kind
        assert 0 <= served["latency_p50_ms"] == served["latency_max_ms"] < 60_000

    verification = evidence["audit_trail"]["last_verification"]
    assert verification["outcome"] == "success" and verification["first_bad_seq"] is None
    assert verification["events"] > 0 and verification["events_since"] >= 0
    assert evidence["audit_trail"]["write_failures_this_process"] == 0
    assert evidence["retention"]["last_run"]["outcome"] == "success"
    assert evidence["retention"]["last_run"]["calls"] == 1
    assert evidence["retention"]["deleted_in_window"]["calls"] == 1
    assert evidence["access"] == {
        "active_users": {"admin": 1, "operator": 1, "auditor": 1, "dialer": 1},
        "usable_api_keys": {"admin": 0, "operator": 0, "auditor": 1, "dialer": 0},
    }
    keys = evidence["key_ages"]
    assert keys["available"] and {k["kind"] for k in keys["keys"]} >= {"signing", "data", "api"}
    assert all(k["rotation_due_in_days"] <= 90 for k in keys["keys"] if k["status"] == "active")

    enabled = {c["id"]: c["enabled"] for c in report["controls"]}
    # What this deployment does: people to serve requests, a sweeper that runs, a verified
    # chain; and what it does not: development keys, no metrics token.
    for control in ("gdpr-15", "gdpr-17", "gdpr-20", "gdpr-5-1-e", "hipaa-164-312-c"):
        assert enabled[control], control
    for control in ("gdpr-32", "hipaa-164-312-a-2-iv", "soc2-cc7-2"):
        assert not enabled[control], control
    assert report["summary"]["GDPR"]["controls"] == 7
    assert_no_personal_data(response.text, seeded)

    # Reading the report is audited, by who read it.
    [event] = await seeded.gw.runtime.store.query_audit(AuditQuery(action="compliance.report"))
    assert (event.outcome, event.role, event.entity_id) == ("success", "auditor", "json")


async def test_flipping_a_setting_flips_its_control(seeded: Seeded) -> None:
    gw = seeded.gw

    async def enabled(**change: Any) -> dict[str, bool]:
        settings = dataclasses.replace(gw.settings, **change)
        report = await build_report(settings, gw.runtime.store)
        return {c["id"]: c["enabled"] for c in report["controls"]}

    before = await enabled()
    assert before["gdpr-5-1-c"] and not before["soc2-cc7-2"]
    after = await enabled(metrics_token=Secret("m" * 32), recording=True, recording_consent="all")
    assert after["soc2-cc7-2"] and not after["gdpr-5-1-c"]
    assert {k for k in before if before[k] != after[k]} == {"soc2-cc7-2", "gdpr-5-1-c"}


async def test_markdown_tables(seeded: Seeded) -> None:
    response = await get_report(seeded, "?format=markdown")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    text = response.text
    for heading in (
        "# voicegw compliance evidence report",
        "## GDPR",
        "## HIPAA technical safeguards (45 CFR 164.312)",
        "## SOC 2 (CC6 logical access, CC7 system operations)",
        "### Webhook rejections by layer (last 24 h",
        "## Record of processing (GDPR Art. 30)",
    ):
        assert heading in text, heading
    assert "| signature | 1 | 0 | 1 |" in text  # layer | twilio | telnyx | total
    assert "| rate_limit | 0 | 1 | 1 |" in text
    assert "| export | 1 | 0 |" in text and "| erase | 1 | 0 |" in text
    assert "| Art. 17 | Right to erasure |" in text
    assert_no_personal_data(text, seeded)
    assert (await get_report(seeded, "?format=pdf")).status_code == 400


async def test_auditors_and_admins_only(seeded: Seeded) -> None:
    gw = seeded.gw
    for role, status in ((Role.ADMIN, 200), (Role.AUDITOR, 200), (Role.OPERATOR, 403)):
        async with gw.client() as http:
            assert (await gw.login(http, f"{role.value}-user")).status_code == 200
            got = await http.get("/api/v1/compliance/report")
            assert got.status_code == status, role
    async with gw.client() as http:
        assert (await http.get("/api/v1/compliance/report")).status_code == 401
        garbage = {"Authorization": f"Bearer vgk_{uuid.uuid4().hex[:12]}_x"}
        assert (await http.get("/api/v1/compliance/report", headers=garbage)).status_code == 401


async def test_the_command_in_both_formats(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    api = (await get_report(seeded)).json()  # also writes the counts not yet flushed
    capsys.readouterr()
    assert await voicegw("compliance", "report", "--format", "json") == 0
    out = capsys.readouterr().out
    cli = orjson.loads(out)
    assert cli["format"] == api["format"] == "voicegw.compliance-report.v1"
    for section in ("webhook_rejections", "subject_requests", "access"):
        cli_section, api_section = cli["evidence"][section], api["evidence"][section]
        cli_section.pop("since", None), api_section.pop("since", None)
        assert cli_section == api_section, section
    assert cli["evidence"]["audit_trail"]["write_failures_this_process"] is None
    assert [c["id"] for c in cli["controls"]] == [c["id"] for c in api["controls"]]
    assert_no_personal_data(out, seeded)

    assert await voicegw("compliance", "report") == 0  # Markdown by default
    markdown = capsys.readouterr().out
    assert markdown.startswith("# voicegw compliance evidence report\n")
    assert "| signature | 1 | 0 | 1 |" in markdown
    assert_no_personal_data(markdown, seeded)

    assert await voicegw("compliance", "report", "--window-days", "0") == 2
