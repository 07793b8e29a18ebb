"""Field encryption, key rings, blind indexes and E.164 normalisation (no event loop)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from security.crypto import (
    DEV_KEYS_FILE,
    BlindIndex,
    DecryptionError,
    KeyRing,
    UnknownKeyError,
    generate_key,
    key_id_of,
    load_or_create_dev_keys,
    normalize_e164,
)
from security.exceptions import ConfigError

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([("k2", K2), ("k1", K1)])


def test_round_trip_with_active_key(ring: KeyRing) -> None:
    blob = ring.encrypt_field("+14155550123", record_id="call-1", column="calls.from_number")
    assert key_id_of(blob) == "k2" == ring.active_key_id
    assert b"4155550123" not in blob
    assert (
        ring.decrypt_field(blob, record_id="call-1", column="calls.from_number") == "+14155550123"
    )
    assert blob[0] == 1  # format version


def test_nonce_is_random(ring: KeyRing) -> None:
    a = ring.encrypt_field("x", record_id="r", column="c")
    b = ring.encrypt_field("x", record_id="r", column="c")
    assert a != b


@pytest.mark.parametrize(
    ("record_id", "column"),
    [
        ("call-2", "calls.from_number"),
        ("call-1", "calls.to_number"),
        ("call-1 ", "calls.from_number"),
    ],
)
def test_ciphertext_moved_to_another_row_or_column_fails(
    ring: KeyRing, record_id: str, column: str
) -> None:
    blob = ring.encrypt_field("+14155550123", record_id="call-1", column="calls.from_number")
    with pytest.raises(DecryptionError):
        ring.decrypt_field(blob, record_id=record_id, column=column)


def test_tampering_is_detected(ring: KeyRing) -> None:
    blob = ring.encrypt_field("+14155550123", record_id="r", column="c")
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01
        with pytest.raises(DecryptionError):
            ring.decrypt_field(bytes(damaged), record_id="r", column="c")
    for cut in (0, 1, 5, len(blob) - 1):
        with pytest.raises(DecryptionError):
            ring.decrypt_field(blob[:cut], record_id="r", column="c")


def test_key_id_cannot_be_swapped() -> None:
    # Same key bytes under two ids: the id is bound in, so relabelling fails.
    ring = KeyRing([("a", K1), ("b", K1)])
    blob = ring.encrypt_field("secret", record_id="r", column="c")
    relabelled = blob[:2] + b"b" + blob[3:]
    with pytest.raises(DecryptionError):
        ring.decrypt_field(relabelled, record_id="r", column="c")


def test_old_keys_decrypt_and_retired_keys_fail(ring: KeyRing) -> None:
    old = KeyRing([("k1", K1)]).encrypt_field("v", record_id="r", column="c")
    assert ring.decrypt_field(old, record_id="r", column="c") == "v"
    resealed = ring.reencrypt_field(old, record_id="r", column="c")
    assert key_id_of(resealed) == "k2"
    retired = KeyRing([("k2", K2)])
    assert retired.decrypt_field(resealed, record_id="r", column="c") == "v"
    with pytest.raises(UnknownKeyError):
        retired.decrypt_field(old, record_id="r", column="c")


def test_spec_parsing() -> None:
    ring = KeyRing.from_spec(f"k2:{b64(K2)}, k1:{b64(K1)}")
    assert ring.key_ids == ("k2", "k1")
    ring = KeyRing.from_spec(f"# rotated 2026-01\nk3:{b64(K2)}\nk2:{b64(K1)}  # old\n")
    assert ring.key_ids == ("k3", "k2")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least one"),
        ("nokey", "KEY_ID:BASE64"),
        ("k1:not base64!", "base64"),
        (f"k1:{b64(b'short')}", "32 bytes"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "twice"),
        (f"bad id:{b64(K1)}", "key id"),
    ],
)
def test_bad_specs_name_the_problem_not_the_key(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        KeyRing.from_spec(spec)
    assert b64(K1) not in str(info.value)


def test_repr_never_shows_keys(ring: KeyRing) -> None:
    text = repr(ring) + str(ring) + repr(BlindIndex(K1))
    for key in (K1, K2):
        assert b64(key) not in text and key.hex() not in text
    assert "k2" in repr(ring)


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"k1:{b64(K1)}\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        KeyRing.from_file(path)
    path.chmod(0o600)
    assert KeyRing.from_file(path).key_ids == ("k1",)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+14155550123", "+14155550123"),
        ("(415) 555-0123", "+14155550123"),
        ("415.555.0123", "+14155550123"),
        ("tel:+1-415-555-0123;ext=1", "+14155550123"),
        (" +44 20 7946 0958 ", "+442079460958"),
        ("+33 1 23 45 67 89", "+33123456789"),
    ],
)
def test_normalize_e164(raw: str, e164: str) -> None:
    assert normalize_e164(raw) == e164


@pytest.mark.parametrize(
    "raw", ["", "anonymous", "client:alice", "+1", "12", "+999999999999999999", "1" * 100, "++1415"]
)
def test_normalize_rejects_garbage(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_e164(raw)


def test_normalize_uses_the_default_region() -> None:
    assert normalize_e164("020 7946 0958", "GB") == "+442079460958"


def test_blind_index() -> None:
    index = BlindIndex(K1)
    a = index.of("+14155550123")
    assert a == index.of("(415) 555-0123") == index("tel:+14155550123")
    assert len(a) == 64 and "4155550123" not in a
    assert a != index.of("+14155550124")
    assert a != BlindIndex(K2).of("+14155550123")
    with pytest.raises(ValueError):
        index.of("anonymous")
    with pytest.raises(ConfigError):
        BlindIndex(b"short")
    assert BlindIndex.from_base64(b64(K1)).of("+14155550123") == a


def test_dev_keys_are_private_and_stable(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    keys = load_or_create_dev_keys(data_dir)
    path = data_dir / DEV_KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    again = load_or_create_dev_keys(data_dir)
    assert again == keys
    assert keys.keyring().key_ids == ("dev1",)
    blob = keys.keyring().encrypt_field("x", record_id="r", column="c")
    assert again.keyring().decrypt_field(blob, record_id="r", column="c") == "x"
    assert keys.blind_index().of("+14155550123") == again.blind_index().of("+14155550123")
    assert json.loads(path.read_text())["encryption_keys"] not in repr(keys)


def test_generate_key() -> None:
    assert len(generate_key()) == 32 and generate_key() != generate_key()
