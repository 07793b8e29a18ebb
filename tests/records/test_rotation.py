"""Key rotation over real stores: every record moves to the active key in batches, and the
old key can then be removed with everything still readable."""

from __future__ import annotations

import pytest

from gateway.records.base import CallRecord
from gateway.records.privacy import open_numbers, seal_numbers
from gateway.records.sql import SqlStore
from security.crypto import (
    CALL_FROM_COLUMN,
    BlindIndex,
    DecryptionError,
    KeyRing,
    UnknownKeyError,
    key_id_of,
    rotate_data,
)

K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))
INDEX = BlindIndex(b"i" * 32)


async def put_calls(store: SqlStore, ring: KeyRing, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        call_id = f"call-{i:03d}"
        sealed = seal_numbers(
            ring, INDEX, call_id=call_id, from_number=f"+1415555{i:04d}", to_number="+14155550000"
        )
        await store.put_call(
            CallRecord(
                call_id=call_id,
                carrier="twilio",
                carrier_call_id=f"CA{i}",
                started_at=1e9 + i,
                **sealed.fields(),
            )
        )


async def test_rotation_reencrypts_everything_then_old_keys_retire(store: SqlStore) -> None:
    old = KeyRing([("k1", K1)])
    await put_calls(store, old, 23)
    older = KeyRing([("k0", K3)])
    await put_calls(store, older, 4, start=100)
    await store.put_call(
        CallRecord(call_id="no-numbers", carrier="telnyx", carrier_call_id="x", started_at=1e9)
    )
    assert await store.count_calls_by_key() == {"k1": 23, "k0": 4}

    ring = KeyRing([("k2", K2), ("k1", K1), ("k0", K3)])
    assert await rotate_data(store, ring, batch=5) == 27
    assert await store.count_calls_by_key() == {"k2": 27}
    assert await rotate_data(store, ring, batch=5) == 0  # nothing left to do

    retired = KeyRing([("k2", K2)])
    for call in await store.list_calls(limit=1000):
        if call.call_id == "no-numbers":
            assert call.from_number is None and call.key_id is None
            continue
        assert call.from_number is not None and key_id_of(call.from_number) == "k2"
        from_number, to_number = open_numbers(retired, call)
        assert to_number == "+14155550000"
        assert from_number == f"+1415555{int(call.call_id.split('-')[1]):04d}"
        assert call.from_index == INDEX.of(from_number)  # the blind index is unchanged


async def test_rotation_refuses_records_under_unknown_keys(store: SqlStore) -> None:
    await put_calls(store, KeyRing([("lost", K1)]), 2)
    with pytest.raises(UnknownKeyError, match="lost"):
        await rotate_data(store, KeyRing([("k2", K2)]))
    assert await store.count_calls_by_key() == {"lost": 2}


async def test_a_ciphertext_copied_to_another_row_fails(store: SqlStore) -> None:
    ring = KeyRing([("k1", K1)])
    await put_calls(store, ring, 2)
    a, b = await store.get_call("call-000"), await store.get_call("call-001")
    assert a is not None and b is not None and a.from_number is not None
    await store.reencrypt_call("call-001", "k1", a.from_number, b.to_number, "k1")
    moved = await store.get_call("call-001")
    assert moved is not None and moved.from_number is not None
    with pytest.raises(DecryptionError):
        open_numbers(ring, moved)
    with pytest.raises(DecryptionError):  # and into another column of its own row
        ring.decrypt_field(a.from_number, record_id="call-000", column="calls.to_number")
    assert ring.decrypt_field(a.from_number, record_id="call-000", column=CALL_FROM_COLUMN)
