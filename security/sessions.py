"""Access tokens: EdDSA (Ed25519) JWTs issued and verified against a ``KeyRing``.

A token's header carries ``alg: EdDSA``, ``typ: JWT`` and the signing key's ``kid``; its
claims are ``iss``, ``aud``, ``sub`` (the user name), ``iat``, ``nbf``, ``exp``, ``jti``,
``role``, ``sid`` (the session: its refresh-token family) and ``csrf`` (the SHA-256 of the
session's CSRF token, which binds that token to the session; see ``security.csrf``).

``verify`` pins ``algorithms=["EdDSA"]`` before anything else, selects the key by ``kid``,
requires every claim and checks issuer, audience and lifetime with ``leeway_s`` of clock
skew. Every failure raises ``InvalidToken`` with a short reason; nothing about the token is
trusted before its signature verifies. Revocation is not checked here (``security.revocation``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

import jwt

from security.exceptions import SecurityError
from security.signing_keys import KeyRing

ALGORITHM: Final = "EdDSA"
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti", "role", "sid", "csrf")
MAX_TOKEN_BYTES: Final = 4096
DEFAULT_LEEWAY_S: Final = 30

Clock = Callable[[], float]


class InvalidToken(SecurityError):
    """A token failed verification; ``reason`` is short and safe to log (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified claims of an access token."""

    sub: str
    role: str
    sid: str
    jti: str
    csrf: str  # SHA-256 (base64url) of the session's CSRF token
    iat: int
    exp: int
    kid: str

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.exp - now)


def new_id() -> str:
    """A fresh unguessable identifier (128 bits, base64url)."""
    return secrets.token_urlsafe(16)


class TokenService:
    """Issues and verifies access tokens for one issuer and audience."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str,
        audience: str,
        ttl_s: int,
        roles: Collection[str],
        leeway_s: int = DEFAULT_LEEWAY_S,
        expired_grace_s: float = 30 * 86400,
        clock: Clock = time.time,
    ) -> None:
        self.ring = ring
        self.expired_grace_s = expired_grace_s
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self.roles = frozenset(roles)
        self.leeway_s = leeway_s
        self._clock = clock

    def issue(self, sub: str, role: str, *, sid: str, csrf: str) -> tuple[str, AccessClaims]:
        """A signed token for ``sub`` in session ``sid``; ``csrf`` is the CSRF token's hash."""
        if role not in self.roles:
            raise ValueError(f"unknown role {role!r}")
        key = self.ring.active
        if key.private is None:
            raise RuntimeError(f"signing key {key.kid} has no private part")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_s,
            "jti": new_id(),
            "role": role,
            "sid": sid,
            "csrf": csrf,
        }
        token = jwt.encode(
            claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"}
        )
        return token, _claims(claims, key.kid)

    def verify(self, token: str, *, allow_expired: bool = False) -> AccessClaims:
        """The claims of a valid ``token``. Raises ``InvalidToken``.

        ``allow_expired`` accepts a token up to ``expired_grace_s`` past ``exp`` (still signed,
        issued by us, for us): logout uses it so a session whose access token lapsed can
        still be ended.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("missing kid")
        key = self.ring.public_key(kid)
        if key is None:
            raise InvalidToken("unknown kid")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                # Times are checked below, against this service's clock.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidToken("missing claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("invalid token") from None
        if isinstance(claims.get("aud"), list):
            raise InvalidToken("wrong audience")  # we issue a single audience string
        for name in ("sub", "jti", "role", "sid", "csrf"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise InvalidToken("missing claim")
        if claims["role"] not in self.roles:
            raise InvalidToken("unknown role")
        self._check_times(claims, allow_expired)
        return _claims(claims, kid)

    def _check_times(self, claims: dict[str, Any], allow_expired: bool) -> None:
        times = [claims["iat"], claims["nbf"], claims["exp"]]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
            raise InvalidToken("invalid time claim")
        iat, nbf, exp = times
        now = self._clock()
        if iat > now + self.leeway_s or nbf > now + self.leeway_s:
            raise InvalidToken("token not yet valid")
        grace = self.expired_grace_s if allow_expired else 0.0
        if now > exp + self.leeway_s + grace:
            raise InvalidToken("token expired")


def _claims(claims: dict[str, Any], kid: str) -> AccessClaims:
    return AccessClaims(
        sub=claims["sub"],
        role=claims["role"],
        sid=claims["sid"],
        jti=claims["jti"],
        csrf=claims["csrf"],
        iat=int(claims["iat"]),
        exp=int(claims["exp"]),
        kid=kid,
    )
