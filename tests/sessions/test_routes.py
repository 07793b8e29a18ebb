"""The /auth routes in the composed app: cookies, refresh rotation and reuse, logout,
logout-all, revocation (both backends), lockout, CSRF and origin checks, security headers,
CORS, and an access token verified by an independent JOSE library against the JWKS."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import redis.asyncio as aioredis
from jwcrypto import jwk as jw_jwk  # type: ignore[import-untyped]
from jwcrypto import jwt as jw_jwt

from gateway.cli.admin import set_disabled, set_password
from gateway.operators.routes import FAILED_LOGIN_FLOOR_S
from gateway.records.base import Role
from security.passwords import HASH_BYTES, PasswordHasher
from security.signing_keys import rotate
from tests.sessions.harness import (
    PASSWORD,
    PUBLIC_URL,
    TEST_HASHER,
    Gw,
    csrf_headers,
    running,
)

ACCESS, REFRESH, CSRF = "__Host-voicegw_access", "__Secure-voicegw_refresh", "__Host-voicegw_csrf"


@pytest.fixture(params=["in-process", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """The routes on one Redis server; the state they keep there (refresh families,
    revocations, the login limit) runs on a Redis Cluster in test_state and test_login_rate."""
    return str(request.param)


@pytest.fixture
async def gw(
    tmp_path: Path, state_redis: aioredis.Redis | None, redis_prefix: str
) -> AsyncIterator[Gw]:
    async with running(tmp_path, redis=state_redis, redis_prefix=redis_prefix) as gw:
        await gw.user("ada", Role.ADMIN)
        yield gw


def set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    result = {}
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        (name,) = cookie.keys()
        result[name] = cookie
    return result


def attrs(header: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


# -- login and cookies ---------------------------------------------------------------------------


async def test_login_sets_the_three_cookies(gw: Gw) -> None:
    async with gw.client() as client:
        response = await gw.login(client, "ada")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == "ada" and body["role"] == "admin"
    assert body["refresh_expires_at"] - time.time() == pytest.approx(30 * 86400, abs=5)
    assert body["expires_at"] - time.time() == pytest.approx(86400, abs=5)
    headers = {h.split("=")[0]: h for h in response.headers.get_list("set-cookie")}
    assert set(headers) == {ACCESS, REFRESH, CSRF}
    assert attrs(headers[ACCESS]) >= {"httponly", "secure", "samesite", "path", "max-age"}
    assert (
        "samesite=strict" in headers[ACCESS].lower() and "path=/;" in headers[ACCESS].lower() + ";"
    )
    assert "max-age=86400" in headers[ACCESS].lower()
    assert "domain" not in attrs(headers[ACCESS])  # __Host- cookies have none
    assert attrs(headers[REFRESH]) >= {"httponly", "secure", "samesite"}
    assert "path=/auth/refresh" in headers[REFRESH].lower()
    assert f"max-age={30 * 86400}" in headers[REFRESH].lower()
    assert "httponly" not in attrs(headers[CSRF]) and "secure" in attrs(headers[CSRF])
    assert body["csrf_token"] == set_cookies(response)[CSRF][CSRF].value
    assert "access_token" not in body  # the token never reaches page JavaScript


async def test_session_route(gw: Gw) -> None:
    async with gw.client() as client:
        assert (await client.get("/auth/session")).status_code == 401
        await gw.login(client, "ada")
        response = await client.get("/auth/session")
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "ada" and body["role"] == "admin" and body["via"] == "session"
    assert "audit:read" in body["permissions"]


async def test_wrong_password_unknown_user_and_bad_bodies(gw: Gw) -> None:
    async with gw.client() as client:
        wrong = await gw.login(client, "ada", "not the password")
        unknown = await gw.login(client, "nobody", "not the password")
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert "set-cookie" not in wrong.headers
        bodies: list[object] = [{}, {"username": "ada"}, {"username": 1, "password": "x"}, []]
        for body in bodies:
            r = await client.post("/auth/login", json=body, headers={"Origin": PUBLIC_URL})
            assert r.status_code == 400
        r = await client.post(
            "/auth/login", content=b"username=ada", headers={"Origin": PUBLIC_URL,
            "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert r.status_code == 415
        r = await client.post(
            "/auth/login", content=b"{" + b" " * 5000 + b"}",
            headers={"Origin": PUBLIC_URL, "Content-Type": "application/json"},
        )  # fmt: skip
        assert r.status_code == 413


async def test_login_checks_origin(gw: Gw) -> None:
    async with gw.client() as client:
        body = {"username": "ada", "password": PASSWORD}
        r = await client.post("/auth/login", json=body, headers={"Origin": "https://evil.test"})
        assert r.status_code == 403
        r = await client.post("/auth/login", json=body, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        r = await client.post("/auth/login", json=body, headers={"Origin": "null"})
        assert r.status_code == 403
        # A configured CORS origin may log in.
        r = await client.post(
            "/auth/login", json=body, headers={"Origin": "https://ops.example.com"}
        )
        assert r.status_code == 200


async def test_disabled_user_cannot_log_in_and_loses_sessions(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        assert (await client.get("/auth/session")).status_code == 200
        await set_disabled(gw.store, "ada")
        assert (await client.get("/auth/session")).status_code == 401
        assert (await gw.login(client, "ada")).status_code == 401
        r = await client.post("/auth/refresh", headers=csrf_headers(client))
        assert r.status_code == 401


async def test_password_change_ends_earlier_sessions(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        await set_password(gw.store, TEST_HASHER, "ada", "a brand new passphrase")
        assert (await client.get("/auth/session")).status_code == 401
        r = await client.post("/auth/refresh", headers=csrf_headers(client))
        assert r.status_code == 401
        await asyncio.sleep(1.05)  # the change is stamped at the next whole second
        assert (await gw.login(client, "ada", "a brand new passphrase")).status_code == 200
        assert (await client.get("/auth/session")).status_code == 200


# -- refresh -------------------------------------------------------------------------------------


async def test_refresh_rotates_every_cookie(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        before = dict(client.cookies)
        r = await client.post("/auth/refresh", headers=csrf_headers(client))
        assert r.status_code == 200, r.text
        after = dict(client.cookies)
        for name in (ACCESS, REFRESH, CSRF):
            assert after[name] != before[name]
        assert (await client.get("/auth/session")).status_code == 200


async def test_refresh_needs_csrf_and_origin(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        assert (await client.post("/auth/refresh")).status_code == 403
        bad = {**csrf_headers(client), "Origin": "https://evil.test"}
        assert (await client.post("/auth/refresh", headers=bad)).status_code == 403
        wrong = {**csrf_headers(client), "X-CSRF-Token": "x" * 43}
        assert (await client.post("/auth/refresh", headers=wrong)).status_code == 403


async def test_refresh_reuse_revokes_the_session(gw: Gw) -> None:
    async with gw.client() as victim, gw.client() as thief:
        await gw.login(victim, "ada")
        stolen = dict(victim.cookies)
        assert (await victim.post("/auth/refresh", headers=csrf_headers(victim))).status_code == 200
        # The thief replays the spent refresh token.
        thief.cookies.update(stolen)
        r = await thief.post("/auth/refresh", headers=csrf_headers(thief))
        assert r.status_code == 401
        # The whole family is gone: the victim's fresh access token and refresh token too.
        assert (await victim.get("/auth/session")).status_code == 401
        r = await victim.post("/auth/refresh", headers=csrf_headers(victim))
        assert r.status_code == 401


async def test_refresh_without_cookie(gw: Gw) -> None:
    async with gw.client() as client:
        client.cookies.set(CSRF, "t")
        r = await client.post("/auth/refresh", headers={"Origin": PUBLIC_URL, "X-CSRF-Token": "t"})
        assert r.status_code == 401


# -- logout --------------------------------------------------------------------------------------


async def test_logout_revokes_the_session(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        saved = dict(client.cookies)
        r = await client.post("/auth/logout", headers=csrf_headers(client))
        assert r.status_code == 204
        cleared = set_cookies(r)
        assert {c[n]["max-age"] for n, c in cleared.items()} == {"0"}
        assert (await client.get("/auth/session")).status_code == 401
    async with gw.client() as replay:  # the cookies, copied before logout, are dead
        replay.cookies.update(saved)
        assert (await replay.get("/auth/session")).status_code == 401
        assert (await replay.post("/auth/refresh", headers=csrf_headers(replay))).status_code == 401


async def test_logout_needs_csrf(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        r = await client.post("/auth/logout", headers={"Origin": PUBLIC_URL})
        assert r.status_code == 403
        assert (await client.get("/auth/session")).status_code == 200


async def test_logout_all_ends_every_session_of_the_user(gw: Gw) -> None:
    await gw.user("bob", Role.OPERATOR)
    async with gw.client() as a, gw.client() as b, gw.client() as other:
        await gw.login(a, "ada")
        await gw.login(b, "ada")
        await gw.login(other, "bob")
        r = await a.post("/auth/logout-all", headers=csrf_headers(a))
        assert r.status_code == 200 and r.json()["revoked_sessions"] == 2
        assert (await a.get("/auth/session")).status_code == 401
        assert (await b.get("/auth/session")).status_code == 401
        assert (await b.post("/auth/refresh", headers=csrf_headers(b))).status_code == 401
        assert (await other.get("/auth/session")).status_code == 200


# -- CSRF on cookie-authenticated unsafe requests ----------------------------------------------


async def test_csrf_cases(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        token = client.cookies[CSRF]
        cases = {
            "missing header": {"Origin": PUBLIC_URL},
            "wrong header": {"Origin": PUBLIC_URL, "X-CSRF-Token": token[:-1] + "x"},
            "bad origin": {"Origin": "https://evil.test", "X-CSRF-Token": token},
            "sibling origin": {"Origin": "https://sub.gw.test", "X-CSRF-Token": token},
            "http origin": {"Origin": "http://gw.test", "X-CSRF-Token": token},
            "cross-site fetch": {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": token},
            "same-site fetch": {"Sec-Fetch-Site": "same-site", "X-CSRF-Token": token},
        }
        for what, headers in cases.items():
            r = await client.post("/auth/logout-all", headers=headers)
            assert r.status_code == 403, what
        assert (await client.get("/auth/session")).status_code == 200


async def test_csrf_cookie_not_bound_to_the_session_is_refused(gw: Gw) -> None:
    """An attacker who can plant cookies (a sibling subdomain) sets a CSRF cookie of their own
    and sends the same value in the header: equal, but not the session's token."""
    async with gw.client() as client:
        await gw.login(client, "ada")
        client.cookies.set(CSRF, "planted-token-value", domain="gw.test")
        headers = {"Origin": PUBLIC_URL, "X-CSRF-Token": "planted-token-value"}
        jar = httpx.Cookies()
        jar.set(ACCESS, client.cookies.get(ACCESS, domain="gw.test") or "")
        jar.set(CSRF, "planted-token-value")
        async with gw.client(cookies=jar) as attacker_view:
            r = await attacker_view.post("/auth/logout-all", headers=headers)
        assert r.status_code == 403
        assert r.json()["error"] == "csrf token not bound to this session"


# -- revocation state --------------------------------------------------------------------------


async def test_revocation_store_down_fails_closed(tmp_path: Path, redis_prefix: str) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        async with running(tmp_path, redis=None) as gw:
            await gw.user("ada")
            async with gw.client() as client:
                await gw.login(client, "ada")
                from security.revocation import RedisRevocationList

                gw.auth.revocations = RedisRevocationList(dead, redis_prefix)
                r = await client.get("/auth/session")
                assert r.status_code == 503
                assert r.json() == {"error": "session state unavailable"}
    finally:
        await dead.aclose()


async def test_revocation_is_shared_through_redis(
    tmp_path: Path, redis_clean: aioredis.Redis, redis_prefix: str
) -> None:
    """Two replicas with one Redis and one key file: logout on one is seen by the other."""
    async with (
        running(tmp_path / "a", redis=redis_clean, redis_prefix=redis_prefix) as one,
        running(tmp_path / "b", redis=redis_clean, redis_prefix=redis_prefix) as two,
    ):
        two.auth.tokens.ring = one.auth.tokens.ring  # the shared signing key
        two.auth.store = one.auth.store
        two.auth.guard = one.auth.guard
        await one.user("ada")
        async with one.client() as on_one:
            await gw_login(one, on_one)
            async with two.client(cookies=dict(on_one.cookies)) as on_two:
                assert (await on_two.get("/auth/session")).status_code == 200
                assert (
                    await on_one.post("/auth/logout", headers=csrf_headers(on_one))
                ).status_code == 204
                assert (await on_two.get("/auth/session")).status_code == 401


async def gw_login(gw: Gw, client: httpx.AsyncClient) -> None:
    assert (await gw.login(client, "ada")).status_code == 200


# -- lockout -------------------------------------------------------------------------------------


async def test_lockout_after_five_failures(gw: Gw) -> None:
    async with gw.client() as client:
        for _ in range(5):
            assert (await gw.login(client, "ada", "wrong password!")).status_code == 401
        locked = await gw.login(client, "ada")  # the right password, but locked
        assert locked.status_code == 401
        assert locked.json() == (await gw.login(client, "nobody", "x")).json()
        assert "set-cookie" not in locked.headers
    # The window rolls: failures older than 15 minutes no longer count.
    gw.auth.guard._clock = lambda: time.time() + 15 * 60 + 1
    async with gw.client() as client:
        assert (await gw.login(client, "ada")).status_code == 200


async def test_success_clears_failures_and_lockout_is_per_user(gw: Gw) -> None:
    await gw.user("bob", Role.OPERATOR)
    async with gw.client() as client:
        for _ in range(4):
            await gw.login(client, "ada", "wrong password!")
        assert (await gw.login(client, "ada")).status_code == 200
        for _ in range(4):
            await gw.login(client, "ada", "wrong password!")
        assert (await gw.login(client, "ada")).status_code == 200  # the count restarted
        for _ in range(5):
            await gw.login(client, "ada", "wrong password!")
        assert (await gw.login(client, "bob")).status_code == 200


class CountingHasher(PasswordHasher):
    """The real scrypt hasher, noting the cost of every derivation it performs."""

    derived: ClassVar[list[tuple[int, int, int]]] = []

    @staticmethod
    def _derive(
        password: str, salt: bytes, log_n: int, r: int, p: int, length: int = HASH_BYTES
    ) -> bytes:
        CountingHasher.derived.append((log_n, r, p))
        return PasswordHasher._derive(password, salt, log_n, r, p, length)


async def test_failed_logins_take_the_same_time_whether_or_not_the_user_exists(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No user enumeration by timing. Two checks, each robust to a busy machine:

    * the work is the same: a failed login for a known and for an unknown name each derive
      exactly one scrypt hash of the same cost (counted, not timed: CPU-independent);
    * the wall time is the same: every failure waits for the floor, and known and unknown
      attempts, interleaved in pairs so load spikes hit both alike, differ by a paired median
      within 15 % of the typical answer time. A median of paired differences ignores the odd
      attempt a loaded scheduler delays."""
    monkeypatch.setattr(CountingHasher, "derived", [])
    monkeypatch.setattr(gw.auth, "hasher", CountingHasher(log_n=TEST_HASHER.log_n))

    async def timed(name: str, client_no: int) -> float:
        # One client address per attempt: the per-address login limit stays out of the way.
        async with gw.client(f"192.0.2.{client_no}") as client:
            before = len(CountingHasher.derived)
            started = time.perf_counter()
            r = await gw.login(client, name, "wrong password!")
            took = time.perf_counter() - started
            assert r.status_code == 401
            assert len(CountingHasher.derived) == before + 1  # one scrypt, known or not
            return took

    # Fresh names each time, known ones too, so no lockout or throttle (five failures of one
    # name across networks) differs between the two series.
    for i in range(8):
        await gw.user(f"timing-known-{i}")
    known: list[float] = []
    unknown: list[float] = []
    for i in range(8):
        if i % 2:  # alternate which goes first, so neither always follows a warm cache
            unknown.append(await timed(f"ghost-{i}", 2 * i))
            known.append(await timed(f"timing-known-{i}", 2 * i + 1))
        else:
            known.append(await timed(f"timing-known-{i}", 2 * i))
            unknown.append(await timed(f"ghost-{i}", 2 * i + 1))
    assert len(set(CountingHasher.derived)) == 1  # the dummy costs what a real hash costs
    typical = statistics.median(known + unknown)
    paired = statistics.median(k - u for k, u in zip(known, unknown, strict=True))
    assert abs(paired) <= 0.15 * typical, (known, unknown)
    assert min(known + unknown) >= FAILED_LOGIN_FLOOR_S - 0.01  # the floor every failure waits


# -- headers, CORS, JWKS -------------------------------------------------------------------------


async def test_security_headers_everywhere(gw: Gw) -> None:
    async with gw.client() as client:
        for path in ("/auth/session", "/healthz", "/.well-known/jwks.json", "/console/", "/nope"):
            r = await client.get(path)
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-frame-options"] == "DENY"
            assert "strict-transport-security" not in r.headers  # development
        console = await client.get("/console/")
        assert "script-src 'self'" in console.headers["content-security-policy"]
        assert "unsafe-inline" not in console.headers["content-security-policy"]
        assert (await client.get("/auth/session")).headers["cache-control"] == "no-store"


async def test_hsts_in_production() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.operators import middleware

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)], middleware=middleware.middleware(production=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL
    ) as client:
        r = await client.get("/")
    assert r.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"


async def test_cors_only_for_listed_origins(gw: Gw) -> None:
    async with gw.client() as client:
        ok = await client.options(
            "/api/v1/calls",
            headers={"Origin": "https://ops.example.com", "Access-Control-Request-Method": "GET"},
        )
        assert ok.headers["access-control-allow-origin"] == "https://ops.example.com"
        assert ok.headers["access-control-allow-credentials"] == "true"
        bad = await client.options(
            "/api/v1/calls",
            headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in bad.headers
        simple = await client.get("/auth/session", headers={"Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in simple.headers


async def test_access_token_verifies_with_jwcrypto_against_the_jwks(gw: Gw) -> None:
    async with gw.client() as client:
        login = await gw.login(client, "ada")
        token = set_cookies(login)[ACCESS][ACCESS].value
        jwks = await client.get("/.well-known/jwks.json")
    assert jwks.headers["content-type"] == "application/jwk-set+json"
    keyset = jw_jwk.JWKSet.from_json(jwks.text)
    verified = jw_jwt.JWT(
        jwt=token,
        key=keyset,
        algs=["EdDSA"],
        check_claims={"iss": PUBLIC_URL, "aud": PUBLIC_URL + "/api", "exp": None, "sub": "ada"},
    )
    import json

    claims = json.loads(verified.claims)
    assert claims["role"] == "admin" and claims["sub"] == "ada"
    header = json.loads(verified.header)
    assert header["alg"] == "EdDSA" and keyset.get_key(header["kid"]) is not None
    # jwcrypto refuses the same token once tampered with.
    head, body, sig = token.split(".")
    with pytest.raises(Exception):  # noqa: B017 - jwcrypto raises its own signature error
        jw_jwt.JWT(jwt=f"{head}.{body}.{sig[::-1]}", key=keyset, algs=["EdDSA"])


async def test_jwks_keeps_retired_key_after_rotation(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "ada")
        old = (await client.get("/.well-known/jwks.json")).json()["keys"]
        ring = gw.auth.tokens.ring
        rotate(gw.settings.data_dir / "signing-keys.json", token_ttl_s=86400)
        ring.refresh(force=True)
        new = (await client.get("/.well-known/jwks.json")).json()["keys"]
        assert len(new) == 2 and new[1]["kid"] == old[0]["kid"]
        assert (await client.get("/auth/session")).status_code == 200  # old token still good
