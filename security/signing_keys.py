"""The Ed25519 key ring that signs and verifies session tokens.

One key signs; retired keys stay in the ring as public keys only, until the last token they
signed has expired (``retired_at + token_ttl_s + leeway``), so the JWKS keeps publishing them
exactly that long. A key's ``kid`` is its RFC 7638 JWK thumbprint.

Two sources:

* ``FileKeyRing(path)``: a JSON file, mode 0600 in a 0700 directory (``VOICEGW_DATA_DIR`` by
  default), created on first use. ``rotate(path, token_ttl_s)`` adds a key, retires the old
  one (its private half is deleted) and drops retired keys whose tokens have all expired. A
  running gateway notices the change (the file is re-read when its modification time moves,
  at most every ``reload_interval_s``, and at once on an unknown ``kid``), so ``voicegw keys
  rotate`` needs no restart and replicas sharing the file agree.
* ``KeyRing.from_seeds(seeds)``: keys handed in (e.g. from ``VOICEGW_SIGNING_KEY``): the first
  seed signs, the others only verify.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from security.exceptions import ConfigError

FORMAT_VERSION: Final = 1
DEFAULT_FILENAME: Final = "signing-keys.json"
RETIRE_LEEWAY_S: Final = 300
"""Retired keys are kept this much longer than their last token's lifetime (clock skew)."""

Clock = Callable[[], float]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(public_raw: bytes) -> str:
    """RFC 7638 thumbprint of an Ed25519 public key: the canonical ``kid``."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url(public_raw)}, separators=(",", ":")
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key of the ring. ``private`` is None once the key is retired."""

    kid: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None
    created_at: float
    retired_at: float | None = None
    drop_after: float | None = None  # when a retired key leaves the ring

    @classmethod
    def generate(cls, now: float) -> SigningKey:
        return cls.from_private(Ed25519PrivateKey.generate(), now)

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey, now: float) -> SigningKey:
        public = private.public_key()
        return cls(_kid(public), public, private, created_at=now)

    @property
    def public_raw(self) -> bytes:
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def jwk(self) -> dict[str, str]:
        """The public key as an OKP JWK (RFC 8037)."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(self.public_raw),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def retired(self, now: float, token_ttl_s: float) -> SigningKey:
        return SigningKey(
            self.kid,
            self.public,
            None,
            self.created_at,
            retired_at=now,
            drop_after=now + token_ttl_s + RETIRE_LEEWAY_S,
        )


def _kid(public: Ed25519PublicKey) -> str:
    return thumbprint(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


class KeyRing:
    """The signing key and every public key that still verifies. Read-only view."""

    def __init__(self, keys: Sequence[SigningKey], *, clock: Clock = time.time) -> None:
        active = [k for k in keys if k.private is not None]
        if len(active) != 1:
            raise ConfigError("signing key ring must have exactly one active key")
        self._clock = clock
        self._active = active[0]
        self._keys = {k.kid: k for k in keys}

    @classmethod
    def from_seeds(cls, seeds: Sequence[str], *, clock: Clock = time.time) -> KeyRing:
        """Keys given as base64url Ed25519 seeds: the first signs, the rest only verify."""
        if not seeds:
            raise ConfigError("VOICEGW_SIGNING_KEY: no key given")
        keys: list[SigningKey] = []
        for index, seed in enumerate(seeds):
            try:
                raw = b64url_decode(seed.strip())
                if len(raw) != 32:
                    raise ValueError
                private = Ed25519PrivateKey.from_private_bytes(raw)
            except ValueError:
                raise ConfigError(
                    f"VOICEGW_SIGNING_KEY: key {index + 1} is not a base64url Ed25519 seed"
                ) from None
            key = SigningKey.from_private(private, 0.0)
            keys.append(key if index == 0 else SigningKey(key.kid, key.public, None, 0.0))
        return cls(keys, clock=clock)

    @property
    def active(self) -> SigningKey:
        self.refresh()
        return self._active

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The key that verifies tokens with header ``kid``, if it is still in the ring."""
        key = self._keys.get(kid)
        if key is None or (key.drop_after is not None and key.drop_after <= self._clock()):
            return None
        return key.public

    def keys(self) -> list[SigningKey]:
        now = self._clock()
        return [k for k in self._keys.values() if k.drop_after is None or k.drop_after > now]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK set published at ``/.well-known/jwks.json``: active key first."""
        self.refresh()
        keys = sorted(self.keys(), key=lambda k: (k.private is None, -k.created_at))
        return {"keys": [k.jwk() for k in keys]}

    def refresh(self, *, force: bool = False) -> None:
        """Pick up changes from the key source, if it has one."""


class FileKeyRing(KeyRing):
    """A key ring kept in a JSON file (0600), created on first use, re-read when it changes."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        reload_interval_s: float = 5.0,
        clock: Clock = time.time,
    ) -> None:
        self._path = path
        self._reload_interval_s = reload_interval_s
        self._next_check = 0.0
        if create and not path.exists():
            with _locked(path):
                if not path.exists():
                    _write(path, [SigningKey.generate(clock())])
        self._mtime = path.stat().st_mtime_ns if path.exists() else 0
        super().__init__(load(path), clock=clock)

    @property
    def path(self) -> Path:
        return self._path

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        key = super().public_key(kid)
        if key is None:
            # Another process may have rotated: look once (rate-limited), then answer.
            self.refresh()
            key = super().public_key(kid)
        return key

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + self._reload_interval_s
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime and not force:
            return
        keys = load(self._path)
        KeyRing.__init__(self, keys, clock=self._clock)
        self._mtime = mtime


def default_path(data_dir: Path) -> Path:
    return data_dir / DEFAULT_FILENAME


def load(path: Path) -> list[SigningKey]:
    """The keys in ``path``. Raises ``ConfigError`` if it is unreadable, malformed or readable
    by anyone but its owner."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise ConfigError(f"signing key file {path} does not exist") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"signing key file {path} must be readable by its owner only (0600)")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError("unknown format version")
        return [_decode(item) for item in data["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"signing key file {path} is invalid ({type(exc).__name__})") from None


def rotate(path: Path, token_ttl_s: float, *, clock: Clock = time.time) -> SigningKey:
    """Add a new signing key to the ring in ``path`` (created if missing), retire the active
    one and drop retired keys no token can need any more. Returns the new key. Safe against
    concurrent rotations (file lock) and crashes (atomic replace)."""
    with _locked(path):
        now = clock()
        keys = load(path) if path.exists() else []
        kept = [
            k.retired(now, token_ttl_s) if k.private is not None else k
            for k in keys
            if k.drop_after is None or k.drop_after > now
        ]
        new = SigningKey.generate(now)
        _write(path, [new, *kept])
        return new


def _encode(key: SigningKey) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kid": key.kid,
        "public": b64url(key.public_raw),
        "created_at": key.created_at,
        "retired_at": key.retired_at,
        "drop_after": key.drop_after,
    }
    if key.private is not None:
        item["private"] = b64url(
            key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        )
    return item


def _decode(item: dict[str, Any]) -> SigningKey:
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(item["public"]))
    private = None
    if item.get("private"):
        private = Ed25519PrivateKey.from_private_bytes(b64url_decode(item["private"]))
        if private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != b64url_decode(
            item["public"]
        ):
            raise ValueError("private and public key differ")
    kid = _kid(public)
    if item["kid"] != kid:
        raise ValueError("kid is not the key's thumbprint")
    return SigningKey(
        kid,
        public,
        private,
        float(item["created_at"]),
        retired_at=item.get("retired_at"),
        drop_after=item.get("drop_after"),
    )


def _write(path: Path, keys: Sequence[SigningKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"version": FORMAT_VERSION, "keys": [_encode(k) for k in keys]}, indent=1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
