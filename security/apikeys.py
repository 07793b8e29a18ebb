"""Service API keys: format, hashing and the rotation policy. Storage is the caller's.

A key reads ``vgk_<key id>_<secret>``: the key id (12 lowercase base32 characters) is public
and names the key in lists, logs and the audit trail; the secret (256 bits, base64url) is
shown once when the key is made and only its SHA-256 is stored (a random secret of this size
needs no slow KDF). Keys are presented as ``Authorization: Bearer vgk_...``.

Policy: a key is due for rotation ``max_age_s`` after it was made (90 days by default) and is
refused ``grace_s`` later (7 days) unless rotated first. Rotating makes a new key with the
same name and role and gives the old one ``grace_s`` more, so a service can switch over while
both work. Revoking refuses a key at once.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "vgk_"
DAY_S: Final = 86400
DEFAULT_MAX_AGE_S: Final = 90 * DAY_S
DEFAULT_GRACE_S: Final = 7 * DAY_S
_KEY_RE: Final = re.compile(r"vgk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")


class KeyState(enum.StrEnum):
    ACTIVE = "active"
    ROTATION_DUE = "rotation_due"  # older than max_age: still works until the grace ends
    GRACE = "grace"  # rotated (or due and past max_age): works until expires_at
    EXPIRED = "expired"
    REVOKED = "revoked"

    @property
    def accepted(self) -> bool:
        return self in (KeyState.ACTIVE, KeyState.ROTATION_DUE, KeyState.GRACE)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key: ``token`` is shown to the operator once and never stored."""

    key_id: str
    token: str
    key_hash: str


def generate() -> NewKey:
    key_id = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:12]
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{PREFIX}{key_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(b"voicegw-apikey\n" + secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(token)
    return None if match is None else (match.group(1), match.group(2))


def matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret).encode(), key_hash.encode())


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    max_age_s: float = DEFAULT_MAX_AGE_S
    grace_s: float = DEFAULT_GRACE_S

    def state(
        self, *, created_at: float, expires_at: float | None, revoked_at: float | None, now: float
    ) -> KeyState:
        if revoked_at is not None and revoked_at <= now:
            return KeyState.REVOKED
        hard_end = created_at + self.max_age_s + self.grace_s
        end = hard_end if expires_at is None else min(expires_at, hard_end)
        if now >= end:
            return KeyState.EXPIRED
        if expires_at is not None:
            return KeyState.GRACE
        if now >= created_at + self.max_age_s:
            return KeyState.ROTATION_DUE
        return KeyState.ACTIVE

    def grace_end(self, now: float, expires_at: float | None) -> float:
        """``expires_at`` for a key rotated at ``now`` (never later than it already was)."""
        end = now + self.grace_s
        return end if expires_at is None else min(end, expires_at)
