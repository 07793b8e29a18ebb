"""The toll-fraud guard's destination rules: which numbers a call the gateway places or
transfers may reach.

A destination (E.164) is refused when

* it is on the **deny list**: a built-in prefix of :data:`DENIED_PREFIXES` (premium-rate
  services, the Caribbean ranges of one-ring and revenue-share fraud inside +1, the
  international non-geographic networks, small territories with high termination rates), or a
  number ``phonenumbers`` classifies as premium-rate, shared-cost or personal-number; unless
  the agent lifts it by prefix (``allow_denied_prefixes``), or else
* it starts with none of the agent's ``allowed_destinations`` (E.164 prefixes; by default the
  country calling codes of the agent's own ``caller_ids`` and ``numbers``).

A ``sip:``/``sips:`` URI whose user part is a number (``sip:+19005550100@trunk``) is judged as
that number; any other SIP URI names a SIP endpoint the operator chose and is not a phone
number: it passes. Everything here is pure (no I/O), so the same :class:`DestinationPolicy`
answers the loader (start-up), the outbound dial and the transfers.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumberType

E164_PREFIX: Final = re.compile(r"\+[1-9]\d{0,14}")
"""An E.164 prefix: ``+`` and 1 to 15 digits (``+1``, ``+44``, ``+1900``)."""
_SIP_NUMBER: Final = re.compile(r"sips?:(\+[1-9]\d{6,14})@.*")


class Refusal(enum.StrEnum):
    """Why a destination is refused (a bounded metric label)."""

    DENIED_PREFIX = "denied_prefix"  # on the deny list (a prefix or a number type)
    NOT_ALLOWED = "not_allowed"  # outside the agent's allowed_destinations


PREMIUM: Final = "premium_rate"
HIGH_RISK: Final = "high_risk"

DENIED_PREFIXES: Final[Mapping[str, str]] = {
    # North America: premium-rate (900) and the retired pay-per-call 976 code.
    "+1900": PREMIUM,
    "+1976": PREMIUM,
    # Caribbean countries inside +1: the one-ring scam and revenue-share fraud ranges that a
    # "+1" allowance would otherwise open.
    **{
        f"+1{area}": HIGH_RISK
        for area in (
            "242 246 264 268 284 345 441 473 649 658 664 758 767 784 809 829 849 868 869 876"
        ).split()
    },
    # International non-geographic networks and services: satellite, international networks,
    # international premium-rate and shared-cost.
    "+808": PREMIUM,
    "+870": HIGH_RISK,
    "+881": HIGH_RISK,
    "+882": HIGH_RISK,
    "+883": HIGH_RISK,
    "+979": PREMIUM,
    # Territories with high termination rates, the usual targets of revenue-share fraud.
    **{
        f"+{code}": HIGH_RISK
        for code in "239 247 252 290 675 677 678 682 683 686 688 690 691 692".split()
    },
    # National premium-rate and shared-cost ranges (phonenumbers classifies most of them too;
    # listed so the guard holds whatever its metadata says).
    "+4470": PREMIUM,
    "+4487": PREMIUM,
    "+4490": PREMIUM,
    "+4491": PREMIUM,
    "+4498": PREMIUM,
    "+3381": PREMIUM,
    "+3382": PREMIUM,
    "+3389": PREMIUM,
    "+49137": PREMIUM,
    "+49900": PREMIUM,
    "+39892": PREMIUM,
    "+39899": PREMIUM,
    "+34803": PREMIUM,
    "+34806": PREMIUM,
    "+34807": PREMIUM,
    "+34905": PREMIUM,
    "+61190": PREMIUM,
    "+64900": PREMIUM,
}
"""The built-in deny list: E.164 prefix -> category (``premium_rate`` or ``high_risk``)."""

DENIED_TYPES: Final = frozenset(
    {PhoneNumberType.PREMIUM_RATE, PhoneNumberType.SHARED_COST, PhoneNumberType.PERSONAL_NUMBER}
)
"""Number types refused wherever they are (``phonenumbers`` metadata)."""


def country_code(prefix: str) -> str | None:
    """The country calling code ``prefix`` starts with (``+1`` for ``+1415``, ``+44`` for
    ``+4420``); None when it is too short to name one (``+4``) or names none (``+999``).
    Country codes are prefix-free, so at most one matches."""
    digits = prefix.removeprefix("+")
    for size in (1, 2, 3):
        if len(digits) >= size and int(digits[:size]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return "+" + digits[:size]
    return None


def default_destinations(own_numbers: Iterable[str]) -> tuple[str, ...]:
    """The country calling codes of an agent's own numbers, in order, once each."""
    codes = (country_code(number) for number in own_numbers)
    return tuple(dict.fromkeys(code for code in codes if code is not None))


def denied_prefix(number: str) -> str | None:
    """The deny-list entry ``number`` falls under: a prefix of :data:`DENIED_PREFIXES`, or
    the name of its denied number type; None when it is not denied."""
    for size in range(min(len(number), 7), 1, -1):
        if number[:size] in DENIED_PREFIXES:
            return number[:size]
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    kind = phonenumbers.number_type(parsed)
    return str(PhoneNumberType.to_string(kind)).lower() if kind in DENIED_TYPES else None


def override_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be an ``allow_denied_prefixes`` entry, or None: it must lift part
    of the deny list (extend one of its prefixes), or at least be narrower than a whole
    country (a premium-rate range that ``phonenumbers`` classifies, such as ``+4490``)."""
    if not E164_PREFIX.fullmatch(prefix):
        return "not an E.164 prefix (+, then 1 to 15 digits)"
    if any(prefix.startswith(denied) for denied in DENIED_PREFIXES):
        return None
    code = country_code(prefix)
    if code is None or len(prefix) <= len(code):
        return "must be narrower than a country calling code (it lifts the deny list there)"
    return None


def destination_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be an ``allowed_destinations`` entry, or None."""
    if not E164_PREFIX.fullmatch(prefix):
        return "not an E.164 prefix (+, then 1 to 15 digits)"
    if country_code(prefix) is None and len(prefix) > 3:
        return "does not start with a country calling code"
    return None


def wide(prefixes: Iterable[str], *, countries: int = 5) -> bool:
    """Whether ``prefixes`` open several countries at once (a prefix shorter than a country
    code, such as ``+4``) or more than ``countries`` countries."""
    codes: set[str] = set()
    for prefix in prefixes:
        code = country_code(prefix)
        if code is None:
            return True
        codes.add(code)
    return len(codes) > countries


def phone_number(destination: str) -> str | None:
    """The E.164 number ``destination`` dials: itself, or a SIP URI's ``+number`` user part;
    None for a SIP URI that names no number."""
    if destination.startswith("+"):
        return destination
    match = _SIP_NUMBER.fullmatch(destination)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """One agent's rules: ``allowed`` prefixes (already defaulted) and ``overrides`` (its
    ``allow_denied_prefixes``)."""

    allowed: tuple[str, ...]
    overrides: tuple[str, ...] = ()

    def check(self, destination: str) -> Refusal | None:
        """Why a call to ``destination`` (E.164 or a SIP URI) is refused, or None."""
        number = phone_number(destination)
        if number is None:
            return None
        if denied_prefix(number) is not None and not any(
            number.startswith(prefix) for prefix in self.overrides
        ):
            return Refusal.DENIED_PREFIX
        if not any(number.startswith(prefix) for prefix in self.allowed):
            return Refusal.NOT_ALLOWED
        return None


REASONS: Final[Mapping[Refusal, str]] = {
    Refusal.DENIED_PREFIX: "the destination is on the deny list (premium-rate or high-risk)",
    Refusal.NOT_ALLOWED: "the destination is not in the agent's allowed_destinations",
}
"""The short reason a refused caller is given (never the number)."""
