"""The key inventory: every key the gateway holds, how old it is, and when rotation is due.

Public API (stable; ``gateway.review`` and the compliance report read it):

* ``KeyKind``: ``signing`` (session tokens, audit checkpoints), ``data`` (field encryption),
  ``api`` (service API keys), ``twilio_secondary`` (a second Twilio auth token, accepted
  only while a rotation is being promoted), ``tools`` and ``events`` (the Standard Webhooks
  secrets tool requests and call events are signed with: the first listed is the active
  one, the others are kept for an overlap while the receiver moves to it).
* ``KeyEntry``: one key by its public id (a ``kid``, a key id, an API key id, or for a token
  a fingerprint): ``state`` (active or retired), ``created_at`` (and whether that is when it
  was made or only when voicegw first saw it: keys handed in through the environment carry
  no date), ``due_at`` (rotation due), ``retired_at`` and ``drop_after`` (a retired key is
  not needed after this). ``as_dict(now)`` is its JSON form; never key material.
* ``KeyInventory``: the entries at one instant ``now``. ``oldest_active(kind)``,
  ``next_due(kind)``, ``summary()`` (one row per kind: age of the oldest active key, seconds
  until the next rotation is due), ``unavailable`` (kinds whose source could not be read,
  e.g. API keys while the store is down) and ``as_dict()`` (``{"now", "policy", "kinds",
  "keys", "unavailable"}``).
* ``build_inventory(...)``: makes one from the key sources; ``FirstSeen`` (``FileFirstSeen``
  in the data directory, ``RedisFirstSeen`` shared by replicas) records when a key without
  a creation date was first seen, keyed by a fingerprint, never the key.

The gateway assembles the sources from a running ``Runtime`` in
``gateway.review.inventory.runtime_key_inventory(runtime)``; call that for evidence.

Policy: keys are rotated every ``ROTATION_PERIOD_S`` (90 days; API keys use their own
``VOICEGW_API_KEY_MAX_AGE_DAYS``), flagged ``ROTATION_NOTICE_S`` (14 days) before; a
secondary Twilio token should be promoted (and removed) within ``SECONDARY_TOKEN_WINDOW_S``;
an older tool or event secret is not needed ``SECRET_OVERLAP_S`` (7 days) after a newer one
was put first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from security import crypto
from security.apikeys import KeyPolicy, KeyState
from security.rediskeys import RedisClient
from security.secret import Secret
from security.signing_keys import RETIRE_LEEWAY_S, FileKeyRing, KeyRing, SigningKey, load

__all__ = [
    "FIRST_SEEN_FILE",
    "ROTATION_NOTICE_S",
    "ROTATION_PERIOD_S",
    "SECONDARY_TOKEN_WINDOW_S",
    "SECRET_OVERLAP_S",
    "ApiKeyLike",
    "FileFirstSeen",
    "FirstSeen",
    "KeyEntry",
    "KeyInventory",
    "KeyKind",
    "KeyStatus",
    "RedisFirstSeen",
    "build_inventory",
    "fingerprint",
    "signing_keys_of",
]

DAY_S: Final = 86400.0
ROTATION_PERIOD_S: Final = 90 * DAY_S
ROTATION_NOTICE_S: Final = 14 * DAY_S
SECONDARY_TOKEN_WINDOW_S: Final = 7 * DAY_S
"""How long a secondary Twilio auth token may stay configured: long enough to promote it in
the Twilio console and move it to ``VOICEGW_TWILIO_AUTH_TOKEN``."""
SECRET_OVERLAP_S: Final = 7 * DAY_S
"""How long an older tool or event secret stays listed after a newer one: the receivers accept
either meanwhile (each request carries one signature per secret)."""
FIRST_SEEN_FILE: Final = "key-first-seen.json"


class KeyKind(enum.StrEnum):
    SIGNING = "signing"
    DATA = "data"
    API = "api"
    TWILIO_SECONDARY = "twilio_secondary"
    TOOLS = "tools"
    EVENTS = "events"


class KeyStatus(enum.StrEnum):
    ACTIVE = "active"  # signs, encrypts, or is accepted as current
    RETIRED = "retired"  # kept only to verify, decrypt or bridge a rotation


@dataclass(frozen=True, slots=True)
class KeyEntry:
    kind: KeyKind
    key_id: str  # public: never key material
    status: KeyStatus
    created_at: float
    created_known: bool  # False: ``created_at`` is when voicegw first saw it (a lower bound)
    due_at: float | None  # rotation due (active keys)
    retired_at: float | None = None
    drop_after: float | None = None  # a retired key is no longer needed after this

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.created_at)

    def due_in_s(self, now: float) -> float | None:
        """Seconds until rotation is due; negative when overdue; None when not applicable."""
        return None if self.due_at is None else self.due_at - now

    def as_dict(self, now: float) -> dict[str, Any]:
        due_in = self.due_in_s(now)
        return {
            "kind": self.kind.value,
            "key_id": self.key_id,
            "status": self.status.value,
            "created_at": round(self.created_at, 3),
            "created": "recorded" if self.created_known else "first_seen",
            "age_days": round(self.age_s(now) / DAY_S, 1),
            "rotation_due_at": self.due_at,
            "rotation_due_in_days": None if due_in is None else round(due_in / DAY_S, 1),
            "retired_at": self.retired_at,
            "drop_after": self.drop_after,
        }


@dataclass(frozen=True, slots=True)
class KeyInventory:
    now: float
    entries: tuple[KeyEntry, ...]
    unavailable: tuple[KeyKind, ...] = ()  # kinds whose source could not be read

    def of(self, kind: KeyKind) -> list[KeyEntry]:
        return [e for e in self.entries if e.kind is kind]

    def active(self, kind: KeyKind) -> list[KeyEntry]:
        return [e for e in self.of(kind) if e.status is KeyStatus.ACTIVE]

    def oldest_active(self, kind: KeyKind) -> KeyEntry | None:
        return min(self.active(kind), key=lambda e: e.created_at, default=None)

    def next_due(self, kind: KeyKind) -> KeyEntry | None:
        """The active key whose rotation is due first."""
        due = [e for e in self.active(kind) if e.due_at is not None]
        return min(due, key=lambda e: e.due_at or 0.0, default=None)

    def summary(self) -> list[dict[str, Any]]:
        """One row per kind that has an active key: what the metrics and the console show."""
        rows: list[dict[str, Any]] = []
        for kind in KeyKind:
            oldest, first_due = self.oldest_active(kind), self.next_due(kind)
            if oldest is None:
                continue
            due_in = None if first_due is None else first_due.due_in_s(self.now)
            rows.append(
                {
                    "kind": kind.value,
                    "active": len(self.active(kind)),
                    "retired": len(self.of(kind)) - len(self.active(kind)),
                    "oldest_key_id": oldest.key_id,
                    "age_s": round(oldest.age_s(self.now), 1),
                    "rotation_due_in_s": None if due_in is None else round(due_in, 1),
                }
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "policy": {
                "rotation_period_days": ROTATION_PERIOD_S / DAY_S,
                "notice_days": ROTATION_NOTICE_S / DAY_S,
                "twilio_secondary_window_days": SECONDARY_TOKEN_WINDOW_S / DAY_S,
            },
            "kinds": self.summary(),
            "keys": [e.as_dict(self.now) for e in self.entries],
            "unavailable": [k.value for k in self.unavailable],
        }


def fingerprint(kind: str, material: bytes) -> str:
    """A short public name for a secret: truncated, domain-separated SHA-256. Secrets here
    are random and at least 128 bits, so the fingerprint reveals nothing usable."""
    digest = hashlib.sha256(b"voicegw-key-fingerprint\n" + kind.encode() + b"\n" + material)
    return digest.hexdigest()[:16]


# -- first seen -----------------------------------------------------------------------------


class FirstSeen(Protocol):
    """When each named key was first seen. ``mark`` records ``now`` for names not seen before
    and returns the first-seen time of every name asked for."""

    async def mark(self, names: Collection[str], now: float) -> dict[str, float]: ...


class FileFirstSeen:
    """First-seen times in a JSON file (0600) in the data directory, under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def mark(self, names: Collection[str], now: float) -> dict[str, float]:
        return await asyncio.to_thread(self._mark, names, now)

    def _mark(self, names: Collection[str], now: float) -> dict[str, float]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(
            self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seen = self._read()
            missing = [n for n in names if n not in seen]
            if missing:
                seen.update(dict.fromkeys(missing, now))
                self._write(seen)
            return {n: seen[n] for n in names}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _write(self, seen: Mapping[str, float]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dict(seen), f)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


class RedisFirstSeen:
    """First-seen times in one Redis hash, shared by every replica (``HSETNX``: the first
    writer wins), so a pod restart does not make an old key look new."""

    def __init__(self, client: RedisClient, key: str) -> None:
        self.client = client
        self.key = key

    async def mark(self, names: Collection[str], now: float) -> dict[str, float]:
        ordered = list(names)
        if not ordered:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for name in ordered:
                pipe.hsetnx(self.key, name, repr(now))
            pipe.hmget(self.key, ordered)
            *_, values = await pipe.execute()
        return {n: float(v) if v is not None else now for n, v in zip(ordered, values, strict=True)}


# -- sources --------------------------------------------------------------------------------


class ApiKeyLike(Protocol):
    """What the inventory reads of a stored API key record (``gateway.records.ApiKeyRecord``)."""

    @property
    def key_id(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def expires_at(self) -> float | None: ...
    @property
    def revoked_at(self) -> float | None: ...


def signing_keys_of(ring: KeyRing) -> list[SigningKey]:
    """Every key the ring's source holds, including retired keys past ``drop_after`` that a
    key file still carries (the ring itself no longer shows those)."""
    if isinstance(ring, FileKeyRing):
        with contextlib.suppress(Exception):
            return load(ring.path)
    return list(ring.keys())


async def build_inventory(
    *,
    now: float,
    first_seen: FirstSeen,
    signing_keys: Sequence[SigningKey] = (),
    token_ttl_s: float = DAY_S,
    data_keys: crypto.KeyRing | None = None,
    api_keys: Iterable[ApiKeyLike] = (),
    api_policy: KeyPolicy | None = None,
    twilio_secondary: Secret | None = None,
    webhook_secrets: Mapping[KeyKind, Sequence[bytes]] | None = None,
    unavailable: tuple[KeyKind, ...] = (),
) -> KeyInventory:
    """The inventory at ``now``. ``token_ttl_s`` is the longest lifetime of a token a signing
    key signs (access tokens); a retired signing key is needed that long (plus leeway).
    ``webhook_secrets`` are the key bytes of the tool and event secrets, newest first.
    Records first-seen times for keys that carry no creation date."""
    names: list[str] = []
    for key in signing_keys:
        if key.created_at <= 0:
            names.append(f"signing:{key.kid}")
        if key.private is None and key.retired_at is None:
            names.append(f"signing-retired:{key.kid}")
    data_fps: dict[str, str] = {}
    if data_keys is not None:
        for key_id in data_keys.key_ids:
            fp = data_keys.fingerprint(key_id)
            data_fps[key_id] = fp
            names.append(f"data:{fp}")
            if key_id != data_keys.active_key_id:
                names.append(f"data-retired:{fp}")
    secondary_fp = None
    if twilio_secondary is not None:
        secondary_fp = fingerprint("twilio", twilio_secondary.get().encode())
        names.append(f"twilio_secondary:{secondary_fp}")
    webhook_fps: list[tuple[KeyKind, str, bool]] = []  # kind, fingerprint, active
    for kind, keys in (webhook_secrets or {}).items():
        for i, material in enumerate(keys):
            fp = fingerprint(kind.value, material)
            webhook_fps.append((kind, fp, i == 0))
            names.append(f"{kind.value}:{fp}")
            if i:
                names.append(f"{kind.value}-retired:{fp}")
    seen = await first_seen.mark(names, now) if names else {}

    entries: list[KeyEntry] = []
    for key in signing_keys:
        known = key.created_at > 0
        created = key.created_at if known else seen[f"signing:{key.kid}"]
        if key.private is not None:
            entries.append(
                KeyEntry(KeyKind.SIGNING, key.kid, KeyStatus.ACTIVE, created, known,
                         created + ROTATION_PERIOD_S)
            )  # fmt: skip
            continue
        retired = (
            key.retired_at if key.retired_at is not None else seen[f"signing-retired:{key.kid}"]
        )
        drop = key.drop_after
        if drop is None:
            drop = retired + token_ttl_s + RETIRE_LEEWAY_S
        entries.append(
            KeyEntry(KeyKind.SIGNING, key.kid, KeyStatus.RETIRED, created, known, None,
                     retired_at=retired, drop_after=drop)
        )  # fmt: skip
    if data_keys is not None:
        for key_id, fp in data_fps.items():
            created = seen[f"data:{fp}"]
            if key_id == data_keys.active_key_id:
                entries.append(
                    KeyEntry(KeyKind.DATA, key_id, KeyStatus.ACTIVE, created, False,
                             created + ROTATION_PERIOD_S)
                )  # fmt: skip
            else:
                entries.append(
                    KeyEntry(KeyKind.DATA, key_id, KeyStatus.RETIRED, created, False, None,
                             retired_at=seen[f"data-retired:{fp}"])
                )  # fmt: skip
    policy = api_policy or KeyPolicy()
    for record in api_keys:
        state = policy.state(
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            now=now,
        )
        if not state.accepted:
            continue  # revoked or expired: refused, nothing to rotate
        if state is KeyState.GRACE:
            entries.append(
                KeyEntry(KeyKind.API, record.key_id, KeyStatus.RETIRED, record.created_at, True,
                         None, drop_after=record.expires_at)
            )  # fmt: skip
        else:
            entries.append(
                KeyEntry(KeyKind.API, record.key_id, KeyStatus.ACTIVE, record.created_at, True,
                         record.created_at + policy.max_age_s)
            )  # fmt: skip
    if secondary_fp is not None:
        created = seen[f"twilio_secondary:{secondary_fp}"]
        entries.append(
            KeyEntry(KeyKind.TWILIO_SECONDARY, secondary_fp, KeyStatus.ACTIVE, created, False,
                     created + SECONDARY_TOKEN_WINDOW_S)
        )  # fmt: skip
    for kind, fp, active in webhook_fps:
        created = seen[f"{kind.value}:{fp}"]
        if active:
            entries.append(
                KeyEntry(kind, fp, KeyStatus.ACTIVE, created, False, created + ROTATION_PERIOD_S)
            )
        else:
            retired = seen[f"{kind.value}-retired:{fp}"]
            entries.append(
                KeyEntry(kind, fp, KeyStatus.RETIRED, created, False, None,
                         retired_at=retired, drop_after=retired + SECRET_OVERLAP_S)
            )  # fmt: skip
    return KeyInventory(now, tuple(entries), unavailable)
