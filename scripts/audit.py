"""Dependency audit for ``scripts/check``: pip-audit over the installed environment, when its
vulnerability database answers.

pip-audit looks each installed release up in PyPI's JSON API
(``https://pypi.org/pypi/NAME/VERSION/json`` lists the release's known vulnerabilities) or in
OSV (``https://api.osv.dev``). Both are probed first, with a short timeout. When neither
answers (offline, or behind a registry mirror that lacks that API) the audit is skipped with a
notice and the exit status is 0, so the rest of the check runs. Otherwise pip-audit runs and
its status is ours: 1 when any installed package has a known vulnerability. The project
itself is not on PyPI: editable installs are skipped.

Usage: ``.venv/bin/python scripts/audit.py`` (extra arguments go to pip-audit).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 3.0


def _answers(request: urllib.request.Request) -> bool:
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            json.load(response)
            return True
    except (OSError, ValueError):  # URLError, HTTPError and timeouts are OSErrors
        return False


def service() -> str | None:
    """The first vulnerability service that answers: ``pypi``, ``osv``, or None."""
    # A release that certainly exists: pip-audit's own, as installed here.
    version = importlib.metadata.version("pip-audit")
    if _answers(urllib.request.Request(f"https://pypi.org/pypi/pip-audit/{version}/json")):
        return "pypi"
    query = {"package": {"name": "pip-audit", "ecosystem": "PyPI"}, "version": version}
    osv = urllib.request.Request(
        "https://api.osv.dev/v1/query",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    return "osv" if _answers(osv) else None


def main(argv: list[str]) -> int:
    found = service()
    if found is None:
        print(
            "dependency audit SKIPPED: neither PyPI's per-release JSON API nor OSV answered "
            f"within {PROBE_TIMEOUT_S:g} s (offline, or a registry mirror without that API); "
            "run scripts/check where they are reachable to audit",
            file=sys.stderr,
        )
        return 0
    command = [sys.executable, "-m", "pip_audit", "--vulnerability-service", found]
    command += ["--skip-editable", "--progress-spinner", "off", *argv]
    print(f"dependency audit: pip-audit against {found}", file=sys.stderr)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
