"""The Kubernetes base (deploy/k8s): it builds, and its security and lifecycle settings are the
ones deploy/README.md promises. Rendered in Python by the kustomize rules the base uses, and
also with ``kubectl kustomize`` (or ``kustomize build``) when either is installed, which must
render the same; so every assertion judges something whatever is installed."""

from __future__ import annotations

import base64
import shutil
import subprocess
from functools import cache
from typing import Any

import pytest
import yaml
from nacl.signing import SigningKey

from gateway.settings import Settings
from security.redaction import is_sensitive_key
from tests.conftest import UNIT
from tests.deploy.helpers import K8S, load_all_yaml, load_yaml

NAMESPACE = "voicegw"


KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}


def render_here() -> tuple[dict[str, Any], ...]:
    """The base rendered by the kustomize rules it uses (namespace, ``labels`` pairs without
    selectors, image name/tag), in Python; a field it does not implement fails the test."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert set(kustomization) <= KUSTOMIZATION_FIELDS, set(kustomization) - KUSTOMIZATION_FIELDS
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        assert set(entry) == {"pairs"}, entry  # no includeSelectors / includeTemplates
        labels.update(entry["pairs"])
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    docs = []
    for name in kustomization["resources"]:
        for doc in load_all_yaml(K8S / name):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **labels}
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for box in pod.get("containers", []) + pod.get("initContainers", []):
                image = box["image"].split("@")[0].rsplit(":", 1)[0]
                if image in images:
                    box["image"] = images[image]
            docs.append(doc)
    return tuple(docs)


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


@cache
def render() -> tuple[str, tuple[dict[str, Any], ...]]:
    """(how it was rendered, the resources). With ``kubectl kustomize`` (or ``kustomize
    build``) installed, its rendering is used and must equal ours; without, ours is."""
    ours = render_here()
    kustomize, kubectl = shutil.which("kustomize"), shutil.which("kubectl")
    command = (
        [kustomize, "build", str(K8S)]
        if kustomize
        else [kubectl, "kustomize", str(K8S)]
        if kubectl
        else None
    )
    if command is None:
        return "python", ours
    result = subprocess.run(command, capture_output=True, text=True, timeout=60 * UNIT, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    assert sorted(docs, key=_key) == sorted(ours, key=_key), "kustomize renders differently"
    return command[0], docs


def resources() -> tuple[dict[str, Any], ...]:
    return render()[1]


def one(kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources() if r["kind"] == kind]
    return found


def deployment() -> dict[str, Any]:
    return one("Deployment")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (found,) = pod_spec()["containers"]
    return found


def config() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def test_the_base_renders_every_resource_in_one_namespace():
    kinds = sorted(r["kind"] for r in resources())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    for resource in resources():
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == NAMESPACE, resource["kind"]


def test_kustomize_sets_the_image():
    assert container()["image"] == "ghcr.io/your-org/voicegw:0.1.0"


def test_the_python_rendering_is_what_kustomize_renders():
    """Without kustomize the base is rendered in Python; where a kustomize is installed the
    two must agree (``render``), so the tests judge the same resources either way."""
    how, docs = render()
    assert {_key(d) for d in docs} == {_key(d) for d in render_here()}, how


def test_pod_runs_non_root_with_the_runtime_default_seccomp_profile():
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001 and security["runAsGroup"] == 10001
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec()["automountServiceAccountToken"] is False


def test_container_is_locked_down():
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert security.get("privileged", False) is False


def test_the_data_dir_is_a_writable_empty_dir():
    data_dir = config()["VOICEGW_DATA_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert data_dir in mounts, "VOICEGW_DATA_DIR must be mounted (the root fs is read-only)"
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts[data_dir]]
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_requests_and_limits_are_set():
    resources_ = container()["resources"]
    for kind in ("requests", "limits"):
        assert set(resources_[kind]) >= {"cpu", "memory"}, kind


def test_probes_use_healthz_and_readyz_on_the_served_port():
    port = container()["ports"][0]
    assert port["containerPort"] == 8000 and port["name"] == "http"
    assert container()["args"][-2:] == ["--port", "8000"]
    assert container()["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container()["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container()["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_grace_period_covers_prestop_and_the_drain():
    drain = float(config()["VOICEGW_DRAIN_SECONDS"])
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep = float(pre_stop[1])
    grace = pod_spec()["terminationGracePeriodSeconds"]
    # The server's own connection shutdown (timeout_graceful_shutdown) takes up to 10 s more.
    assert grace > sleep + drain + 10, (grace, sleep, drain)


def test_rolling_updates_never_reduce_capacity():
    rolling = deployment()["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_secrets_are_referenced_never_written():
    assert not [r for r in resources() if r["kind"] == "Secret"]
    for name in set(config()) - {"VOICEGW_PUBLIC_URL"}:
        secret_like = is_sensitive_key(name) or name.endswith(("_TOKEN", "_KEY", "_URL"))
        assert not secret_like, f"{name} belongs in the Secret"
    for env in container()["env"]:
        name = env["name"]
        secret_like = is_sensitive_key(name) or name.endswith(
            ("_TOKEN", "_KEY", "_DSN", "REDIS_URL")
        )
        if secret_like:
            assert "value" not in env, f"{name} has a literal value"
            assert env["valueFrom"]["secretKeyRef"]["name"] == "voicegw-secrets", name
    assert {e["name"] for e in container()["env"]} >= {
        "VOICEGW_TWILIO_AUTH_TOKEN",
        "VOICEGW_TELNYX_API_KEY",
        "VOICEGW_REDIS_URL",
        "VOICEGW_METRICS_TOKEN",
        "SENTRY_DSN",
    }


def test_the_gateway_accepts_the_configuration_in_production():
    """ConfigMap + the Secret's keys (placeholder values) pass ``Settings.from_env``, which
    refuses unknown VOICEGW_ variables and unsafe production values."""
    placeholder = {
        "redis-url": "rediss://:placeholder@redis.example.internal:6380/0",
        "metrics-token": "placeholder-metrics-token-0123456789abcdef",
        "twilio-auth-token": "0123456789abcdef0123456789abcdef",
        "twilio-auth-token-secondary": "fedcba9876543210fedcba9876543210",
        "telnyx-public-key": base64.b64encode(bytes(SigningKey.generate().verify_key)).decode(),
        "telnyx-api-key": "KEY0123456789ABCDEF0123456789ABCDEF_placeholder-secret",
        "database-url": "postgresql://voicegw:placeholder@postgres.example.internal:5432/voicegw",
        "encryption-keys": "k1:" + base64.b64encode(b"\x01" * 32).decode(),
        "blind-index-key": base64.b64encode(b"\x02" * 32).decode(),
        "signing-key": base64.urlsafe_b64encode(b"\x03" * 32).rstrip(b"=").decode(),
        "openai-api-key": "sk-placeholder",
        "deepgram-api-key": "dg-placeholder",
        "gemini-api-key": "g-placeholder",
        "sentry-dsn": "https://public@sentry.example/1",
    }
    env = dict(config())
    for entry in container()["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["key"] in placeholder, f"add {ref['key']} to the README's secret command"
        env[entry["name"]] = placeholder[ref["key"]]
    settings = Settings.from_env(env)
    assert settings.production
    assert settings.drain_s == float(config()["VOICEGW_DRAIN_SECONDS"])


def test_service_pdb_and_hpa_select_the_deployment():
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selector = deployment()["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    assert one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment()["metadata"]["name"])
    assert one("Service")["spec"]["ports"][0]["targetPort"] == "http"
    assert pod_spec()["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]


def test_hpa_scales_on_cpu_and_on_active_calls_through_the_adapter():
    hpa = one("HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    assert {"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 60}}} in metrics  # fmt: skip
    (pods,) = [m for m in metrics if m["type"] == "Pods"]
    assert pods["pods"]["metric"]["name"] == "voicegw_active_calls"
    assert "prometheus-adapter" in " ".join(hpa["metadata"]["annotations"].values())
    assert hpa["spec"]["minReplicas"] >= 2
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_network_policy_admits_only_ingress_and_prometheus_and_the_needed_egress():
    policy = one("NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["ingress"]
        for peer in rule["from"]
    }
    assert sources == {"ingress-nginx", "monitoring"}
    ports = {
        (p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]
    }
    assert ports >= {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (5432, "TCP"), (443, "TCP")}
    https = next(r for r in policy["egress"] if r["ports"] == [{"port": 443, "protocol": "TCP"}])
    assert "169.254.0.0/16" in https["to"][0]["ipBlock"]["except"]  # no metadata endpoint


@pytest.mark.parametrize("name", ["namespace.yaml", "deployment.yaml", "configmap.yaml"])
def test_listed_in_the_kustomization(name):
    assert name in load_yaml(K8S / "kustomization.yaml")["resources"]
