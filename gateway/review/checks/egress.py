"""Requests to the customer's endpoints (tool URLs, ``VOICEGW_EVENTS_URL``): TLS, no endpoint
at an address the egress policy refuses, and the private networks an operator opened.

Pure: the URLs are judged as written (scheme, IP-literal hosts); names are not resolved here.
A production start resolves them once, and every connection resolves and checks again
(``security.egress_http``). Findings name the tool or setting and the host, never the URL (its
path or query may carry a secret).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.review.checks.base import Outcome, Registry, failed, passed, warned
from gateway.review.facts import Facts
from gateway.review.model import Severity
from gateway.settings import Settings
from security.egress import classify, host_of, literal_address, literal_refusal, refusal_message

REGISTRY = Registry()
check = REGISTRY.check
CHECKS = REGISTRY.checks


def _some(items: list[str]) -> str:
    return "; ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


@check(
    "egress.https",
    Severity.CRITICAL,
    "https:// for every tool URL and VOICEGW_EVENTS_URL",
)
def _https(s: Settings, f: Facts) -> Outcome:
    clear = [label for label, url in f.endpoints if urlsplit(url).scheme != "https"]
    if not f.endpoints:
        return passed("no tool or event endpoint is configured")
    if not clear:
        return passed(f"{len(f.endpoints)} endpoint(s), all https with verified TLS")
    if s.production:
        return failed(f"endpoints over plain http: {_some(clear)}")
    return warned(f"endpoints over plain http (refused in production): {_some(clear)}")


@check(
    "egress.private",
    Severity.CRITICAL,
    "point the endpoint at a public address, or list its network in "
    "VOICEGW_ALLOW_PRIVATE_ENDPOINTS",
)
def _private(s: Settings, f: Facts) -> Outcome:
    policy = s.egress
    refused = [
        refusal_message(label, found[1], found[0])
        for label, url in f.endpoints
        if (found := literal_refusal(policy, url)) is not None and found[0] != "cleartext"
    ]
    if refused:
        return failed(f"endpoints at refused addresses: {_some(refused)}")
    return passed(
        "no endpoint names a loopback, private, link-local or metadata address "
        "(names are checked at start-up and on every connection)"
    )


@check(
    "egress.allowed_private",
    Severity.WARNING,
    "keep VOICEGW_ALLOW_PRIVATE_ENDPOINTS to the networks of your own endpoints",
)
def _allowed(s: Settings, f: Facts) -> Outcome:
    inside = []
    for label, url in f.endpoints:
        address = literal_address(host_of(url))
        if address is not None and classify(address) and s.egress.refusal(address) is None:
            inside.append(f"{label} ({address})")
    networks = ", ".join(str(n) for n in s.allow_private_endpoints)
    if not s.allow_private_endpoints and not inside:
        return passed("requests to the customer's endpoints reach public addresses only")
    parts = []
    if networks:
        parts.append(f"VOICEGW_ALLOW_PRIVATE_ENDPOINTS opens {networks} to tool and event requests")
    if inside:
        parts.append(f"endpoints at non-public addresses the policy allows: {_some(inside)}")
    return warned("; ".join(parts))
