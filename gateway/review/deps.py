"""Known-bad releases of security-relevant dependencies, compared with what is installed.

Each entry names a published advisory (or, for the Telnyx SDK, the release history that shows
the flaw) and the affected range. Only packages the gateway or its tooling installs are
listed, and only advisories that touch how the gateway uses them; a package with no entry
(PyNaCl, twilio) had no such advisory when this table was written. Keep it short and cited:
this is a tripwire for a bad pin or an old image, not a vulnerability scanner.

Versions compare on their release numbers (``4.88.1``); pre-release suffixes are ignored,
which errs towards reporting a pre-release of a fixed version as affected.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

Version = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KnownBad:
    package: str  # the distribution name, as pip knows it
    first: str | None  # first affected release (None: all before ``fixed``)
    fixed: str  # first release without the flaw
    advisory: str
    why: str

    def affects(self, installed: str) -> bool:
        version = parse(installed)
        if version is None:
            return False
        lower = parse(self.first) if self.first else ()
        upper = parse(self.fixed)
        return upper is not None and lower is not None and lower <= version < upper


KNOWN_BAD: Final[tuple[KnownBad, ...]] = (
    # The SDK's generic ``client.webhooks.unwrap()`` called ``standardwebhooks.Webhook(key)``
    # with the account's Ed25519 *public* key: an HMAC-SHA256 anyone holding the public key
    # can compute, so forged webhooks verify (and real ones, signed with Ed25519, do not).
    # team-telnyx/telnyx-python, src/telnyx/resources/webhooks.py at v3.8.0 and at
    # v4.88.1 through v4.177.0 (PyPI wheels checked); Ed25519 again from 4.178.0. voicegw
    # verifies Telnyx itself (security/signatures.py); this catches code that uses the SDK.
    KnownBad(
        "telnyx", "3.8.0", "3.9.0", "telnyx-python v3.8.0 webhooks.unwrap",
        "webhooks.unwrap() verifies an HMAC keyed by the public key",
    ),
    KnownBad(
        "telnyx", "4.88.1", "4.178.0", "telnyx-python v4.88.1-v4.177.0 webhooks.unwrap",
        "webhooks.unwrap() verifies an HMAC keyed by the public key",
    ),
    KnownBad(
        "pyjwt", None, "2.4.0", "CVE-2022-29217 (GHSA-ffqj-6fqr-9h24)",
        "algorithm confusion when algorithms are not pinned",
    ),
    KnownBad(
        "pyjwt", "2.10.0", "2.10.1", "CVE-2024-53861 (GHSA-75c5-xw7c-p5pm)",
        "issuer check accepts a partial match",
    ),
    KnownBad(
        "cryptography", None, "42.0.0", "CVE-2023-50782 (GHSA-3ww4-gg4f-jr7f)",
        "Bleichenbacher timing oracle in RSA decryption",
    ),
    KnownBad(
        "cryptography", None, "48.0.1", "GHSA-537c-gmf6-5ccf",
        "wheels bundle a vulnerable OpenSSL",
    ),
    KnownBad(
        "starlette", None, "0.40.0", "CVE-2024-47874 (GHSA-f96h-pmfr-66vw)",
        "unbounded multipart/form-data fields (DoS)",
    ),
    KnownBad(
        "starlette", None, "1.3.1", "CVE-2026-54283 (GHSA-82w8-qh3p-5jfq)",
        "form limits ignored for x-www-form-urlencoded bodies (DoS)",
    ),
    KnownBad(
        "h11", None, "0.16.0", "CVE-2025-43859 (GHSA-vqfr-h8mv-ghfj)",
        "lenient chunked-encoding parsing (request smuggling)",
    ),
    KnownBad(
        "python-multipart", None, "0.0.18", "CVE-2024-53981 (GHSA-59g5-xgcq-4qw3)",
        "boundary parsing DoS",
    ),
    KnownBad(
        "redis", "4.2.0", "4.4.4", "CVE-2023-28859 (GHSA-8fww-64cx-x8p5)",
        "a cancelled async command can hand its reply to another caller",
    ),
    KnownBad(
        "redis", "4.5.0", "4.5.4", "CVE-2023-28859 (GHSA-8fww-64cx-x8p5)",
        "a cancelled async command can hand its reply to another caller",
    ),
    KnownBad(
        "sentry-sdk", None, "1.45.1", "CVE-2024-40647 (GHSA-g92j-qhmh-64v2)",
        "environment variables (secrets) passed to subprocesses",
    ),
    KnownBad(
        "sentry-sdk", "2.0.0", "2.8.0", "CVE-2024-40647 (GHSA-g92j-qhmh-64v2)",
        "environment variables (secrets) passed to subprocesses",
    ),
    KnownBad(
        "httpx", None, "0.23.0", "CVE-2021-41945 (GHSA-h8pj-cxx2-jfg2)",
        "improper URL parsing",
    ),
)  # fmt: skip

PACKAGES: Final = tuple(dict.fromkeys(entry.package for entry in KNOWN_BAD))

_RELEASE: Final = re.compile(r"\d+(?:\.\d+)*")


def parse(version: str) -> Version | None:
    """The release numbers of ``version`` (``"4.88.1rc1"`` -> ``(4, 88, 1)``), trailing zeros
    dropped so ``2.4`` equals ``2.4.0``; None when it has none."""
    match = _RELEASE.match(version.strip().lstrip("vV"))
    if match is None:
        return None
    parts = [int(p) for p in match.group().split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def installed_versions() -> dict[str, str]:
    """The installed version of every package in the table (missing ones are left out)."""
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def affected(versions: Mapping[str, str]) -> list[tuple[KnownBad, str]]:
    """Each table entry an installed version falls in, with that version."""
    return [
        (entry, versions[entry.package])
        for entry in KNOWN_BAD
        if entry.package in versions and entry.affects(versions[entry.package])
    ]
