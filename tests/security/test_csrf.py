"""``security.csrf`` origin checks on what urllib cannot split, and the CORS setting that
uses the same parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError
from security.csrf import CsrfRejected, check_origin, origin_of

ALLOWED = frozenset({"https://gw.test", "https://ops.example.com:8443"})
UNSPLITTABLE = [
    "http://x:99999",
    "https://gw.test:65536",
    "http://[::1",
    "http://[zz]",
    "http://x:-1",
]


def test_origin_of_normalises() -> None:
    assert origin_of("HTTPS://GW.test:443/") == "https://gw.test"
    assert origin_of("http://[::1]:8000") == "http://[::1]:8000"
    for url in UNSPLITTABLE:
        with pytest.raises(ValueError):
            origin_of(url)


@pytest.mark.parametrize("origin", [*UNSPLITTABLE, "https://gw.test:abc", "null", ""])
def test_an_origin_that_does_not_parse_is_refused_not_raised(origin: str) -> None:
    with pytest.raises(CsrfRejected) as info:
        check_origin(origin, None, ALLOWED)
    assert info.value.reason == "origin not allowed"


def test_allowed_origins_pass() -> None:
    check_origin("https://gw.test", None, ALLOWED)
    check_origin("https://ops.example.com:8443", "cross-site", ALLOWED)
    check_origin(None, "same-origin", ALLOWED)
    with pytest.raises(CsrfRejected):
        check_origin(None, "cross-site", ALLOWED)


@pytest.mark.parametrize("origin", UNSPLITTABLE)
def test_a_cors_origin_that_does_not_parse_is_a_settings_problem(
    origin: str, tmp_path: Path
) -> None:
    env = {"VOICEGW_DATA_DIR": str(tmp_path), "VOICEGW_CORS_ORIGINS": f"https://a.test,{origin}"}
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert "VOICEGW_CORS_ORIGINS" in str(info.value) and "is not an origin" in str(info.value)
