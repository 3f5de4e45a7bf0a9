"""The Kubernetes manifests in deploy/k8s/ agree with each other and with the code: the
port is the config's, the probes are routes the app serves without a key, the
autoscaler's query names gauges that /metrics exports, the config in the ConfigMap
validates, and a pod is given the time to drain. A renamed route or metric would
otherwise leave pods that never become ready, or an autoscaler that never scales."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Match

from surge.api.app import create_app
from surge.api.auth_middleware import PUBLIC
from surge.config import Config
from surge.observe.metrics import Metrics

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
CONFIG_KEY = "surge.yaml"
# (apiVersion, kind) of every object, each once: anything else is a typo or an API the
# cluster may not serve.
EXPECTED = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("ray.io/v1", "RayCluster"),
}
METRIC_NAME = re.compile(r"\bsurge_[A-Za-z0-9_]+")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
# The names a family's samples take in the text exposition (as in test_deploy_metrics.py).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}


def documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def gateway() -> dict[str, Any]:
    """The Deployment's surge container."""
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, [c["name"] for c in containers]
    return containers[0]


def config_of_configmap() -> dict[str, Any]:
    return yaml.safe_load(one("ConfigMap")["data"][CONFIG_KEY])


def config() -> Config:
    return Config.model_validate(config_of_configmap())


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"port {port!r} is not a port of container {container['name']}"
    return named[port]


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# -- the files themselves ----------------------------------------------------------------------


def test_every_object_has_an_expected_kind_and_api_version() -> None:
    found = [(doc["apiVersion"], doc["kind"]) for _, doc in documents()]
    assert sorted(found) == sorted(EXPECTED), f"unexpected or repeated objects: {found}"
    for path, doc in documents():
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path.name


def test_the_kustomization_lists_every_manifest_and_puts_them_in_one_namespace() -> None:
    kustomization = one("Kustomization")
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "kustomization.yaml must list each manifest once"
    namespace = one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for path, doc in documents():
        # A namespace written in a manifest would fight the kustomization's.
        assert "namespace" not in doc.get("metadata", {}), path.name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kustomize_renders_the_directory() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert {(d["apiVersion"], d["kind"]) for d in objects} == EXPECTED - {
        ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    }
    namespaced = [d for d in objects if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"surge"}


# -- names that must agree across manifests ----------------------------------------------------


def test_selectors_match_the_gateway_pods_and_only_them() -> None:
    deployment = one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(selector, pod_labels), "the Deployment's selector misses its own pods"
    service = one("Service")["spec"]["selector"]
    assert selects(service, pod_labels), "the Service selects no gateway pod"
    pdb = one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb == selector, "the PodDisruptionBudget must count exactly the gateway pods"
    # Ray's pods carry the same app name: the Service and the budget must not pick them up.
    ray = one("RayCluster")["spec"]
    for template in [ray["headGroupSpec"]["template"]] + [
        group["template"] for group in ray["workerGroupSpecs"]
    ]:
        labels = template["metadata"]["labels"]
        assert not selects(service, labels), labels
        assert not selects(pdb, labels), labels


def test_the_service_reaches_the_container_port() -> None:
    container = gateway()
    ports = one("Service")["spec"]["ports"]
    assert len(ports) == 1
    assert port_number(container, ports[0]["targetPort"]) == config().server.port


def test_the_configmap_and_secret_the_deployment_names_exist() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    configmap, secret = one("ConfigMap"), one("Secret")
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_volumes = [v for v in volumes.values() if "configMap" in v]
    assert [v["configMap"]["name"] for v in config_volumes] == [configmap["metadata"]["name"]]
    for item in config_volumes[0]["configMap"].get("items", []):
        assert item["key"] in configmap["data"], item
    container = gateway()
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, mount
    references = [
        e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert references, "the gateway takes nothing from the Secret"
    for reference in references:
        assert reference["name"] == secret["metadata"]["name"], reference
        assert reference["key"] in secret["stringData"], reference
    assert "SURGE_ADMIN_KEY" in {e["name"] for e in container["env"] if "valueFrom" in e}


def test_the_autoscaler_targets_the_gateway_deployment() -> None:
    target = one("ScaledObject")["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    deployment = one("Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    # A count written in the Deployment would be re-applied over the autoscaler's.
    assert "replicas" not in deployment["spec"]
    scaled = one("ScaledObject")["spec"]
    assert 2 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"], "one pod cannot drain"


def test_the_ray_cluster_autoscales_a_worker_group_from_the_gateway_image() -> None:
    spec = one("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == gateway()["image"]
    assert 10001 in {p["containerPort"] for p in head["ports"]}, "the Ray client port"
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group
        assert group["maxReplicas"] > group["minReplicas"], "nothing for Ray to scale"
        worker = group["template"]["spec"]["containers"][0]
        assert worker["image"] == gateway()["image"]
        assert worker["resources"]["requests"] and worker["resources"]["limits"]


# -- against the code ----------------------------------------------------------------------------


def test_the_configmap_config_validates_and_is_the_file_the_command_reads() -> None:
    loaded = config()  # raises with each problem's key path
    assert loaded.server.host == "0.0.0.0", "bound to loopback, no probe or Service reaches it"
    container = gateway()
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[:2] == ["surge", "serve"]
    path = command[command.index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = next(
        v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"] if "configMap" in v
    )
    items = {i["key"]: i["path"] for i in volume["configMap"].get("items", [])}
    assert path == f"{mounts[volume['name']]}/{items.get(CONFIG_KEY, CONFIG_KEY)}"
    # Shared state: every pod must see the same registry, not a SQLite file of its own.
    assert loaded.registry_url.startswith("postgresql://"), loaded.registry_url
    assert loaded.redis_url, "pods share limits and route notifications through Redis"


def test_the_container_port_and_scrape_port_are_the_configs() -> None:
    port = config().server.port
    assert [p["containerPort"] for p in gateway()["ports"]] == [port]
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)


def test_probe_and_scrape_paths_are_routes_served_without_a_key() -> None:
    loaded = config()
    app = create_app(loaded)
    routes = app.app.routes  # the Starlette router behind the inference fast path

    def served(path: str) -> bool:
        scope = {"type": "http", "path": path, "method": "GET"}
        return any(route.matches(scope)[0] is Match.FULL for route in routes)

    container = gateway()
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in container
    }
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    for kind, probe in probes.items():
        assert served(probe["path"]), f"{kind}: {probe['path']} is not a route of the app"
        # The kubelet sends no key: with auth.required, a probe off this list gets 401.
        assert probe["path"] in PUBLIC, f"{kind}: {probe['path']} needs a client key"
        assert port_number(container, probe["port"]) == loaded.server.port, kind
    scraped = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert served(scraped["prometheus.io/path"])
    assert not loaded.auth.protect_metrics, "Prometheus scrapes without a key"


def test_the_autoscaler_queries_gauges_that_surge_exports() -> None:
    loaded = config()
    metrics = Metrics()
    for endpoint in loaded.endpoints:
        metrics.for_endpoint(endpoint)
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.render().decode())}
    exported = {
        name + suffix: kind
        for name, kind in families.items()
        for suffix in SAMPLE_SUFFIXES.get(kind, ("",))
    }
    triggers = one("ScaledObject")["spec"]["triggers"]
    namespace = one("Namespace")["metadata"]["name"]
    assert triggers
    for trigger in triggers:
        assert trigger["type"] == "prometheus", trigger
        query = trigger["metadata"]["query"]
        names = set(METRIC_NAME.findall(STRING_LITERAL.sub('""', query)))
        assert names, f"{trigger['name']}: the query names no surge metric"
        for name in names:
            assert name in exported, f"{trigger['name']}: {name} is not exported by /metrics"
            # A gauge summed over pods is load now; a counter would need rate() first.
            assert exported[name] == "gauge", f"{name} is a {exported[name]}"
        assert f'namespace="{namespace}"' in query, "the query must read this namespace only"
        assert float(trigger["metadata"]["threshold"]) > 0
    assert {"surge_inflight_requests", "surge_queue_depth_requests"} & {
        name for t in triggers for name in METRIC_NAME.findall(t["metadata"]["query"])
    }


def test_a_terminating_pod_has_the_time_to_drain() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    grace = config().server.shutdown_grace_s
    pre_stop = gateway()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # Kubernetes 1.30+: the kubelet sleeps
        pause = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        pause = float(command[1])
    assert pause > 0, "no time for endpoints to drop the pod before it drains"
    # After the preStop pause, SIGTERM: uvicorn waits up to shutdown_grace_s for open
    # requests, then the lifespan drains the deployments up to shutdown_grace_s again.
    assert spec["terminationGracePeriodSeconds"] > pause + 2 * grace


def test_the_endpoints_threads_fit_the_cpu_limit() -> None:
    # A container sees all its node's cores (a CPU limit is a quota, not an affinity), so
    # threads sized by surge from the core count would far exceed the limit and throttle.
    loaded = config()
    limit = cpu_cores(gateway()["resources"]["limits"]["cpu"])
    threads = 0
    for name, endpoint in loaded.endpoints.items():
        assert endpoint.threads_per_replica, f"{name}: pin threads_per_replica to the limit"
        threads += endpoint.replicas * endpoint.threads_per_replica
    assert threads * loaded.server.workers <= limit
    resources = gateway()["resources"]
    assert resources["requests"] and resources["limits"]["memory"]


def test_the_gateway_runs_locked_down() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    container = gateway()
    assert spec["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # What surge and Python write goes to emptyDirs: .surge under the working directory.
    scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    written = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in scratch}
    assert f"{container['workingDir']}/.surge" in written
    assert "/tmp" in written


def test_secrets_are_marked_placeholders_and_never_on_a_command_line() -> None:
    secret = one("Secret")
    values = secret["stringData"]
    for key, value in values.items():
        assert "CHANGE-ME" in value, f"{key}: a real-looking value in git"
    container = gateway()
    command_line = " ".join([*container.get("command", []), *container.get("args", [])])
    for key, value in values.items():
        assert value not in command_line and key not in command_line, key
    # A variable named after a secret takes its value from the Secret, not inline.
    for variable in container["env"]:
        if variable["name"] in values:
            assert "value" not in variable, variable["name"]
    configmap_text = one("ConfigMap")["data"][CONFIG_KEY]
    for key, value in values.items():
        assert value not in configmap_text, f"{key}'s value is in the ConfigMap"
