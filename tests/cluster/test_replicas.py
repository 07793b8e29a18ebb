"""Three replicas sharing one Redis and one PostgreSQL behave as one gateway: one rate limit,
one replay cache, one session revocation list, one breaker per provider, one live-call
registry, one store and one audit chain. Real processes, real HTTP and WebSockets on loopback.

The tests share the replicas (started once for the module) and run in file order. The rate
limit is per carrier per rolling minute for the whole cluster, so Telnyx webhooks are spent
only by the rate-limit test and every other test uses Twilio (well under the limit). The
breaker test comes before the tests that stream calls, since each streamed call tries the
refusing OpenAI endpoint while its breaker is closed; the last test stops the replicas.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from gateway.cli.simulate import post_telnyx
from providers.breakers import DEFAULT_POLICY
from tests.cluster.harness import (
    RATE_LIMIT,
    TRANSFER_TO,
    USER,
    Cluster,
    Replica,
    metric,
    report,
)
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Leg,
    answer,
    open_stream,
    post_twilio,
    telnyx_event,
    twilio_params,
)
from tests.sessions.harness import PASSWORD

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.e2e,
    pytest.mark.redis,
]

QUIET = bytes([0xFE]) * 160  # 20 ms of near-silence: the echo agent echoes it all
VOICE = "/webhooks/twilio/voice"


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def voice_params(call_sid: str) -> dict[str, str]:
    return twilio_params(call_sid, "AC" + secrets.token_hex(16))


async def call_ids(cluster: Cluster, call_sids: list[str]) -> dict[str, str]:
    """The gateway's call id of each Twilio CallSid, from the shared store."""
    rows = await cluster.sql(
        "SELECT carrier_call_id, call_id FROM calls WHERE carrier_call_id = ANY(%s)", call_sids
    )
    return {sid: call_id for sid, call_id in rows}


async def stream_call(replica: Replica) -> Leg:
    """A Twilio call answered and streamed by ``replica``, with audio echoed back."""
    leg = await open_stream(replica.gateway, await answer(replica.gateway, "twilio"))
    await leg.play(QUIET * 3, realtime=False)
    await leg.wait_audio(3)
    return leg


# -- webhooks ---------------------------------------------------------------------------------


async def test_the_rate_limit_holds_exactly_across_three_replicas(cluster: Cluster):
    replicas = cluster.replicas

    async def deliver(i: int) -> tuple[str, httpx.Response]:
        replica = replicas[i % len(replicas)]
        body = telnyx_event("call.hangup", "v3:" + secrets.token_urlsafe(24))
        return replica.name, await post_telnyx(cluster.http(replica), cluster.telnyx_keys, body)

    # Exactly the limit, all at once, round-robin over the replicas: none refused.
    first = await asyncio.gather(*(deliver(i) for i in range(RATE_LIMIT)))
    assert [r.status_code for _, r in first] == [200] * RATE_LIMIT, [r.text for _, r in first]
    # Twice as many more, all at once: every one refused, on every replica.
    extra = await asyncio.gather(*(deliver(i) for i in range(2 * RATE_LIMIT)))
    assert [r.status_code for _, r in extra] == [429] * (2 * RATE_LIMIT)
    assert all(int(r.headers["Retry-After"]) > 0 for _, r in extra)

    # Each replica's own accounting adds up to the same figures.
    accepted, limited = [], []
    for replica in replicas:
        samples = await cluster.metrics(replica)
        accepted.append(
            metric(samples, "voicegw_webhook_requests_total", carrier="telnyx", outcome="accepted")
        )
        limited.append(
            metric(samples, "voicegw_rate_limited_total", carrier="telnyx", scope="carrier")
        )
    assert sum(accepted) == RATE_LIMIT
    assert sum(limited) == 2 * RATE_LIMIT
    assert all(n > 0 for n in accepted) and all(n > 0 for n in limited)

    by_replica = Counter((name, r.status_code) for name, r in first + extra)
    report(
        "rate limit (limit 30/min, Telnyx, 3 replicas)",
        f"tried {3 * RATE_LIMIT}, accepted {RATE_LIMIT}, refused {2 * RATE_LIMIT} (429); "
        "per replica accepted/refused "
        + ", ".join(
            f"{r.name} {by_replica[r.name, 200]}/{by_replica[r.name, 429]}" for r in replicas
        ),
    )


async def test_a_webhook_accepted_by_one_replica_is_a_duplicate_on_the_others(cluster: Cluster):
    replicas = cluster.replicas

    async def counts() -> list[tuple[float, float]]:
        out = []
        for replica in replicas:
            s = await cluster.metrics(replica)
            out.append(
                (
                    metric(
                        s, "voicegw_webhook_requests_total", carrier="twilio", outcome="accepted"
                    ),
                    metric(s, "voicegw_webhook_duplicates_total", carrier="twilio"),
                )
            )
        return out

    async def deliver(replica: Replica, params: dict[str, str]) -> httpx.Response:
        # The same signed request each time, as a carrier retry or a captured replay would be.
        reply = await post_twilio(replica.url, VOICE, params, public_url=cluster.public_url)
        assert reply.status_code == 200, reply.text
        return reply

    # One after another: replica a processes it, b and c recognise it.
    sequential = voice_params(new_call_sid())
    before = await counts()
    for replica in replicas:
        await deliver(replica, sequential)
    after = await counts()
    deltas = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
    assert deltas == [(1, 0), (0, 1), (0, 1)]

    # All three at once: exactly one of them processes it.
    concurrent = voice_params(new_call_sid())
    before = after
    await asyncio.gather(*(deliver(r, concurrent) for r in replicas))
    after = await counts()
    assert sum(a[0] - b[0] for a, b in zip(after, before, strict=True)) == 1
    assert sum(a[1] - b[1] for a, b in zip(after, before, strict=True)) == 2

    # The durable effect: one call record per delivery set, not three.
    sids = [sequential["CallSid"], concurrent["CallSid"]]
    rows = await cluster.sql(
        "SELECT carrier_call_id, count(*) FROM calls WHERE carrier_call_id = ANY(%s) "
        "GROUP BY carrier_call_id",
        sids,
    )
    assert dict(rows) == {sid: 1 for sid in sids}
    report(
        "replay across replicas (Twilio voice webhook)",
        "sequential a->b->c: 3 deliveries, 1 processed, 2 duplicates; "
        "concurrent a+b+c: 3 deliveries, 1 processed, 2 duplicates; 1 call record each",
    )


# -- sessions ---------------------------------------------------------------------------------


async def test_a_logout_on_one_replica_rejects_the_session_on_the_others(cluster: Cluster):
    a, b, c = cluster.replicas
    origin = {"Origin": cluster.public_url}
    login = await cluster.http(a).post(
        "/auth/login", json={"username": USER, "password": PASSWORD}, headers=origin
    )
    assert login.status_code == 200, login.text
    cookies = {name: login.cookies[name] for name in login.cookies}
    assert {"voicegw_access", "voicegw_csrf", "voicegw_refresh"} <= cookies.keys()
    jar = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    unsafe = {**origin, **jar, "X-CSRF-Token": cookies["voicegw_csrf"]}

    async def session_on(replica: Replica) -> int:
        return (await cluster.http(replica).get("/auth/session", headers=jar)).status_code

    # The session minted by a is good on b and c (shared signing key, shared store).
    assert [await session_on(r) for r in (a, b, c)] == [200, 200, 200]

    logout = await cluster.http(a).post("/auth/logout", headers=unsafe)
    assert logout.status_code == 204
    logged_out = time.monotonic()
    # The first request after the logout is refused on every replica: the revocation is in
    # Redis before the logout answers, so there is nothing to wait for.
    statuses = [await session_on(r) for r in (b, c, a)]
    elapsed_ms = (time.monotonic() - logged_out) * 1000
    assert statuses == [401, 401, 401]
    calls = await cluster.http(b).get("/api/v1/calls", headers=jar)
    assert calls.status_code == 401
    # Nor can the refresh token start the session again on another replica.
    refresh = await cluster.http(c).post("/auth/refresh", headers=unsafe)
    assert refresh.status_code == 401
    report(
        "logout across replicas",
        f"logout on a; session refused on b, c and a on the first request after it "
        f"({elapsed_ms:.0f} ms for the three checks); refresh on c refused",
    )


# -- breakers ---------------------------------------------------------------------------------


async def openai_breaker(cluster: Cluster, replica: Replica) -> dict[str, Any]:
    body = await cluster.api(replica, "/api/v1/providers")
    return next(p for p in body["providers"] if p["name"] == "openai")


async def test_a_breaker_opened_on_one_replica_is_open_on_the_others(cluster: Cluster):
    a, b, c = cluster.replicas
    threshold = DEFAULT_POLICY.failure_threshold
    start = await openai_breaker(cluster, a)
    assert start["state"] == "closed", "an earlier test opened the breaker: run in file order"
    attempts = cluster.refuser.attempts

    # Calls on replica a only: each tries OpenAI (refused), then echo takes it.
    placed_on_a = 0
    while (await openai_breaker(cluster, a))["state"] != "open":
        assert placed_on_a < threshold, "the breaker did not open at the threshold"
        await (await stream_call(a)).stop()
        placed_on_a += 1
    assert cluster.refuser.attempts - attempts == placed_on_a
    assert start["consecutive_failures"] + placed_on_a == threshold

    # b and c see it open on their first look, and act on it: their calls go straight to echo
    # without trying OpenAI.
    seen = [await openai_breaker(cluster, r) for r in (b, c)]
    assert [s["state"] for s in seen] == ["open", "open"]
    assert all(s["last_failure"] for s in seen)
    for replica in (b, c):
        await (await stream_call(replica)).stop()
    assert cluster.refuser.attempts - attempts == placed_on_a
    report(
        "breaker across replicas (OpenAI refusing, threshold 5)",
        f"opened by {placed_on_a} failed connects from calls on a "
        f"({start['consecutive_failures']} earlier); b and c read it open at once and sent "
        "0 connects to OpenAI for their calls (echo took them)",
    )


# -- calls ------------------------------------------------------------------------------------


async def test_the_live_call_registry_lists_calls_from_every_replica(cluster: Cluster):
    legs = [(replica, await stream_call(replica)) for replica in cluster.replicas]
    ids = await call_ids(cluster, [leg.ticket.call_id for _, leg in legs])
    assert len(ids) == len(legs)

    for viewer in cluster.replicas:
        live = {c["call_id"]: c for c in (await cluster.api(viewer, "/api/v1/calls"))["live"]}
        for holder, leg in legs:
            entry = live[ids[leg.ticket.call_id]]
            assert entry["state"] == "streaming"
            assert entry["provider"] == "echo"
            assert holder.holds(entry["replica"]), (holder.name, entry["replica"])

    # Calls that end leave every replica's list.
    for _, leg in legs:
        await leg.stop()
    deadline = time.monotonic() + 5 * UNIT
    for viewer in cluster.replicas:
        while True:
            live = {c["call_id"] for c in (await cluster.api(viewer, "/api/v1/calls"))["live"]}
            if not live & set(ids.values()):
                break
            assert time.monotonic() < deadline, f"ended calls still listed on {viewer.name}"
            await asyncio.sleep(0.05)
    report(
        "live-call registry across replicas",
        "3 streaming calls, one per replica: each replica's /api/v1/calls listed all 3 with "
        "the replica holding each; after hang-up none listed anywhere",
    )


async def test_call_records_written_by_each_replica_are_visible_from_every_replica(
    cluster: Cluster,
):
    sids = []
    for replica in cluster.replicas:
        params = voice_params(new_call_sid())
        reply = await post_twilio(replica.url, VOICE, params, public_url=cluster.public_url)
        assert reply.status_code == 200, reply.text
        sids.append(params["CallSid"])
    ids = await call_ids(cluster, sids)
    assert len(ids) == len(sids)
    # The replica that took each webhook wrote its record (and holds the call).
    live = {
        c["call_id"]: c for c in (await cluster.api(cluster.replicas[0], "/api/v1/calls"))["live"]
    }
    for replica, sid in zip(cluster.replicas, sids, strict=True):
        assert replica.holds(live[ids[sid]]["replica"])

    for viewer in cluster.replicas:
        recent = (await cluster.api(viewer, "/api/v1/calls?limit=1000"))["recent"]
        assert set(ids.values()) <= {r["call_id"] for r in recent}, viewer.name
    # No replica stored a number in clear.
    stored = await cluster.sql(
        "SELECT from_number, to_number FROM calls WHERE call_id = ANY(%s)", list(ids.values())
    )
    assert len(stored) == len(sids)
    assert all(b"5550100" not in bytes(value or b"") for row in stored for value in row)
    report(
        "PostgreSQL records across replicas",
        "3 calls, one webhook per replica: each replica's /api/v1/calls showed all 3 records; "
        "numbers encrypted at rest",
    )


# -- commands on live calls -------------------------------------------------------------------


async def test_hangup_and_transfer_work_from_a_replica_that_does_not_hold_the_call(
    cluster: Cluster,
):
    holder, other = cluster.replicas[0], cluster.replicas[1]
    bearer = {"Authorization": f"Bearer {cluster.api_token}"}
    hung, moved = await stream_call(holder), await stream_call(holder)
    ids = await call_ids(cluster, [hung.ticket.call_id, moved.ticket.call_id])
    hung_id, moved_id = ids[hung.ticket.call_id], ids[moved.ticket.call_id]
    http = cluster.http(other)

    reply = await http.post(f"/api/v1/calls/{hung_id}/hangup", headers=bearer)
    assert reply.status_code == 200, reply.text
    # The holder's Bridge ended it (closing the stream), not a REST call from elsewhere.
    await hung.wait_closed()
    # The holder closes the record once the stream has ended: wait for it, bounded.
    deadline = time.monotonic() + 5 * UNIT
    while (detail := await cluster.api(other, f"/api/v1/calls/{hung_id}"))["call"][
        "outcome"
    ] is None:
        assert time.monotonic() < deadline, "the hung-up call's record was not closed"
        await asyncio.sleep(0.05)
    assert detail["call"]["outcome"] == "operator_hangup"

    path = f"/api/v1/calls/{moved_id}/transfer"
    unknown = await http.post(path, headers=bearer, json={"destination": "sales"})
    assert unknown.status_code == 422, unknown.text
    reply = await http.post(path, headers=bearer, json={"destination": "billing"})
    assert reply.status_code == 200, reply.text
    await moved.wait_closed()
    assert moved.close_code == 1000
    (update,) = [
        r for r in cluster.rest.requests_for("twilio") if r.call_id == moved.ticket.call_id
    ]
    assert f"<Number>{TRANSFER_TO}</Number>" in update.form()["Twiml"]
    deadline = time.monotonic() + 5 * UNIT
    while (await cluster.api(other, f"/api/v1/calls/{moved_id}"))["call"]["outcome"] is None:
        assert time.monotonic() < deadline, "the transferred call's record was not closed"
        await asyncio.sleep(0.05)
    detail = await cluster.api(holder, f"/api/v1/calls/{moved_id}")
    assert (detail["call"]["outcome"], detail["call"]["transfer_to"]) == ("transferred", "billing")
    report(
        "commands across replicas",
        "2 calls streamed by replica a; replica b hung one up (outcome operator_hangup, the "
        "holder closed its stream) and transferred the other (Twilio <Dial>, outcome "
        "transferred); an unknown destination was refused with 422 through the holder",
    )


# -- audit ------------------------------------------------------------------------------------


async def test_the_audit_chain_stays_verifiable_with_three_writers(cluster: Cluster):
    per_replica_rejections, per_replica_logins = 15, 2
    (before,) = await cluster.sql("SELECT head_seq FROM audit_chain")

    async def forged(replica: Replica) -> int:
        params = voice_params(new_call_sid())
        signature = RequestValidator("not-the-auth-token").compute_signature(
            cluster.public_url + VOICE, params
        )
        reply = await cluster.http(replica).post(
            VOICE, data=params, headers={"X-Twilio-Signature": signature}
        )
        return reply.status_code

    async def login(replica: Replica, username: str) -> int:
        reply = await cluster.http(replica).post(
            "/auth/login",
            json={"username": username, "password": PASSWORD},
            headers={"Origin": cluster.public_url},
        )
        return reply.status_code

    # Every replica appends at once: rejected webhooks, good and failed logins; meanwhile an
    # operator verifies the chain again and again, as ``voicegw audit verify`` would.
    # (Each replica's failed logins use a name of their own: below the lockout, which has
    # tests of its own, so the events appended are exactly the ones counted below.)
    jobs = []
    for i, replica in enumerate(cluster.replicas):
        jobs += [forged(replica) for _ in range(per_replica_rejections)]
        jobs += [login(replica, USER) for _ in range(per_replica_logins)]
        jobs += [login(replica, f"nobody{i}") for _ in range(per_replica_logins)]
    writes = asyncio.gather(*jobs)
    live_checks = []
    async with cluster.store() as store:
        while not writes.done():
            live_checks.append(await cluster.verify_audit(store))
    statuses = Counter(await writes)
    assert all(check.ok for check in live_checks), [c for c in live_checks if not c.ok]
    n = len(cluster.replicas)
    assert statuses == {
        403: n * per_replica_rejections,
        200: n * per_replica_logins,
        401: n * per_replica_logins,
    }

    appended = dict(
        await cluster.sql(
            "SELECT action || ':' || outcome, count(*) FROM audit_events WHERE seq > %s GROUP BY 1",
            before[0],
        )
    )
    assert appended == {
        "webhook.rejected:denied": n * per_replica_rejections,
        "auth.login:success": n * per_replica_logins,
        "auth.login:failure": n * per_replica_logins,
    }
    result = await cluster.verify_audit()
    assert result.ok, result
    report(
        "audit chain with three writers",
        f"{sum(appended.values())} events appended concurrently by 3 replicas; "
        f"{len(live_checks)} verifications during the writes all passed; chain of "
        f"{result.events} events verifies",
    )


async def test_three_replicas_stopping_together_leave_a_verifiable_chain(cluster: Cluster):
    (before,) = await cluster.sql("SELECT head_seq FROM audit_chain")
    codes = await cluster.stop()
    assert all(code in (0, -signal.SIGTERM) for code in codes), codes
    checkpoints = await cluster.sql(
        "SELECT count(*) FROM audit_events WHERE seq > %s AND action = 'audit.checkpoint'",
        before[0],
    )
    assert checkpoints == [(len(cluster.replicas),)]  # each signed one at shutdown
    result = await cluster.verify_audit()
    assert result.ok, result
    assert result.signatures_verified >= len(cluster.replicas)
    report(
        "shutdown of three replicas at once",
        f"exit codes {codes}; 3 signed checkpoints appended concurrently; chain of "
        f"{result.events} events, {result.signatures_verified} signatures, verifies",
    )
