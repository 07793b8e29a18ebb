"""What every ``voicegw`` command shares: the settings it runs with, and the error it reports
as one line.

An error the operator can act on is a ``CommandError``: ``gateway.cli.main`` prints its message
on stderr (``voicegw: ...``) and exits with status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from gateway import devkeys
from gateway.settings import Settings, SettingsError


class CommandError(Exception):
    """A command cannot be done; the message (one line) says why and what to do."""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment (or ``environ``), with development keys filled in; exits 2
    when invalid."""
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        print(f"voicegw: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return devkeys.apply(settings)
