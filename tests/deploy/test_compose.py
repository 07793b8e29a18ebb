"""deploy/compose.yaml: the files it names exist, and the gateway accepts its environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from tests.deploy.helpers import DEPLOY, ROOT, load_yaml

COMPOSE = DEPLOY / "compose.yaml"
# Variables the gateway reads that are not VOICEGW_ settings.
OTHER_VARIABLES = frozenset({"SENTRY_DSN", "OPENAI_API_KEY", "DEEPGRAM_API_KEY", "GEMINI_API_KEY"})
_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def gateway() -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"]["gateway"]
    return service


def resolved(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it with VAR unset."""
    return _DEFAULT.sub(lambda m: m[2] or "", value)


def host_path(spec: str) -> Path | None:
    source = spec.split(":", 1)[0]
    return (DEPLOY / source).resolve() if source.startswith((".", "/")) else None


def test_the_stack_has_gateway_redis_prometheus_and_grafana():
    assert set(compose()["services"]) == {"gateway", "redis", "prometheus", "grafana"}


def test_redis_keeps_revocations_across_a_restart():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume = next(v for v in redis["volumes"] if v.endswith(":/data"))
    assert volume.split(":", 1)[0] in compose()["volumes"]  # a named volume, not the container


def test_the_gateway_is_built_from_the_dockerfile():
    build = gateway()["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).is_file()


def test_every_mounted_file_exists():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            path = host_path(volume)
            if path is not None:
                assert path.exists(), f"{name}: {volume}"
    for secret in compose()["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file()


def test_the_gateway_accepts_the_environment():
    environment = {k: resolved(str(v)) for k, v in gateway()["environment"].items()}
    for name in environment:
        assert name.startswith("VOICEGW_") or name in OTHER_VARIABLES, name
    # The entrypoint reads the metrics token from the shared secret file.
    entrypoint = " ".join(gateway()["entrypoint"])
    assert "VOICEGW_METRICS_TOKEN=" in entrypoint and "/run/secrets/metrics_token" in entrypoint
    environment["VOICEGW_METRICS_TOKEN"] = (DEPLOY / "compose" / "metrics-token").read_text()
    settings = Settings.from_env({k: v for k, v in environment.items() if v})
    assert settings.redis_url is not None
    assert settings.metrics_token is not None


def test_prometheus_scrapes_the_gateway_with_the_shared_token_and_loads_the_rules():
    service = compose()["services"]["prometheus"]
    assert "metrics_token" in service["secrets"] and "metrics_token" in gateway()["secrets"]
    config = load_yaml(DEPLOY / "compose" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]
    mounted = {v.split(":")[1] for v in service["volumes"]}
    for rule_file in config["rule_files"]:
        assert rule_file in mounted, rule_file
    assert "/etc/prometheus/prometheus.yml" in mounted


def test_ports_are_published_on_loopback_only():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_the_gateway_container_is_locked_down():
    assert gateway()["read_only"] is True
    assert gateway()["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gateway()["security_opt"]
