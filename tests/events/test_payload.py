"""The event body and the retry policy: pure, no event loop."""

from __future__ import annotations

import json

import pytest

from gateway.events import RetryPolicy, Verdict, verdict
from gateway.events.payload import (
    MAX_TRANSCRIPT_CHARS,
    EventType,
    clean_data,
    event_body,
    iso8601,
    new_event_id,
)
from gateway.events.policy import endpoint_failed


def test_the_body_has_type_id_created_at_and_data():
    event_id = new_event_id()
    data, dropped = clean_data(
        "call-1",
        {
            "agent": "support",
            "carrier": "twilio",
            "direction": "inbound",
            "outcome": "completed",
            "duration_s": 12.34567,
            "providers": ["openai", "echo"],
            "failovers": 1,
            "transfer_to": "sales",
        },
    )
    assert dropped == []
    body = json.loads(event_body(event_id, EventType.ENDED, 1_700_000_000.5, data))
    assert body == {
        "type": "call.ended",
        "id": event_id,
        "created_at": "2023-11-14T22:13:20.500Z",
        "data": {
            "call_id": "call-1",
            "agent": "support",
            "carrier": "twilio",
            "direction": "inbound",
            "outcome": "completed",
            "duration_s": 12.346,
            "providers": ["openai", "echo"],
            "failovers": 1,
            "transfer_to": "sales",
        },
    }


@pytest.mark.parametrize(
    ("data", "dropped"),
    [
        ({"caller": "+15551234567"}, ["(unknown)"]),  # not a field: never sent, name not logged
        ({"transfer_to": "+1 (555) 123-4567"}, ["transfer_to"]),  # a number, not a key
        ({"agent": "555 1234 567"}, ["agent"]),
        ({"providers": ["openai", "+15551234567"]}, ["providers"]),
        ({"failovers": "2"}, ["failovers"]),
        ({"failovers": True}, ["failovers"]),
        ({"duration_s": float("nan")}, ["duration_s"]),  # not JSON
        ({"duration_s": float("inf")}, ["duration_s"]),
        ({"agent": "x" * 129}, ["agent"]),
    ],
)
def test_phone_numbers_unknown_fields_and_wrong_types_are_dropped(data, dropped):
    kept, names = clean_data("call-1", data)
    assert names == dropped
    assert kept == {"call_id": "call-1"}
    assert "555" not in event_body("evt_x", EventType.ENDED, 0.0, kept)


def test_call_id_in_data_cannot_replace_the_events_call():
    kept, _ = clean_data("call-1", {"call_id": "call-2"})
    assert kept == {"call_id": "call-1"}


def test_event_ids_are_unique_and_prefixed():
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("evt_") for i in ids)


def test_iso8601_is_utc_with_milliseconds():
    assert iso8601(0) == "1970-01-01T00:00:00.000Z"


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(first_delay_s=1, max_delay_s=3600)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert policy.delay(13) == 3600 and policy.delay(10_000) == 3600


def test_the_last_attempt_is_at_the_deadline_then_the_event_is_dead():
    policy = RetryPolicy(first_delay_s=1, max_delay_s=3600, give_up_after_s=86400)
    give_up_at = policy.give_up_at(1000.0)
    assert give_up_at == 1000.0 + 86400
    assert policy.next_attempt(1, 1000.0, give_up_at) == 1001.0
    assert policy.next_attempt(20, give_up_at - 10, give_up_at) == give_up_at
    assert policy.next_attempt(21, give_up_at, give_up_at) is None


def test_a_policy_must_make_sense():
    with pytest.raises(ValueError):
        RetryPolicy(first_delay_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(first_delay_s=10, max_delay_s=1)
    with pytest.raises(ValueError):
        RetryPolicy(give_up_after_s=0)


@pytest.mark.parametrize(
    ("status", "expected", "down"),
    [
        (200, Verdict.DELIVERED, False),
        (204, Verdict.DELIVERED, False),
        (301, Verdict.RETRY, False),
        (400, Verdict.RETRY, False),
        (401, Verdict.RETRY, False),
        (410, Verdict.GIVE_UP, False),
        (429, Verdict.RETRY, False),
        (500, Verdict.RETRY, True),
        (503, Verdict.RETRY, True),
    ],
)
def test_what_an_answer_means(status, expected, down):
    assert verdict(status) is expected
    assert endpoint_failed(status) is down


def test_a_transcript_is_sent_as_said_and_cut_at_its_cap():
    turns = [{"role": "caller", "text": "my order is 4155550123"}, {"role": "agent", "text": "ok"}]
    kept, dropped = clean_data("call_1", {"transcript": turns})
    # Opted in by the agent's profile: digits stay (the phone-like filter is for other fields).
    assert kept["transcript"] == turns and dropped == []
    long = [
        {"role": "agent", "text": "x" * (MAX_TRANSCRIPT_CHARS + 10)},
        {"role": "agent", "text": "y"},
    ]
    kept, _ = clean_data("call_1", {"transcript": long})
    assert [len(t["text"]) for t in kept["transcript"]] == [MAX_TRANSCRIPT_CHARS]


@pytest.mark.parametrize(
    "transcript",
    [
        [{"role": "system", "text": "x"}],
        [{"role": "caller", "text": 5}],
        ["caller: hello"],
        [{"role": "caller"}],
    ],
)
def test_a_malformed_transcript_is_dropped(transcript):
    kept, dropped = clean_data("call_1", {"transcript": transcript})
    assert "transcript" not in kept and dropped == ["transcript"]
