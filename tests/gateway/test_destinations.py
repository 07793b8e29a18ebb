"""The toll-fraud guard's destination rules: allowed prefixes, the deny list, overrides by
prefix, defaults from the agent's own numbers, SIP URIs."""

from __future__ import annotations

import pytest

from gateway.calls.destinations import (
    DENIED_PREFIXES,
    DestinationPolicy,
    Refusal,
    country_code,
    default_destinations,
    denied_prefix,
    destination_problem,
    override_problem,
    phone_number,
    wide,
)

US = DestinationPolicy(("+1",))


@pytest.mark.parametrize(
    ("number", "refusal"),
    [
        ("+14155550123", None),
        ("+16505550100", None),
        ("+19005550123", Refusal.DENIED_PREFIX),  # premium rate
        ("+19765550123", Refusal.DENIED_PREFIX),
        ("+18095550123", Refusal.DENIED_PREFIX),  # Dominican Republic, inside +1
        ("+18765550123", Refusal.DENIED_PREFIX),  # Jamaica
        ("+442079460000", Refusal.NOT_ALLOWED),  # London: not in +1
        ("+449012345678", Refusal.DENIED_PREFIX),  # denied before not-allowed
        ("+88216123456", Refusal.DENIED_PREFIX),
    ],
)
def test_allowed_prefixes_and_the_deny_list(number, refusal):
    assert US.check(number) is refusal


def test_premium_and_shared_cost_numbers_are_denied_by_type_too():
    # Not on the prefix list: phonenumbers classifies them (Netherlands 0900: premium rate).
    assert not any("+31900123456".startswith(prefix) for prefix in DENIED_PREFIXES)
    assert denied_prefix("+31900123456") == "premium_rate"
    assert DestinationPolicy(("+31",)).check("+31900123456") is Refusal.DENIED_PREFIX
    assert DestinationPolicy(("+31",)).check("+31201234567") is None


def test_an_override_lifts_the_deny_list_by_prefix_only():
    lifted = DestinationPolicy(("+1",), ("+1900",))
    assert lifted.check("+19005550123") is None
    assert lifted.check("+18095550123") is Refusal.DENIED_PREFIX  # another denied range
    narrow = DestinationPolicy(("+1",), ("+1900555",))
    assert narrow.check("+19005550123") is None
    assert narrow.check("+19006660123") is Refusal.DENIED_PREFIX
    # Lifting the deny list does not widen the allowed destinations.
    assert DestinationPolicy(("+44",), ("+1900",)).check("+19005550123") is Refusal.NOT_ALLOWED
    # A type-denied number is lifted by a prefix narrower than its country.
    assert DestinationPolicy(("+31",), ("+31900",)).check("+31900123456") is None


def test_overrides_must_be_narrower_than_a_country_or_on_the_list():
    assert override_problem("+1900") is None
    assert override_problem("+19005") is None
    assert override_problem("+882") is None  # a deny-list entry itself
    assert override_problem("+4490") is None
    assert override_problem("+31900") is None
    for whole in ("+1", "+44", "+33"):
        assert "narrower than a country calling code" in (override_problem(whole) or "")
    assert override_problem("1900") and override_problem("+") and override_problem("+19x")


def test_allowed_destination_entries():
    for good in ("+1", "+44", "+4420", "+4"):
        assert destination_problem(good) is None
    assert destination_problem("+9991") == "does not start with a country calling code"
    assert destination_problem("44") and destination_problem("+") and destination_problem("+0")


def test_defaults_are_the_country_codes_of_the_agents_numbers():
    assert default_destinations(["+14155550123", "+442079460000", "+16505550100"]) == (
        "+1",
        "+44",
    )
    assert default_destinations([]) == ()
    # No allowed prefix: nothing is allowed.
    assert DestinationPolicy(()).check("+14155550123") is Refusal.NOT_ALLOWED


def test_country_codes():
    assert country_code("+14155550123") == "+1"
    assert country_code("+4420") == "+44"
    assert country_code("+35312345") == "+353"
    assert country_code("+4") is None and country_code("+999") is None


def test_wide_allowances():
    assert not wide(["+1", "+44", "+4420"])
    assert wide(["+4"])  # every country code that starts with 4
    assert wide(["+1", "+44", "+33", "+49", "+34", "+39"])


def test_sip_uris():
    assert phone_number("sip:+19005550123@trunk.example.com") == "+19005550123"
    assert phone_number("sip:desk@pbx.example.com") is None
    assert US.check("sip:+19005550123@trunk.example.com") is Refusal.DENIED_PREFIX
    assert US.check("sips:+442079460000@trunk.example.com") is Refusal.NOT_ALLOWED
    assert US.check("sip:desk@pbx.example.com") is None
