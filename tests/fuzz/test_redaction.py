"""Log redaction (``security/redaction.py``) under hostile text.

Every log line and Sentry event passes through ``redact``, and some carry peer-chosen text (a
provider's error code, a carrier's field): redaction must hold for any text and take time in
proportion to it. Two of its patterns used to rescan a long word from each of its positions
(a 4 KB run of letters took over a second); the long runs below keep that from returning
unnoticed (this file would take minutes).

Invariants: ``redact`` and ``redact_value`` accept any text and nested value; a phone number,
an email address and the value of a ``token=`` / ``"api_key": "..."`` assignment never
survive, wherever they sit in the text; text with nothing to redact comes back unchanged.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from security.redaction import REDACTED, redact, redact_value
from tests.fuzz.profile import FUZZ, tally
from tests.fuzz.strategies import json_values

pieces = st.sampled_from(
    [" ", "a", "1", "-", ".", "@", ":", "/", "=", "%2B", "+1", "token", "https://", "eyJ", "\n"]
)
runs = st.tuples(pieces, st.integers(1, 8_000)).map(lambda p: p[0] * (p[1] // len(p[0]) or 1))
texts = st.lists(st.text(max_size=30) | pieces | runs, max_size=6).map("".join)


@FUZZ
@given(
    before=texts,
    after=texts,
    national=st.from_regex(r"[2-9]\d{9}", fullmatch=True),
    user=st.from_regex(r"[a-z]{3,10}", fullmatch=True),
)
def test_personal_data_never_survives_in_any_text(before, after, national, user):
    """A phone number or an email address, as a word of any surrounding text, is masked."""
    phone, email = "+1" + national, f"{user}@example.org"
    out = redact(f"{before} {phone} {email} {after}")
    assert phone not in out and email not in out and national not in out
    tally("rejected")


@FUZZ
@given(
    text=st.text(
        st.characters(exclude_categories=["Nd", "Cs"], exclude_characters="@=:%+"), max_size=200
    )
)
def test_text_without_digits_addresses_or_assignments_is_left_alone(text):
    """Redaction takes only what it must: text with no digit, ``@``, ``=`` or ``:`` (so no
    number, address or assignment) comes back unchanged."""
    assert redact(text) == text
    tally("accepted")


@FUZZ
@given(
    before=texts,
    after=texts,
    name=st.sampled_from(["token", "api_key", "X-Twilio-Signature", "password", "secret"]),
    style=st.sampled_from(["{n}={v}", "{n}: {v}", '"{n}": "{v}"', "'{n}': '{v}'"]),
    secret=st.from_regex(r"[A-Za-z0-9]{16,24}", fullmatch=True),
)
def test_assigned_secrets_never_survive(before, after, name, style, secret):
    line = f"{before} {style.format(n=name, v=secret)} {after}"
    out = redact(line)
    assert secret not in out and REDACTED in out
    tally("rejected")


@FUZZ
@given(value=json_values)
def test_redact_value_any_structure(value):
    redact_value(value)
    tally("accepted")
