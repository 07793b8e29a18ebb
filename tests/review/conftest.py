"""A production-like deployment for the security review: real settings (validated by
``Settings.from_env`` in production mode), a data directory of its own, and a private
redis-server that requires a password and also listens on a non-loopback address (so the
TLS check can be flipped against a server that answers). The shared Redis is never touched.
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from nacl.signing import SigningKey

from gateway.review.checks import review
from gateway.review.cli import settings_facts
from gateway.review.facts import LOGGERS_REVIEWED, writes_out
from gateway.review.model import Report, Status
from gateway.settings import Settings
from metrics.logging import JsonFormatter
from tests.e2e.conftest import rest  # noqa: F401 - the console test's carrier REST fake
from tests.faults.redis_server import PrivateRedis, private_redis

REDIS_PASSWORD = "review-" + secrets.token_hex(12)


@dataclass(frozen=True)
class ReviewRedis:
    server: PrivateRedis
    external_ip: str | None  # a non-loopback address the server also listens on

    def url(self, host: str = "127.0.0.1", *, password: str | None = REDIS_PASSWORD) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{host}:{self.server.port}/0"


def non_loopback_ipv4() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.fixture(autouse=True)
def own_log_handlers() -> Iterator[None]:
    """Detach, for one test, log handlers other tests left behind that write without
    redaction (uvicorn's default logging config installs one on ``uvicorn``): the review
    reports them, rightly, and these tests decide what this process logs through."""
    saved: list[tuple[logging.Logger, list[logging.Handler]]] = []
    for name in LOGGERS_REVIEWED:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:]))
        logger.handlers[:] = [
            h
            for h in logger.handlers
            if isinstance(h.formatter, JsonFormatter) or not writes_out(h)
        ]
    yield
    for logger, handlers in saved:
        logger.handlers[:] = handlers


@pytest.fixture(scope="package")
def review_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewRedis]:
    with private_redis(tmp_path_factory.mktemp("review-redis")) as server:
        client = redis.Redis(port=server.port)
        external = non_loopback_ipv4()
        if external is not None:
            client.config_set("bind", f"127.0.0.1 {external}")
        client.config_set("requirepass", REDIS_PASSWORD)
        client.close()
        yield ReviewRedis(server, external)


def telnyx_public_key() -> str:
    return base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()


def random_b64(n: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


def production_env(data_dir: Path, review_redis: ReviewRedis) -> dict[str, str]:
    """Every setting the review looks at, set the way a careful production deployment would."""
    return {
        "VOICEGW_ENV": "production",
        "VOICEGW_PUBLIC_URL": "https://gw.example.com",
        "VOICEGW_DATA_DIR": str(data_dir),
        "VOICEGW_TWILIO_AUTH_TOKEN": secrets.token_hex(16),
        "VOICEGW_TWILIO_ALLOWLIST": "198.51.100.0/24",
        "VOICEGW_TELNYX_PUBLIC_KEY": telnyx_public_key(),
        "VOICEGW_TELNYX_API_KEY": "KEY"
        + secrets.token_hex(16).upper()
        + "_"
        + secrets.token_urlsafe(16),
        "VOICEGW_PROVIDERS": "openai",
        "OPENAI_API_KEY": "sk-" + secrets.token_urlsafe(24),
        "VOICEGW_TRUSTED_PROXIES": "10.0.0.0/8",
        "VOICEGW_REDIS_URL": review_redis.url(),
        "VOICEGW_REDIS_KEY_PREFIX": f"review-{uuid.uuid4().hex[:10]}:",
        "VOICEGW_METRICS_TOKEN": secrets.token_urlsafe(32),
        "VOICEGW_ENCRYPTION_KEYS": f"k1:{random_b64()}",
        "VOICEGW_BLIND_INDEX_KEY": random_b64(),
        "VOICEGW_CORS_ORIGINS": "https://ops.example.com",
        "VOICEGW_RECORDING": "on",
        "VOICEGW_RECORDING_CONSENT": "parameter",
    }


@pytest.fixture
def prod_env(tmp_path: Path, review_redis: ReviewRedis) -> dict[str, str]:
    return production_env(tmp_path / "data", review_redis)


@pytest.fixture
def baseline(prod_env: dict[str, str]) -> Settings:
    return Settings.from_env(prod_env)


async def review_of(settings: Settings) -> Report:
    return review(settings, await settings_facts(settings))


def not_passing(report: Report) -> dict[str, Status]:
    return {f.id: f.status for f in report.findings if f.status is not Status.PASS}
