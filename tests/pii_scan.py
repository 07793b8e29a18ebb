"""A pytest plugin that scans everything the test suite logs for personal data in clear.

Every log record of the session (INFO and above, any logger) is formatted as the gateway
writes it (``metrics.logging.JsonFormatter``) and searched; so are the ``*.log`` files that
``voicegw serve`` subprocesses wrote under the session's temporary directory. At the end of
the session any phone number the tests use, any unmasked E.164 number or email address, or
any IP address in clear fails the run, with the offending lines.

Enable it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.pii_scan"]``, or for one
run with ``pytest -p tests.pii_scan``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pytest

from metrics.logging import JsonFormatter

# Phone numbers the tests use (carrier fixtures, recorded frames, redaction vectors).
PHONE_NUMBERS: Final = (
    "+15550100001",
    "+15550100002",
    "+15550100009",
    "+14155550100",
    "+14155550101",
    "+14155550167",
    "+14155550199",
    "+15551234567",
    "+13122010094",
    "+13122123456",
    "+15005550006",
    "+442071838750",
    "+442071234567",
    "+447700900123",
    "+353861234567",
    "+79161234567",
    "+4930123456",
)
EMAILS: Final = (
    "alice@example.com",
    "bob@example.com",
    "operator@example.com",
    "admin@example.com",
    "caller.person@example.com",
)

# The number without its country code: catches E.164, "%2B"-encoded and formatted forms.
_NATIONAL: Final = tuple(
    (number, number[2:] if number[1] in "17" else number[3:]) for number in PHONE_NUMBERS
)
_SEPARATORS = re.compile(r"[ ()\-.]")
_E164 = re.compile(r"(?<![\w+])\+\d{10,15}(?!\d)")
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
MAX_REPORTED: Final = 20


def findings(line: str) -> list[str]:
    """What personal data ``line`` shows in clear (empty when none)."""
    found: list[str] = []
    compact = _SEPARATORS.sub("", line)
    for number, national in _NATIONAL:
        if national in line or national in compact:
            found.append(f"phone {number}")
    found.extend(f"E.164 {m}" for m in _E164.findall(line))
    lowered = line.lower()
    found.extend(f"email {e}" for e in EMAILS if e in lowered)
    found.extend(f"email {m}" for m in _EMAIL.findall(line) if m.lower() not in EMAILS)
    for candidate in _IPV4.findall(line):
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_unspecified):  # those identify no one
            found.append(f"IP {candidate}")
    return found


class _Scanner(logging.Handler):
    """Formats each record like the gateway's log handler and remembers leaking lines."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(JsonFormatter(ip_hash_key=b"pii-scan"))
        self.lines = 0
        self.leaks: list[tuple[str, str, list[str]]] = []
        self.where = "session start"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # pragma: no cover - a formatter failure is a finding too
            line = f"formatter failed on {record.name}: {record.msg!r}"
        self.lines += 1
        found = findings(line)
        if found:
            self.leaks.append((self.where, line, found))


def _scan_files(paths: Iterable[Path]) -> list[tuple[str, str, list[str]]]:
    leaks = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            found = findings(line)
            if found:
                leaks.append((str(path), line, found))
    return leaks


_SCANNER_KEY = pytest.StashKey[_Scanner]()
_LEAKS_KEY = pytest.StashKey[list[tuple[str, str, list[str]]]]()


def _attach(config: pytest.Config) -> _Scanner:
    scanner = config.stash[_SCANNER_KEY]
    root = logging.getLogger()
    if scanner not in root.handlers:
        # Something (``metrics.logging.configure``) replaced the root handlers: rejoin.
        root.addHandler(scanner)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    return scanner


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SCANNER_KEY] = _Scanner()
    _attach(config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _attach(item.config).where = item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _attach(item.config).where = item.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    scanner = config.stash[_SCANNER_KEY]
    logging.getLogger().removeHandler(scanner)
    leaks = list(scanner.leaks)
    basetemp = _basetemp(config)
    if basetemp is not None:
        leaks.extend(_scan_files(sorted(basetemp.rglob("*.log"))))
    config.stash[_LEAKS_KEY] = leaks
    if leaks and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _basetemp(config: pytest.Config) -> Path | None:
    """This session's temporary directory, if a test used one (pytest keeps it private)."""
    factory = getattr(config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    return basetemp if isinstance(basetemp, Path) else None


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    scanner = config.stash.get(_SCANNER_KEY, None)
    leaks = config.stash.get(_LEAKS_KEY, [])
    if scanner is None:
        return
    if not leaks:
        terminalreporter.write_line(
            f"pii scan: {scanner.lines} log lines and the gateways' log files, no personal data"
        )
        return
    terminalreporter.section("personal data in logs", sep="=", red=True, bold=True)
    for where, line, found in leaks[:MAX_REPORTED]:
        terminalreporter.write_line(f"{where}: {', '.join(found)}")
        terminalreporter.write_line(f"    {line[:400]}")
    if len(leaks) > MAX_REPORTED:
        terminalreporter.write_line(f"... and {len(leaks) - MAX_REPORTED} more")
    terminalreporter.write_line(
        f"FAILED pii scan: {len(leaks)} log line(s) show personal data in clear", red=True
    )
