"""Field encryption for personal data at rest, and blind indexes to find it again.

``KeyRing`` holds the data keys (32 bytes each, named by a short id); the first is active and
encrypts, the others only decrypt, until ``rotate_data`` has re-encrypted everything with the
active key and they can be removed. A field's ciphertext is::

    version (1 byte, 0x01) | key id length (1 byte) | key id (ASCII) | nonce (12) | AES-GCM

AES-256-GCM with a random 96-bit nonce; the associated data binds the key id, the record id
and the column, so a ciphertext copied to another row or column does not decrypt.

``BlindIndex`` finds a phone number without decrypting anything: HMAC-SHA256 under its own key
over the number's E.164 form (``normalize_e164``). Keys come from configuration or a key file,
never from the database, and never appear in a ``repr`` or a log line. In development,
``load_or_create_dev_keys`` generates them into the data directory (mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import phonenumbers
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from security.exceptions import ConfigError, SecurityError

__all__ = [
    "CALL_FROM_COLUMN",
    "CALL_TO_COLUMN",
    "DEV_KEYS_FILE",
    "BlindIndex",
    "CryptoError",
    "DecryptionError",
    "DevDataKeys",
    "KeyRing",
    "RotatableStore",
    "UnknownKeyError",
    "generate_key",
    "key_id_of",
    "load_or_create_dev_keys",
    "normalize_e164",
    "rotate_data",
]

FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
DEV_KEYS_FILE: Final = "data-keys.json"

CALL_FROM_COLUMN: Final = "calls.from_number"
CALL_TO_COLUMN: Final = "calls.to_number"
"""Column names bound into call-number ciphertexts (with the call id as record id)."""

_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_AD_DOMAIN: Final = b"voicegw-field-v1"
_INDEX_DOMAIN: Final = b"voicegw-blind-index-v1:"


class CryptoError(SecurityError):
    """Root of the errors of this module."""


class DecryptionError(CryptoError):
    """A ciphertext is malformed, was tampered with, or belongs to another record or column."""


class UnknownKeyError(DecryptionError):
    """A ciphertext names a key id the key ring does not hold."""


def generate_key() -> bytes:
    """A fresh random 32-byte data key."""
    return secrets.token_bytes(KEY_BYTES)


def _lv(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _associated_data(key_id: str, record_id: str, column: str) -> bytes:
    # Length-prefixed, so no two (key, record, column) triples share associated data.
    return (
        _AD_DOMAIN
        + _lv(key_id.encode())
        + _lv(record_id.encode("utf-8", "surrogatepass"))
        + _lv(column.encode())
    )


def key_id_of(blob: bytes) -> str:
    """The id of the key a field ciphertext was made with. Raises ``DecryptionError``."""
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        raise DecryptionError("unknown ciphertext format")
    length = blob[1]
    if length == 0 or len(blob) < 2 + length + NONCE_BYTES + 16:
        raise DecryptionError("truncated ciphertext")
    try:
        return blob[2 : 2 + length].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("malformed key id") from None


DERIVED_KEY_USES: Final = (b"voicegw recording v1",)
"""What ``KeyRing.derive`` may derive sub-keys for (each use its own key)."""


class KeyRing:
    """Data keys by id; the first is active. Immutable; ``repr`` shows ids only."""

    __slots__ = ("_active", "_ciphers", "_derived", "_fingerprints")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("encryption keys: at least one key is required")
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not _KEY_ID.fullmatch(key_id):
                raise ConfigError(
                    f"encryption keys: key id {key_id!r} must be 1-32 of A-Z a-z 0-9 _ . -"
                )
            if key_id in ciphers:
                raise ConfigError(f"encryption keys: key id {key_id!r} appears twice")
            if len(key) != KEY_BYTES:
                raise ConfigError(f"encryption keys: key {key_id!r} must be {KEY_BYTES} bytes")
            ciphers[key_id] = AESGCM(key)
        self._active = keys[0][0]
        self._ciphers = ciphers
        # A public name for each key's material (key age is tracked by it: an id can be
        # reused for new material); a truncated domain-separated hash of 256 random bits.
        self._fingerprints = {
            key_id: hashlib.sha256(b"voicegw-data-key-fingerprint\n" + key).hexdigest()[:16]
            for key_id, key in keys
        }
        # Sub-keys for other uses (recordings), derived once per key with HKDF-SHA256 so the
        # data keys themselves are not kept beyond the ciphers.
        self._derived: dict[tuple[str, bytes], bytes] = {}
        for key_id, key in keys:
            for info in DERIVED_KEY_USES:
                self._derived[key_id, info] = HKDF(
                    algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info
                ).derive(key)

    @classmethod
    def from_spec(cls, spec: str) -> KeyRing:
        """Parse ``"k2:BASE64,k1:BASE64"`` (commas or newlines; ``#`` starts a comment)."""
        keys: list[tuple[str, bytes]] = []
        for line in spec.splitlines():
            for item in line.split("#", 1)[0].split(","):
                item = item.strip()
                if not item:
                    continue
                key_id, sep, encoded = item.partition(":")
                if not sep:
                    raise ConfigError("encryption keys: each entry must be KEY_ID:BASE64_KEY")
                try:
                    key = base64.b64decode(encoded.strip(), validate=True)
                except (binascii.Error, ValueError):
                    raise ConfigError(
                        f"encryption keys: key {key_id.strip()!r} is not valid base64"
                    ) from None
                keys.append((key_id.strip(), key))
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Read a spec (see ``from_spec``) from a file nobody but its owner may read."""
        _check_private(path)
        return cls.from_spec(path.read_text())

    @property
    def active_key_id(self) -> str:
        return self._active

    def derive(self, key_id: str, info: bytes) -> bytes:
        """The 32-byte sub-key of data key ``key_id`` for the use ``info`` (one of
        ``DERIVED_KEY_USES``). Raises ``KeyError`` for an unknown key or use."""
        return self._derived[key_id, info]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def fingerprint(self, key_id: str) -> str:
        """A public fingerprint of key ``key_id``'s material. Raises ``KeyError``."""
        return self._fingerprints[key_id]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._ciphers

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active!r}, keys={list(self._ciphers)!r})"

    def encrypt_field(self, plaintext: str, *, record_id: str, column: str) -> bytes:
        """Encrypt ``plaintext`` with the active key, bound to ``record_id`` and ``column``."""
        key_id = self._active
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce,
            plaintext.encode("utf-8"),
            _associated_data(key_id, record_id, column),
        )
        kid = key_id.encode()
        return bytes((FORMAT_VERSION, len(kid))) + kid + nonce + sealed

    def decrypt_field(self, blob: bytes, *, record_id: str, column: str) -> str:
        """The plaintext of ``blob`` if it was made for this record and column.

        Raises ``UnknownKeyError`` for a key id not in the ring and ``DecryptionError`` for
        anything else (tampered, truncated, or moved from another row or column).
        """
        key_id = key_id_of(blob)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyError(f"no key {key_id!r} in the key ring")
        start = 2 + len(key_id)
        nonce = blob[start : start + NONCE_BYTES]
        try:
            plain = cipher.decrypt(
                nonce, blob[start + NONCE_BYTES :], _associated_data(key_id, record_id, column)
            )
        except InvalidTag:
            raise DecryptionError("ciphertext does not authenticate for this field") from None
        return plain.decode("utf-8")

    def reencrypt_field(self, blob: bytes, *, record_id: str, column: str) -> bytes:
        """``blob`` decrypted and encrypted again with the active key."""
        plain = self.decrypt_field(blob, record_id=record_id, column=column)
        return self.encrypt_field(plain, record_id=record_id, column=column)


def normalize_e164(number: str, default_region: str = "US") -> str:
    """``number`` in E.164 (``+14155550123``); national forms use ``default_region``.

    Accepts the usual formatting (spaces, dashes, brackets, a ``tel:`` prefix, ``00``
    international prefix where the region uses it). Raises ``ValueError`` for anything that
    is not a possible phone number.
    """
    text = number.strip()
    if text.lower().startswith("tel:"):
        text = text[4:].split(";", 1)[0]
    if not text or len(text) > 64:
        raise ValueError("not a phone number")
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


class BlindIndex:
    """Finds equal phone numbers without decrypting: HMAC-SHA256 of the E.164 form, hex."""

    __slots__ = ("_default_region", "_key")

    def __init__(self, key: bytes, *, default_region: str = "US") -> None:
        if len(key) < KEY_BYTES:
            raise ConfigError(f"blind index key must be at least {KEY_BYTES} bytes")
        self._key = key
        self._default_region = default_region

    def __repr__(self) -> str:
        return "BlindIndex(key=**********)"

    def normalize(self, number: str) -> str:
        """``number`` in E.164 with this index's default region (see ``normalize_e164``)."""
        return normalize_e164(number, self._default_region)

    def of(self, number: str) -> str:
        """The index of ``number``. Raises ``ValueError`` if it is not a phone number."""
        e164 = normalize_e164(number, self._default_region)
        return hmac.new(self._key, _INDEX_DOMAIN + e164.encode(), hashlib.sha256).hexdigest()

    __call__ = of

    @classmethod
    def from_base64(cls, encoded: str, *, default_region: str = "US") -> BlindIndex:
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("blind index key is not valid base64") from None
        return cls(key, default_region=default_region)


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} must not be readable by group or others (chmod 600)")


@dataclass(frozen=True, slots=True, repr=False)
class DevDataKeys:
    """Development data keys: a key-ring spec and a blind-index key (base64)."""

    encryption_keys: str
    blind_index_key: str

    def __repr__(self) -> str:
        return "DevDataKeys(**********)"

    def keyring(self) -> KeyRing:
        return KeyRing.from_spec(self.encryption_keys)

    def blind_index(self, *, default_region: str = "US") -> BlindIndex:
        return BlindIndex.from_base64(self.blind_index_key, default_region=default_region)


def load_or_create_dev_keys(data_dir: Path) -> DevDataKeys:
    """The development data keys in ``data_dir``, generated (mode 0600) on first use.

    The directory is created mode 0700. Never used in production: settings refuse to start
    without configured keys there.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    path = data_dir / DEV_KEYS_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _check_private(path)
        return DevDataKeys(**json.loads(path.read_text()))
    keys = DevDataKeys(
        encryption_keys="dev1:" + base64.b64encode(generate_key()).decode(),
        blind_index_key=base64.b64encode(generate_key()).decode(),
    )
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"encryption_keys": keys.encryption_keys, "blind_index_key": keys.blind_index_key}, f
        )
    return keys


# -- key rotation ------------------------------------------------------------------------------


class SealedCall(Protocol):
    @property
    def call_id(self) -> str: ...
    @property
    def from_number(self) -> bytes | None: ...
    @property
    def to_number(self) -> bytes | None: ...


class RotatableStore(Protocol):
    """The part of a ``Store`` that key rotation uses."""

    async def count_calls_by_key(self) -> dict[str, int]: ...
    async def calls_with_key(self, key_id: str, limit: int) -> Sequence[SealedCall]: ...
    async def reencrypt_call(
        self,
        call_id: str,
        old_key_id: str,
        from_number: bytes | None,
        to_number: bytes | None,
        key_id: str,
    ) -> bool: ...


async def rotate_data(store: RotatableStore, keyring: KeyRing, batch: int = 500) -> int:
    """Re-encrypt every call record not under the active key; return how many were changed.

    Works in batches of ``batch`` records; each record is replaced only if it still has the
    key it was read with (a concurrent writer wins). Raises ``UnknownKeyError`` when records
    use a key the ring does not hold. Afterwards ``store.count_calls_by_key()`` names only the
    active key, and the others can be removed from the configuration.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    active = keyring.active_key_id
    in_use = await store.count_calls_by_key()
    missing = sorted(k for k in in_use if k not in keyring)
    if missing:
        raise UnknownKeyError(f"records use keys not in the key ring: {', '.join(missing)}")
    total = 0
    for key_id in _others(in_use, active):
        while True:
            calls = await store.calls_with_key(key_id, batch)
            if not calls:
                break
            changed = 0
            for call in calls:
                new_from = _reseal(keyring, call.from_number, call.call_id, CALL_FROM_COLUMN)
                new_to = _reseal(keyring, call.to_number, call.call_id, CALL_TO_COLUMN)
                if await store.reencrypt_call(call.call_id, key_id, new_from, new_to, active):
                    changed += 1
            total += changed
            if not changed:  # another writer keeps using the old key; stop rather than spin
                break
    return total


def _others(in_use: Iterable[str], active: str) -> list[str]:
    return sorted(k for k in in_use if k != active)


def _reseal(keyring: KeyRing, blob: bytes | None, record_id: str, column: str) -> bytes | None:
    if blob is None:
        return None
    return keyring.reencrypt_field(blob, record_id=record_id, column=column)
