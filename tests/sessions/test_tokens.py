"""Access tokens: every way a forged, stale or foreign token is refused, and the key ring."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from security import signing_keys
from security.exceptions import ConfigError
from security.sessions import REQUIRED_CLAIMS, InvalidToken, TokenService
from security.signing_keys import FileKeyRing, KeyRing, thumbprint
from tests.conftest import FakeClock

ISS, AUD = "https://gw.test", "https://gw.test/api"
ROLES = ("admin", "operator", "auditor")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ring(tmp_path: Path, clock: FakeClock) -> FileKeyRing:
    return FileKeyRing(tmp_path / "keys.json", clock=clock)


@pytest.fixture
def tokens(ring: KeyRing, clock: FakeClock) -> TokenService:
    return TokenService(ring, issuer=ISS, audience=AUD, ttl_s=3600, roles=ROLES, clock=clock)


def claims(clock: FakeClock, **over: object) -> dict[str, object]:
    now = int(clock())
    base: dict[str, object] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "ada",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": "j1",
        "role": "admin",
        "sid": "s1",
        "csrf": "c1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def signed(ring: KeyRing, payload: dict[str, object], **headers: object) -> str:
    key = ring.active
    assert key.private is not None
    return jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid, **headers})


def reject(tokens: TokenService, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken) as info:
        tokens.verify(token)
    assert info.value.reason == reason


# -- the happy path --------------------------------------------------------------------------


def test_issue_and_verify(tokens: TokenService, ring: KeyRing) -> None:
    token, issued = tokens.issue("ada", "operator", sid="sess", csrf="h")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": ring.active.kid, "typ": "JWT"}
    got = tokens.verify(token)
    assert got == issued
    assert (got.sub, got.role, got.sid, got.csrf, got.kid) == (
        "ada",
        "operator",
        "sess",
        "h",
        ring.active.kid,
    )
    assert got.exp - got.iat == 3600
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == set(REQUIRED_CLAIMS)


def test_every_token_has_its_own_jti(tokens: TokenService) -> None:
    jtis = {
        tokens.verify(tokens.issue("ada", "admin", sid="s", csrf="c")[0]).jti for _ in range(50)
    }
    assert len(jtis) == 50


def test_issue_refuses_unknown_role(tokens: TokenService) -> None:
    with pytest.raises(ValueError):
        tokens.issue("ada", "root", sid="s", csrf="c")


# -- rejections -------------------------------------------------------------------------------


def test_alg_none_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": ring.active.kid}).encode())
    body = b64(json.dumps(claims(clock)).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        with pytest.raises(InvalidToken):
            tokens.verify(token)
    reject(tokens, f"{header}.{body}.", "algorithm not allowed")


@pytest.mark.parametrize("encoding", ["raw", "pem", "jwk-x"])
def test_hs256_signed_with_the_public_key_refused(
    tokens: TokenService, clock: FakeClock, ring: KeyRing, encoding: str
) -> None:
    """The classic confusion attack: HMAC keyed with the (public) verification key."""
    public = ring.active.public
    secret = {
        "raw": public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "jwk-x": ring.active.jwk()["x"].encode(),
    }[encoding]
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": ring.active.kid}).encode())
    body = b64(json.dumps(claims(clock)).encode())
    signature = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
    reject(tokens, f"{header}.{body}.{signature}", "algorithm not allowed")


def test_other_algorithms_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    token = jwt.encode(claims(clock), "s" * 32, algorithm="HS256", headers={"kid": ring.active.kid})
    reject(tokens, token, "algorithm not allowed")


def test_unknown_kid_refused(tokens: TokenService, clock: FakeClock, tmp_path: Path) -> None:
    stranger = FileKeyRing(tmp_path / "other.json", clock=clock)
    reject(tokens, signed(stranger, claims(clock)), "unknown kid")


def test_known_kid_with_another_key_refused(
    tokens: TokenService, clock: FakeClock, ring: KeyRing
) -> None:
    other = Ed25519PrivateKey.generate()
    token = jwt.encode(claims(clock), other, algorithm="EdDSA", headers={"kid": ring.active.kid})
    reject(tokens, token, "bad signature")


def test_missing_kid_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    key = ring.active.private
    assert key is not None
    reject(tokens, jwt.encode(claims(clock), key, algorithm="EdDSA"), "missing kid")


def test_wrong_audience_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    reject(tokens, signed(ring, claims(clock, aud="https://other.test/api")), "wrong audience")
    reject(tokens, signed(ring, claims(clock, aud=[AUD, "https://other.test"])), "wrong audience")


def test_wrong_issuer_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    reject(tokens, signed(ring, claims(clock, iss="https://evil.test")), "wrong issuer")


def test_expired_refused_beyond_leeway(
    tokens: TokenService, clock: FakeClock, ring: KeyRing
) -> None:
    now = int(clock())
    within = signed(ring, claims(clock, iat=now - 4000, nbf=now - 4000, exp=now - 20))
    assert tokens.verify(within).sub == "ada"  # 20 s past exp: inside the 30 s leeway
    beyond = signed(ring, claims(clock, iat=now - 4000, nbf=now - 4000, exp=now - 31))
    reject(tokens, beyond, "token expired")


def test_expired_token_still_identifies_its_session_for_logout(
    tokens: TokenService, clock: FakeClock, ring: KeyRing
) -> None:
    now = int(clock())
    token = signed(ring, claims(clock, iat=now - 7200, nbf=now - 7200, exp=now - 3600))
    assert tokens.verify(token, allow_expired=True).sid == "s1"
    ancient = signed(
        ring, claims(clock, iat=now - 90 * 86400, nbf=now - 90 * 86400, exp=now - 80 * 86400)
    )
    with pytest.raises(InvalidToken):
        tokens.verify(ancient, allow_expired=True)


def test_not_yet_valid_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    now = int(clock())
    reject(tokens, signed(ring, claims(clock, nbf=now + 120)), "token not yet valid")
    reject(tokens, signed(ring, claims(clock, iat=now + 120, nbf=now)), "token not yet valid")


@pytest.mark.parametrize("missing", REQUIRED_CLAIMS)
def test_every_claim_is_required(
    tokens: TokenService, clock: FakeClock, ring: KeyRing, missing: str
) -> None:
    reject(tokens, signed(ring, claims(clock, **{missing: None})), "missing claim")


@pytest.mark.parametrize("name", ["sub", "jti", "role", "sid", "csrf"])
def test_empty_or_non_string_claims_refused(
    tokens: TokenService, clock: FakeClock, ring: KeyRing, name: str
) -> None:
    for value in ("", 7, ["x"]):
        with pytest.raises(InvalidToken):
            tokens.verify(signed(ring, claims(clock, **{name: value})))


def test_unknown_role_refused(tokens: TokenService, clock: FakeClock, ring: KeyRing) -> None:
    reject(tokens, signed(ring, claims(clock, role="root")), "unknown role")


def test_tampered_payload_refused(tokens: TokenService) -> None:
    token, _ = tokens.issue("ada", "auditor", sid="s", csrf="c")
    header, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["role"] = "admin"
    forged = b64(json.dumps(payload).encode())
    reject(tokens, f"{header}.{forged}.{signature}", "bad signature")


def test_tampered_signature_and_header_refused(tokens: TokenService) -> None:
    token, _ = tokens.issue("ada", "admin", sid="s", csrf="c")
    header, body, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    reject(tokens, f"{header}.{body}.{flipped}", "bad signature")
    reject(tokens, f"{header}.{body}.", "bad signature")
    for junk in ("", "a.b", "a.b.c", "....", token + "x" * 5000):
        with pytest.raises(InvalidToken):
            tokens.verify(junk)


# -- the key ring -------------------------------------------------------------------------------


def test_key_file_is_owner_only_and_kid_is_the_thumbprint(ring: FileKeyRing) -> None:
    assert oct(os.stat(ring.path).st_mode & 0o777) == "0o600"
    assert ring.active.kid == thumbprint(ring.active.public_raw)
    assert len(ring.active.kid) == 43


def test_key_file_readable_by_others_is_refused(ring: FileKeyRing) -> None:
    os.chmod(ring.path, 0o644)
    with pytest.raises(ConfigError, match="0600"):
        FileKeyRing(ring.path)


def test_jwks_is_public_only(ring: KeyRing) -> None:
    (jwk,) = ring.jwks()["keys"]
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwk["x"],
        "kid": ring.active.kid,
        "use": "sig",
        "alg": "EdDSA",
    }
    assert "d" not in jwk


def test_rotation_keeps_the_retired_key_until_its_last_token_expires(
    ring: FileKeyRing, tokens: TokenService, clock: FakeClock
) -> None:
    old_token, _ = tokens.issue("ada", "admin", sid="s", csrf="c")
    old_kid = ring.active.kid
    new = signing_keys.rotate(ring.path, token_ttl_s=3600, clock=clock)
    ring.refresh(force=True)
    assert ring.active.kid == new.kid != old_kid
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid, old_kid]
    assert tokens.verify(old_token).kid == old_kid  # still valid: signed before rotation
    new_token, _ = tokens.issue("ada", "admin", sid="s", csrf="c")
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    stored = json.loads(ring.path.read_text())["keys"]
    assert "private" not in next(k for k in stored if k["kid"] == old_kid)  # private half gone
    # Past the last token's expiry (+ leeway) the retired key leaves the JWKS and verifies nothing.
    clock.now += 3600 + signing_keys.RETIRE_LEEWAY_S + 1
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]
    with pytest.raises(InvalidToken):
        tokens.verify(old_token)
    # The next rotation drops it from the file too.
    signing_keys.rotate(ring.path, token_ttl_s=3600, clock=clock)
    assert old_kid not in ring.path.read_text()


def test_running_ring_sees_a_rotation_from_another_process(
    ring: FileKeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    other_process = FileKeyRing(ring.path, clock=clock)  # e.g. a second replica
    new = signing_keys.rotate(ring.path, token_ttl_s=3600, clock=clock)
    issuer = TokenService(ring, issuer=ISS, audience=AUD, ttl_s=60, roles=ROLES, clock=clock)
    ring.refresh(force=True)
    token, _ = issuer.issue("ada", "admin", sid="s", csrf="c")
    verifier = TokenService(
        other_process, issuer=ISS, audience=AUD, ttl_s=60, roles=ROLES, clock=clock
    )
    assert verifier.verify(token).kid == new.kid  # unknown kid → re-read the file once


def test_seeds_from_the_environment(clock: FakeClock) -> None:
    seeds = [b64(os.urandom(32)), b64(os.urandom(32))]
    ring = KeyRing.from_seeds(seeds, clock=clock)
    assert len(ring.jwks()["keys"]) == 2
    assert ring.active.private is not None
    with pytest.raises(ConfigError, match="key 2"):
        KeyRing.from_seeds([seeds[0], "not-a-key"])
