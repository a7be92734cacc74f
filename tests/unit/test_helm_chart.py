"""The Helm chart (helm/cvserve), rendered by Helm's own Go code and validated against Kubernetes schemas.

Helm runs in-process through helm-python-sdk (libhelm_c over Helm's Go SDK): lint, a client-side dry-run
install and template rendering, with Helm's own values.schema.json validation. Every rendered manifest is
checked in strict mode with kubernetes-validate for several Kubernetes versions, and the Prometheus Operator
objects with jsonschema against the CRD schemas under tests/unit/schemas/. No cluster is involved.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cvserve"
ADAPTER_VALUES = ROOT / "helm" / "prometheus-adapter" / "values.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# Kubernetes versions whose schemas kubernetes-validate ships and the chart is validated against:
# the oldest the chart supports (kubeVersion >=1.27 in Chart.yaml, and 1.29 is the oldest still commonly
# run), a middle one and the newest shipped.
KUBE_VERSIONS = ("1.29.0", "1.31.0", kubernetes_validate.latest_version())
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
}
RELEASE, NAMESPACE = "rel", "ml"
FULLNAME = f"{RELEASE}-cvserve"
# What the scenarios leave out but every install needs.
BASE = {
    "modelRepository": {"type": "pvc", "pvc": {"claimName": "models"}},
    "restrictedApi": {"secretName": "cvserve-admin-key"},
    "helmTest": {"image": "registry.example.com/cvserve/client:0.1.0", "model": "resnet50"},
}
# The restricted groups on by default; the chart's default header.
DEFAULT_GROUPS = "model-repository,model-config,shared-memory,statistics,trace,logging"
PROBE = ["python3", "-I", "-S", "/etc/cvserve/probe/triton_probe.py"]


def scenario_values(name: str) -> dict[str, Any]:
    """A ci/ values file parsed by Helm's own YAML reader (what `helm -f` does)."""
    return helm.values_from_yaml((CHART / "ci" / name).read_text())


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    return [
        obj
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for obj in yaml.safe_load_all(text)
        if obj
    ]


def find(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as info:
        render(values)
    return str(info.value)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: objects(render(scenario_values(name))) for name in SCENARIOS}


def triton_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]]
    assert container["name"] == "triton"
    return container


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objs, "Deployment")["spec"]["template"]["spec"]


# --- Helm itself: lint, dry-run install, schema ----------------------------------------------------------


def test_scenarios_exist() -> None:
    assert set(SCENARIOS) >= {
        "cpu-only-values.yaml",
        "gpu-values.yaml",
        "s3-values.yaml",
        "autoscaling-values.yaml",
        "hardened-values.yaml",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    report = helm.lint(
        CHART, scenario_values(scenario), strict=True, namespace=NAMESPACE, kube_version="v1.29.0"
    )
    assert report["errors"] == []
    # severity 2 = warning, 3 = error; 1 (info) is only "icon is recommended"
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_client_dry_run_install(scenario: str) -> None:
    with helm.Config(namespace=NAMESPACE, storage_driver="memory") as cfg:
        release = cfg.install(
            CHART, RELEASE, scenario_values(scenario), dry_run="client", namespace=NAMESPACE
        )
    kinds = {o["kind"] for o in yaml.safe_load_all(release["manifest"]) if o}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    assert f"cvserve k8s status --namespace {NAMESPACE} --release {RELEASE}" in release["notes"]


def test_string_replica_count_fails_with_helms_schema_message(tmp_path: Path) -> None:
    values_file = tmp_path / "bad-values.yaml"
    values_file.write_text('replicaCount: "3"\n')
    values = merge(BASE, helm.values_from_yaml(values_file.read_text()))
    with (
        helm.Config(namespace=NAMESPACE, storage_driver="memory") as cfg,
        pytest.raises(helm.HelmError) as info,
    ):
        cfg.install(CHART, RELEASE, values, dry_run="client", namespace=NAMESPACE)
    message = str(info.value)
    assert "values don't meet the specifications of the schema" in message
    assert "at '/replicaCount': got string, want integer" in message


def queue_override(policy: dict[str, Any]) -> dict[str, Any]:
    return {"modelConfigOverrides": {"m": {"dynamic_batching": {"default_queue_policy": policy}}}}


def pin(policy: dict[str, Any]) -> dict[str, Any]:
    return {"modelConfigOverrides": {"m": {"version_policy": policy}}}


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"triton": {"modelControlMode": "manual"}}, "at '/triton/modelControlMode'"),
        ({"autoscaling": {"metric": "latency"}}, "at '/autoscaling/metric'"),
        ({"restrictedApi": {"categories": ["health"]}}, "at '/restrictedApi/categories/0'"),
        ({"gpu": {"count": -1}}, "at '/gpu/count'"),
        ({"replicaCoutn": 3}, "additional properties 'replicaCoutn' not allowed"),
        ({"modelConfigOverrides": {"m": {"dynamic_batching": {"max_queue_delay": 5}}}}, "max_queue_delay"),
        (queue_override({"max_queue_size": -1}), "/default_queue_policy/max_queue_size"),
        (queue_override({"max_queue_size": "64"}), "/default_queue_policy/max_queue_size"),
        (queue_override({"timeout_action": "DROP"}), "/default_queue_policy/timeout_action"),
        (queue_override({"default_timeout_microseconds": -5}), "/default_timeout_microseconds"),
        (queue_override({"queue_timeout_ms": 5}), "queue_timeout_ms"),
        (pin({"specific": {"versions": []}}), "/version_policy/specific/versions"),
        (pin({"specific": {"versions": [0]}}), "/version_policy/specific/versions/0"),
        (pin({"latest": {"num_versions": 1}, "all": {}}), "/version_policy"),
        (pin({"newest": {}}), "newest"),
        ({"http": {"listen": "off"}}, "at '/http/listen'"),
        ({"probes": {"liveness": {"canary": {"version": "latest"}}}}, "/canary/version"),
        ({"probes": {"liveness": {"canary": {"timeoutSeconds": 0}}}}, "/canary/timeoutSeconds"),
        ({"terminationGracePeriodSeconds": 0}, "at '/terminationGracePeriodSeconds'"),
        ({"tls": {"mutal": True}}, "additional properties 'mutal' not allowed"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], fragment: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(merge(BASE, values))
    assert fragment in str(info.value)


def test_no_model_repository_fails_with_required_message() -> None:
    values = {"helmTest": BASE["helmTest"]}
    message = render_error(values)
    assert "modelRepository.type is required: set it to pvc" in message
    # also when nothing at all is set: the repository is reported first
    assert "modelRepository.type is required" in render_error({})


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            {"modelRepository": {"type": "pvc", "pvc": {"claimName": ""}}},
            "modelRepository.pvc.claimName is required",
        ),
        (
            {"modelRepository": {"type": "s3"}},
            "modelRepository.uri is required when modelRepository.type is s3",
        ),
        ({"modelRepository": {"type": "gs", "uri": "s3://b/p"}}, "must start with gs://"),
        ({"modelRepository": {"type": "sync", "sync": {"image": "busybox"}}}, "modelRepository.sync.command"),
        (
            {
                "modelRepository": {"type": "s3", "uri": "s3://b/p"},
                "modelConfigOverrides": {"m": {"max_batch_size": 8}},
            },
            "modelConfigOverrides need a local repository",
        ),
        ({"restrictedApi": {"secretName": ""}}, "restrictedApi.secretName is required while"),
        ({"tls": {"enabled": True}}, "tls.secretName is required when tls.enabled"),
        (
            {"tls": {"enabled": True, "secretName": "t", "mutual": True}},
            "helmTest.clientTlsSecretName is required with tls.mutual",
        ),
        ({"helmTest": {"model": ""}}, "helmTest.model is required"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "must not exceed"),
    ],
)
def test_misconfiguration_fails_with_a_clear_message(values: dict[str, Any], fragment: str) -> None:
    assert fragment in render_error(merge(BASE, values))


# --- Kubernetes and CRD schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_valid_for_kubernetes(rendered: dict, scenario: str, kube_version: str) -> None:
    checked = 0
    for obj in rendered[scenario]:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)
        checked += 1
    assert checked >= 4


def test_everything_optional_on_renders_valid() -> None:
    values = merge(
        scenario_values("gpu-values.yaml"),
        {
            "autoscaling": {"enabled": True, "metric": "gpuUtilization"},
            "podDisruptionBudget": {"maxUnavailable": 1},
        },
    )
    objs = objects(render(values))
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ConfigMap",  # dashboard
            "ConfigMap",  # model config overrides
            "ConfigMap",  # probe script (canary)
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "Pod",  # helm test hook
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) not in CRD_SCHEMAS:
            kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)


def test_kubernetes_validate_catches_a_wrong_field(rendered: dict) -> None:
    """The strict validation is real: a misspelt field in a rendered Deployment is reported."""
    deployment = json.loads(json.dumps(find(rendered["gpu-values.yaml"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def monitoring_objects(rendered: dict) -> Iterator[dict[str, Any]]:
    for objs in rendered.values():
        yield from (o for o in objs if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS)


def test_prometheus_operator_objects_match_crd_schemas(rendered: dict) -> None:
    seen = set()
    for obj in monitoring_objects(rendered):
        crd_validator(obj["apiVersion"], obj["kind"]).validate(obj)
        seen.add(obj["kind"])
        if obj["kind"] == "PrometheusRule":  # x-kubernetes-list-type: map keyed by name
            names = [g["name"] for g in obj["spec"]["groups"]]
            assert len(names) == len(set(names))
    assert seen == {"ServiceMonitor", "PrometheusRule"}


def test_crd_schema_catches_a_wrong_field(rendered: dict) -> None:
    monitor = json.loads(
        json.dumps(next(o for o in monitoring_objects(rendered) if o["kind"] == "ServiceMonitor"))
    )
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(monitor["apiVersion"], "ServiceMonitor").validate(monitor)


# --- What the objects say -------------------------------------------------------------------------------


def test_labels_and_named_ports(rendered: dict) -> None:
    objs = rendered["gpu-values.yaml"]
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "cvserve"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "app.kubernetes.io/version" in labels
    service = find(objs, "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8000, "http"),
        ("grpc", 8001, "grpc"),
        ("metrics", 8002, "metrics"),
    ]
    container = triton_container(objs)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    pod_labels = find(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_probes(rendered: dict) -> None:
    container = triton_container(rendered["cpu-only-values.yaml"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # sized for model loading: the default 600 s budget
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_startup_probe_follows_model_load_timeout() -> None:
    values = merge(BASE, {"probes": {"startup": {"periodSeconds": 15, "modelLoadTimeoutSeconds": 1000}}})
    startup = triton_container(objects(render(values)))["startupProbe"]
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (15, 67)  # ceil(1000 / 15)


def test_triton_arguments(rendered: dict) -> None:
    args = triton_container(rendered["gpu-values.yaml"])["args"]
    assert "--model-repository=/models-overlay" in args
    assert "--model-control-mode=explicit" in args
    assert "--load-model=*" in args
    assert "--strict-readiness=true" in args
    assert "--exit-timeout-secs=30" in args
    assert "--metrics-config=summary_latencies=true" in args
    restricted = f"{DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)"
    assert f"--http-restricted-api={restricted}" in args
    assert f"--grpc-restricted-protocol={restricted}" in args
    env = {e["name"]: e for e in triton_container(rendered["gpu-values.yaml"])["env"]}
    assert env["CVSERVE_RESTRICTED_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "cvserve-admin-key",
        "key": "key",
    }
    s3 = triton_container(rendered["s3-values.yaml"])
    assert "--model-repository=s3://cvserve-models/production/repository" in s3["args"]
    assert "--model-control-mode=poll" in s3["args"]
    assert s3["envFrom"] == [{"secretRef": {"name": "cvserve-s3-credentials"}}]


def test_gpu_resources(rendered: dict) -> None:
    gpu = triton_container(rendered["gpu-values.yaml"])["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in gpu.get("requests", {})
    assert "--allow-gpu-metrics=true" in triton_container(rendered["gpu-values.yaml"])["args"]
    assert pod_spec(rendered["gpu-values.yaml"])["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = triton_container(rendered["cpu-only-values.yaml"])
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert "--allow-gpu-metrics=false" in cpu["args"]


def test_security_context_and_writable_dirs(rendered: dict) -> None:
    for scenario, objs in rendered.items():
        spec = pod_spec(objs)
        assert spec["securityContext"]["runAsNonRoot"] is True, scenario
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (scenario, container["name"])
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in triton_container(objs)["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]
        assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_grace_period_exceeds_preStop_plus_exit_timeout(rendered: dict, scenario: str) -> None:
    """From deletion to SIGKILL: the preStop sleep, then Triton's --exit-timeout-secs drain, then shutdown."""
    container = triton_container(rendered[scenario])
    (exit_timeout,) = [
        int(a.split("=")[1]) for a in container["args"] if a.startswith("--exit-timeout-secs=")
    ]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod_spec(rendered[scenario])["terminationGracePeriodSeconds"] > int(pre_stop[1]) + exit_timeout


@pytest.mark.parametrize(
    ("values", "grace"),
    [
        ({}, 5 + 30 + 15),  # derived
        ({"triton": {"exitTimeoutSeconds": 120}, "probes": {"preStopSleepSeconds": 10}}, 145),
        ({"terminationGracePeriodSeconds": 36}, 36),  # explicit, just enough
    ],
)
def test_grace_period_derived_or_checked(values: dict[str, Any], grace: int) -> None:
    objs = objects(render(merge(BASE, values)))
    assert pod_spec(objs)["terminationGracePeriodSeconds"] == grace


def test_grace_period_too_small_fails_to_render() -> None:
    message = render_error(
        merge(BASE, {"terminationGracePeriodSeconds": 35, "triton": {"exitTimeoutSeconds": 30}})
    )
    assert "terminationGracePeriodSeconds (35) must be greater than" in message
    assert "probes.preStopSleepSeconds + triton.exitTimeoutSeconds (35)" in message
    assert "SIGKILL" in message and "leave it empty to derive it (50)" in message


def test_rolling_update_and_disruption_budget_keep_capacity(rendered: dict) -> None:
    strategy = find(rendered["cpu-only-values.yaml"], "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert find(objects(render(BASE)), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# --- Security defaults -------------------------------------------------------------------------------


def test_default_render_passes_schema_and_kubernetes_validation() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(BASE)
    for obj in objects(render(BASE)):
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_default_image_is_the_documented_ngc_release() -> None:
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = triton_container(objects(render(BASE)))
    assert container["image"] == f"nvcr.io/nvidia/tritonserver:{chart_yaml['appVersion']}"
    assert chart_yaml["appVersion"] == "26.11-py3"
    for doc in ("security.md", "deploy.md"):  # the choice and its advisories are documented
        assert "tritonserver:26.11-py3" in (ROOT / "docs" / doc).read_text(), doc
    pinned = triton_container(objects(render(merge(BASE, {"image": {"digest": "sha256:" + "a" * 64}}))))
    assert pinned["image"] == "nvcr.io/nvidia/tritonserver@sha256:" + "a" * 64


def test_default_render_is_locked_down() -> None:
    objs = objects(render(BASE))
    container, spec = triton_container(objs), pod_spec(objs)
    args = container["args"]
    # model control none, the restricted groups on both protocols, HTTP restricted on the pod network
    assert "--model-control-mode=none" in args
    assert f"--http-restricted-api={DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)" in args
    assert f"--grpc-restricted-protocol={DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)" in args
    assert "health" not in DEFAULT_GROUPS and "inference" not in DEFAULT_GROUPS
    assert "--http-address=0.0.0.0" in args
    assert not [a for a in args if a.startswith("--grpc-use-ssl")]
    env = {e["name"]: e for e in container["env"]}
    assert env["CVSERVE_RESTRICTED_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "cvserve-admin-key",
        "key": "key",
    }
    # non-root, read-only root filesystem, nothing extra mounted or injected
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False
    assert find(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    # the repository read-only; writable paths are emptyDirs
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes["model-repository"]["persistentVolumeClaim"]["readOnly"] is True
    for path in ("/tmp", "/cache", "/dev/shm"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly")
    assert {e["name"]: e.get("value") for e in container["env"]}["CUDA_CACHE_PATH"] == "/cache/cuda"
    # optional features off: no TLS, no canary, no network policy
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_synced_repository_is_read_only_for_triton(rendered: dict) -> None:
    spec = pod_spec(rendered["autoscaling-values.yaml"])
    (sync,) = [c for c in spec["initContainers"] if c["name"] == "sync-model-repository"]
    assert not next(m for m in sync["volumeMounts"] if m["mountPath"] == "/models").get("readOnly")
    triton = {
        m["mountPath"]: m for m in triton_container(rendered["autoscaling-values.yaml"])["volumeMounts"]
    }
    assert triton["/models"]["readOnly"] is True and triton["/models-overlay"]["readOnly"] is True


def test_http_on_localhost_leaves_the_network(rendered: dict) -> None:
    objs = rendered["hardened-values.yaml"]
    container = triton_container(objs)
    assert "--http-address=127.0.0.1" in container["args"]
    assert "http" not in {p["name"] for p in container["ports"]}
    assert [p["name"] for p in find(objs, "Service")["spec"]["ports"]] == ["grpc", "metrics"]
    inference, _ = find(objs, "NetworkPolicy")["spec"]["ingress"]
    assert [p["port"] for p in inference["ports"]] == ["grpc"]
    # the kubelet cannot reach 127.0.0.1 of the pod: the probes run inside the container
    assert container["startupProbe"]["exec"]["command"] == [*PROBE, "ready", "--timeout", "4"]
    assert container["readinessProbe"]["exec"]["command"] == [*PROBE, "ready", "--timeout", "4"]
    assert "httpGet" not in container["livenessProbe"]


def test_restricted_groups_on_pod_network_by_default(rendered: dict) -> None:
    for scenario in ("cpu-only-values.yaml", "s3-values.yaml", "autoscaling-values.yaml"):
        args = triton_container(rendered[scenario])["args"]
        assert "--http-address=0.0.0.0" in args
        assert f"--http-restricted-api={DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)" in args
    hardened = triton_container(rendered["hardened-values.yaml"])["args"]
    assert (
        f"--grpc-restricted-protocol={DEFAULT_GROUPS},metadata:admin-key=$(CVSERVE_RESTRICTED_API_KEY)"
        in hardened
    )


def test_tls_values_render_the_grpc_ssl_flags(rendered: dict) -> None:
    objs = rendered["hardened-values.yaml"]
    container, spec = triton_container(objs), pod_spec(objs)
    args = container["args"]
    assert "--grpc-use-ssl=true" in args
    assert "--grpc-server-cert=/etc/cvserve/tls/tls.crt" in args
    assert "--grpc-server-key=/etc/cvserve/tls/tls.key" in args
    assert not [a for a in args if a.startswith(("--grpc-use-ssl-mutual", "--grpc-root-cert"))]
    (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "cvserve-grpc-tls"
    assert {"name": "tls", "mountPath": "/etc/cvserve/tls", "readOnly": True} in container["volumeMounts"]
    test_pod = find(objs, "Pod")["spec"]["containers"][0]["command"]
    assert test_pod[-1] == f"grpcs://{FULLNAME}.{NAMESPACE}.svc:8001"
    mutual = triton_container(
        objects(
            render(
                merge(
                    BASE,
                    {
                        "tls": {"enabled": True, "secretName": "t", "mutual": True},
                        "helmTest": {"enabled": False},
                    },
                )
            )
        )
    )["args"]
    assert "--grpc-use-ssl-mutual=true" in mutual and "--grpc-root-cert=/etc/cvserve/tls/ca.crt" in mutual


def test_network_policy_can_restrict_egress(rendered: dict) -> None:
    policy = find(rendered["hardened-values.yaml"], "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (dns,) = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert find(rendered["gpu-values.yaml"], "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]
    bucket = {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    values = merge(BASE, {"networkPolicy": {"enabled": True, "egress": {"enabled": True, "rules": [bucket]}}})
    policy = find(objects(render(values)), "NetworkPolicy")
    assert policy["spec"]["egress"][1] == bucket
    kubernetes_validate.validate(policy, KUBE_VERSIONS[0], strict=True)


# --- Probes ------------------------------------------------------------------------------------------


def test_canary_liveness_when_a_model_is_set(rendered: dict) -> None:
    objs = rendered["gpu-values.yaml"]
    container = triton_container(objs)
    liveness = container["livenessProbe"]
    assert liveness["exec"]["command"] == [
        *PROBE,
        "canary",
        "--model",
        "resnet50",
        "--timeout",
        "10",
        "--header",
        "admin-key",
    ]
    assert (liveness["periodSeconds"], liveness["timeoutSeconds"], liveness["failureThreshold"]) == (
        30,
        13,
        3,
    )
    # readiness and startup stay on Triton's own health endpoint
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # the script comes from a ConfigMap, the same bytes as files/triton_probe.py
    (configmap,) = [o for o in objs if o["metadata"]["name"] == f"{FULLNAME}-probe"]
    assert configmap["data"]["triton_probe.py"] == (CHART / "files" / "triton_probe.py").read_text()
    assert {"name": "probe", "mountPath": "/etc/cvserve/probe", "readOnly": True} in container["volumeMounts"]
    assert "checksum/probe" in find(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    hardened = triton_container(rendered["hardened-values.yaml"])["livenessProbe"]
    assert hardened["exec"]["command"][len(PROBE) :][:6] == [
        "canary",
        "--model",
        "resnet50",
        "--timeout",
        "5",
        "--header",
    ]
    assert (hardened["periodSeconds"], hardened["timeoutSeconds"]) == (20, 8)
    pinned = merge(BASE, {"probes": {"liveness": {"canary": {"model": "m", "version": "3"}}}})
    command = triton_container(objects(render(pinned)))["livenessProbe"]["exec"]["command"]
    assert command[-2:] == ["--version", "3"]


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, CHART / "files" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_canary_request_is_one_valid_png_in_the_v2_binary_framing() -> None:
    """What the canary sends, decoded the way Triton and the served model decode it.

    The script itself was run against the embedded Triton (see docs/deploy.md): ok on a served python model,
    HTTP 500 "Stub process ... is not healthy" after its stub was killed while /v2/health/* stayed 200,
    HTTP 503 counted as alive when the queue was full.
    """
    image_mod = pytest.importorskip("PIL.Image")
    probe = load_script("triton_probe")
    png = probe.canary_png()
    with image_mod.open(io.BytesIO(png)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (probe.SIDE, probe.SIDE))
        img.load()
    body, header_len = probe.infer_request(png)
    header = json.loads(body[:header_len])
    (tensor,) = header["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("IMAGE", "BYTES", [1, 1])
    data = body[header_len:]
    assert tensor["parameters"]["binary_data_size"] == len(data)
    (length,) = struct.unpack("<I", data[:4])
    assert data[4:] == png and length == len(png)


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ({"outputs": [{"name": "SCORE", "data": [0.9, 0.05]}, {"name": "CLASS_INDEX", "data": [3, 1]}]}, ""),
        ({"outputs": [{"name": "CLASS_INDEX", "data": [3]}]}, "no SCORE output"),
        ({"outputs": [{"name": "SCORE", "data": []}]}, "SCORE has no data"),
        ({"outputs": [{"name": "SCORE", "data": [float("nan")]}]}, "not a probability"),
        ({"outputs": [{"name": "SCORE", "data": [7.5]}]}, "not a probability"),
    ],
)
def test_canary_checks_the_scores(response: dict[str, Any], problem: str) -> None:
    found = load_script("triton_probe").check_outputs(response)
    assert (problem in found) if problem else found == ""


def test_probe_script_needs_nothing_beyond_the_standard_library() -> None:
    tree = ast.parse((CHART / "files" / "triton_probe.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_no_probe_script_without_canary_or_local_http() -> None:
    objs = objects(render(BASE))
    assert not [o for o in objs if o["metadata"]["name"] == f"{FULLNAME}-probe"]
    assert "probe" not in {v["name"] for v in pod_spec(objs)["volumes"]}


def test_hpa_on_triton_queue_time(rendered: dict) -> None:
    objs = rendered["autoscaling-values.yaml"]
    hpa = find(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    (metric,) = hpa["spec"]["metrics"]
    assert metric == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "triton_queue_time_per_request_us"},
            "target": {"type": "AverageValue", "averageValue": "10000"},
        },
    }
    assert "replicas" not in find(objs, "Deployment")["spec"]  # the HPA owns the count


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (
            "cpu",
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            },
        ),
        (
            "gpuUtilization",
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "triton_gpu_utilization"},
                    "target": {"type": "AverageValue", "averageValue": "800m"},
                },
            },
        ),
        (
            "pendingRequests",
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "triton_pending_requests"},
                    "target": {"type": "AverageValue", "averageValue": "16"},
                },
            },
        ),
    ],
)
def test_hpa_metric_alternatives(metric: str, expected: dict[str, Any]) -> None:
    objs = objects(render(merge(BASE, {"autoscaling": {"enabled": True, "metric": metric}})))
    assert find(objs, "HorizontalPodAutoscaler")["spec"]["metrics"] == [expected]


def test_prometheus_adapter_rules_serve_the_hpa_metrics() -> None:
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    defaults = helm.Chart.load(CHART).values["autoscaling"]
    for metric in ("queueTime", "pendingRequests", "gpuUtilization"):
        rule = served[defaults[metric]["metricName"]]
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
    queue = served["triton_queue_time_per_request_us"]["metricsQuery"]
    assert "nv_inference_queue_duration_us" in queue and "nv_inference_request_success" in queue


def test_pod_disruption_budget(rendered: dict) -> None:
    objs = rendered["gpu-values.yaml"]
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = find(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert find(rendered["autoscaling-values.yaml"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == "25%"
    assert not [o for o in rendered["cpu-only-values.yaml"] if o["kind"] == "PodDisruptionBudget"]


def test_optional_features_default_off() -> None:
    kinds = {o["kind"] for o in objects(render(BASE))}
    assert kinds == {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"}


def test_alerts(rendered: dict) -> None:
    rule = find(rendered["gpu-values.yaml"], "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "CvserveP95LatencyAboveSlo",
        "CvserveErrorRateHigh",
        "CvserveQueueTimeHigh",
        "CvserveModelNotReady",
        "CvserveModelNotLoaded",
        "CvserveModelDrift",
        "CvserveConfidenceLow",
    }
    assert 'quantile="0.95"' in alerts["CvserveP95LatencyAboveSlo"]["expr"]
    assert alerts["CvserveP95LatencyAboveSlo"]["expr"].rstrip().endswith("> 50")
    assert "nv_inference_request_failure" in alerts["CvserveErrorRateHigh"]["expr"]
    assert "nv_inference_queue_duration_us" in alerts["CvserveQueueTimeHigh"]["expr"]
    assert 'model="resnet50"' in alerts["CvserveModelNotLoaded"]["expr"]
    assert f'service="{FULLNAME}"' in alerts["CvserveErrorRateHigh"]["expr"]
    assert alerts["CvserveErrorRateHigh"]["labels"] == {"severity": "critical", "team": "vision"}
    assert alerts["CvserveP95LatencyAboveSlo"]["annotations"]["summary"].startswith(
        "p95 latency of {{ $labels.model }}"
    )
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    drift = alerts["CvserveModelDrift"]
    assert drift["expr"] == (
        'min by (model, version, signal) (cvserve_drift_p_value{namespace="ml",job="cvserve-monitor"}) < 0.001'
    )
    assert drift["annotations"]["runbook_url"] == "https://docs.example.com/cvserve/runbooks/model-drift.md"
    low = alerts["CvserveConfidenceLow"]
    assert (
        "cvserve_top1_confidence_sum_total" in low["expr"]
        and "[30m]" in low["expr"]
        and "< 0.4" in low["expr"]
    )
    assert low["annotations"]["runbook_url"].endswith("/confidence-low.md")
    for alert in (drift, low):  # every runbook the chart links to exists in docs/runbooks
        assert (ROOT / "docs" / "runbooks" / alert["annotations"]["runbook_url"].rsplit("/", 1)[1]).is_file()


def test_quality_alerts_need_the_runbook_url() -> None:
    values = merge(BASE, {"monitoring": {"prometheusRule": {"enabled": True, "quality": {"enabled": True}}}})
    assert "monitoring.prometheusRule.quality.runbookBaseUrl is required" in render_error(values)


def test_dashboard_configmap(rendered: dict) -> None:
    (dashboard,) = [
        o for o in rendered["gpu-values.yaml"] if o["metadata"]["name"] == f"{FULLNAME}-dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["cvserve-triton.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in (
        "nv_inference_request_success",
        "nv_inference_request_summary_us",
        "nv_inference_queue_duration_us",
        "nv_gpu_utilization",
        "cvserve_top1_class_total",
        "cvserve_top1_confidence_sum_total",
        "cvserve_input_total",
        "cvserve_drift_p_value",
        "cvserve_rejections_total",
        "$price_per_hour",
    ):
        assert metric in exprs
    (price,) = [v for v in board["templating"]["list"] if v["name"] == "price_per_hour"]
    assert float(price["query"]) == 3.06  # monitoring.dashboard.pricePerHour


def _json_paths(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_paths(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_paths(item, f"{path}[{i}]")
    else:
        yield path


def _grafana_round_trip(board: dict) -> set[str]:
    """The fields of ``board`` that Grafana's dashboard model (grafana-foundation-sdk, generated from
    Grafana's schema) does not know: they are dropped when the board is read into it and written back."""
    sdk = pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    assert sdk is not None
    register_default_plugins()
    back = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
    return set(_json_paths(board)) - set(_json_paths(back))


def test_dashboard_fits_grafanas_dashboard_model(rendered: dict) -> None:
    (dashboard,) = [
        o for o in rendered["gpu-values.yaml"] if o["metadata"]["name"] == f"{FULLNAME}-dashboard"
    ]
    board = json.loads(dashboard["data"]["cvserve-triton.json"])
    assert _grafana_round_trip(board) == set()
    broken = json.loads(json.dumps(board))
    broken["panels"][0]["gridPoss"] = broken["panels"][0].pop("gridPos")  # a typo is caught
    assert _grafana_round_trip(broken) == {"/panels[0]/gridPoss/" + k for k in ("x", "y", "w", "h")}


def test_dashboard_low_confidence_bins_are_those_of_the_served_model() -> None:
    from cvserve.monitor import signals

    board = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    below = [b for b in signals.bin_labels(signals.CONFIDENCE_EDGES) if float(b) < signals.LOW_CONFIDENCE]
    assert f'bin=~"{"|".join(below)}"' in exprs


def test_network_policy(rendered: dict) -> None:
    policy = find(rendered["gpu-values.yaml"], "NetworkPolicy")
    inference, metrics = policy["spec"]["ingress"]
    assert [p["port"] for p in inference["ports"]] == ["http", "grpc"]
    assert inference["from"][0] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}
    }
    assert inference["from"][-1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "helm-test"
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]


def test_helm_test_pod_classifies_through_the_service(rendered: dict) -> None:
    pod = find(rendered["cpu-only-values.yaml"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/cvserve/client:0.1.0"
    assert container["command"] == [
        "cvserve",
        "predict",
        "resnet50",
        "/opt/cvserve/sample.png",
        "--url",
        f"{FULLNAME}.{NAMESPACE}.svc:8001",
    ]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "helm-test"
    assert pod["spec"]["restartPolicy"] == "Never"


# --- Per-model config overrides (dynamic batching) ------------------------------------------------------


def test_overrides_configmap_and_init_container(rendered: dict) -> None:
    objs = rendered["gpu-values.yaml"]
    (configmap,) = [o for o in objs if o["metadata"]["name"] == f"{FULLNAME}-model-config-overrides"]
    overrides = json.loads(configmap["data"]["overrides.json"])
    assert overrides["resnet50_network"]["dynamic_batching"]["preferred_batch_size"] == [16, 32]
    assert (
        configmap["data"]["apply_config_overrides.py"]
        == (CHART / "files" / "apply_config_overrides.py").read_text()
    )
    (init,) = pod_spec(objs)["initContainers"]
    assert init["image"] == triton_container(objs)["image"]  # the Triton image's own python3
    assert init["command"][:2] == ["python3", "/overrides/apply_config_overrides.py"]
    assert init["command"][2:] == ["/models", "/models-overlay", "/overrides/overrides.json"]
    sync = objects(render(scenario_values("autoscaling-values.yaml")))
    assert [c["name"] for c in pod_spec(sync)["initContainers"]] == [
        "sync-model-repository",
        "apply-model-config-overrides",
    ]


def test_overrides_roll_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        objs = objects(render(values))
        return find(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/model-config-overrides"
        ]

    first = merge(BASE, {"modelConfigOverrides": {"m": {"max_batch_size": 8}}})
    second = merge(BASE, {"modelConfigOverrides": {"m": {"max_batch_size": 16}}})
    assert checksum(first) != checksum(second)


@pytest.fixture(scope="module")
def overrides_script() -> Any:
    return load_script("apply_config_overrides")


def network_config_text() -> str:
    """A config.pbtxt like `cvserve build` writes, printed from Triton's own ModelConfig protobuf."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    config = model_config_pb2.ModelConfig(name="resnet50_network", backend="onnxruntime", max_batch_size=32)
    config.input.add(name="INPUT", data_type=model_config_pb2.TYPE_FP32, dims=[3, 224, 224])
    config.output.add(name="LOGITS", data_type=model_config_pb2.TYPE_FP32, dims=[1000])
    config.dynamic_batching.preferred_batch_size.extend([4, 8])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    # admission control as `cvserve build` writes it: a bounded queue, REJECT after the queue timeout
    policy = config.dynamic_batching.default_queue_policy
    policy.max_queue_size = 32
    policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = 200000
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1)
    config.parameters["note"].string_value = "braces { in } a string"
    return "# written by cvserve build\n" + text_format.MessageToString(config)


def test_override_script_replaces_batching_fields(overrides_script: Any) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    override = {
        "max_batch_size": 64,
        "dynamic_batching": {
            "preferred_batch_size": [16, 32],
            "max_queue_delay_microseconds": 2000,
            "preserve_ordering": True,
            "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 500000},
        },
    }
    patched = overrides_script.apply_override(network_config_text(), override)
    config = text_format.Parse(patched, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 64
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.dynamic_batching.preserve_ordering is True
    policy = config.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == 500000
    # everything else is untouched
    assert config.backend == "onnxruntime"
    assert [i.name for i in config.input] == ["INPUT"]
    assert list(config.input[0].dims) == [3, 224, 224]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.parameters["note"].string_value == "braces { in } a string"


def test_override_script_builds_overlay(overrides_script: Any, tmp_path: Path) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    source = tmp_path / "models"
    for name in ("resnet50", "resnet50_network", "resnet50_preprocess"):
        (source / name / "1").mkdir(parents=True)
        (source / name / "1" / "model.onnx").write_bytes(b"weights")
    (source / "resnet50_network" / "config.pbtxt").write_text(network_config_text())
    overrides = tmp_path / "overrides.json"
    overrides.write_text(
        json.dumps({"resnet50_network": {"dynamic_batching": {"max_queue_delay_microseconds": 7}}})
    )
    overlay = tmp_path / "overlay"
    # run it as the init container does, twice: a restarted init container finds its old overlay
    for _ in range(2):
        done = subprocess.run(
            [
                sys.executable,
                str(CHART / "files" / "apply_config_overrides.py"),
                str(source),
                str(overlay),
                str(overrides),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    assert "overridden: resnet50_network" in done.stdout
    assert (overlay / "resnet50").is_symlink()
    assert (overlay / "resnet50").resolve() == (source / "resnet50").resolve()
    network = overlay / "resnet50_network"
    assert network.is_dir() and not network.is_symlink()
    assert (network / "1").is_symlink() and (network / "1" / "model.onnx").read_bytes() == b"weights"
    config = text_format.Parse((network / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.dynamic_batching.max_queue_delay_microseconds == 7
    # merged, not replaced: the fields the override does not name are the build's
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 32
    assert config.max_batch_size == 32
    assert "max_queue_delay_microseconds: 100" in (source / "resnet50_network" / "config.pbtxt").read_text()


def parse_config(text: str) -> Any:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_queue_policy_override_merges_into_the_built_admission_control(overrides_script: Any) -> None:
    """An operator changes the queue bound and the queue timeout; the rest of the batcher stays as built."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    override = {
        "dynamic_batching": {
            "default_queue_policy": {"max_queue_size": 128, "default_timeout_microseconds": 50000}
        }
    }
    config = parse_config(overrides_script.apply_override(network_config_text(), override))
    batching = config.dynamic_batching
    policy = batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (128, 50000)
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT  # kept from the build
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 100
    assert config.parameters["note"].string_value == "braces { in } a string"


def test_version_policy_override_replaces_the_oneof(overrides_script: Any) -> None:
    """version_policy is a oneof: pinning a version must drop the build's latest policy, not add to it."""
    built = 'name: "m"\nversion_policy {\n  latest {\n    num_versions: 1\n  }\n}\nmax_batch_size: 8\n'
    pinned = parse_config(
        overrides_script.apply_override(built, {"version_policy": {"specific": {"versions": [2, 3]}}})
    )
    assert pinned.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(pinned.version_policy.specific.versions) == [2, 3]
    everything = parse_config(overrides_script.apply_override(built, {"version_policy": {"all": {}}}))
    assert everything.version_policy.WhichOneof("policy_choice") == "all"
    assert everything.max_batch_size == 8


@pytest.mark.parametrize(
    ("source", "override", "check"),
    [
        # no queue policy in the built config: the message is created
        (
            'name: "m"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100 }\n',
            {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 4, "timeout_action": "REJECT"}}},
            lambda c: (
                c.dynamic_batching.default_queue_policy.max_queue_size == 4
                and c.dynamic_batching.max_queue_delay_microseconds == 100
            ),
        ),
        # no dynamic_batching at all
        (
            'name: "m"\nmax_batch_size: 8\n',
            {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 4}}},
            lambda c: c.dynamic_batching.default_queue_policy.max_queue_size == 4,
        ),
        # "name: { ... }" spelling, comments and separators survive
        (
            'name: "m" # the model\ndynamic_batching: {\n  preferred_batch_size: [2, 4];\n'
            "  # bounded queue\n  default_queue_policy < max_queue_size: 9 >\n},\nmax_batch_size: 8\n",
            {"dynamic_batching": {"default_queue_policy": {"default_timeout_microseconds": 7}}},
            lambda c: (
                c.dynamic_batching.default_queue_policy.max_queue_size == 9
                and c.dynamic_batching.default_queue_policy.default_timeout_microseconds == 7
                and list(c.dynamic_batching.preferred_batch_size) == [2, 4]
                and c.max_batch_size == 8
            ),
        ),
        # a list replaces the repeated field; an empty one removes it
        (
            'name: "m"\ndynamic_batching {\n  preferred_batch_size: 4\n  preferred_batch_size: 8\n}\n',
            {"dynamic_batching": {"preferred_batch_size": []}},
            lambda c: list(c.dynamic_batching.preferred_batch_size) == [],
        ),
    ],
)
def test_override_merge_cases(overrides_script: Any, source: str, override: dict, check: Any) -> None:
    patched = overrides_script.apply_override(source, override)
    assert check(parse_config(patched)), patched


def test_override_of_unknown_model_fails(overrides_script: Any, tmp_path: Path) -> None:
    (tmp_path / "models" / "resnet50").mkdir(parents=True)
    with pytest.raises(overrides_script.OverrideError, match="resnet5O_network"):
        overrides_script.build_overlay(
            str(tmp_path / "models"), str(tmp_path / "overlay"), {"resnet5O_network": {}}
        )


# --- values.yaml documentation --------------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<value>.*)$")


def test_every_values_key_is_commented() -> None:
    """Each leaf key has a comment above it, or sits under a key documented as a whole ("# -- ...")."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_blocks: list[int] = []  # indents of open "# --" documented keys
    missing = []
    for i, line in enumerate(lines):
        match = _KEY.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match["indent"])
        documented_blocks = [d for d in documented_blocks if d < indent]
        above = lines[i - 1].strip() if i else ""
        is_leaf = match["value"].strip() != ""
        if above.startswith("# --"):
            documented_blocks.append(indent)
        elif is_leaf and not above.startswith("#") and not documented_blocks:
            missing.append(match["key"])
    assert missing == []


def test_schema_covers_every_values_key() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)  # additionalProperties: false everywhere it is ours
        schema = chart.schema
    assert schema["properties"]["replicaCount"]["type"] == "integer"
    assert schema["additionalProperties"] is False


def test_helm_test_passes_a_client_certificate_under_mutual_tls() -> None:
    values = merge(
        BASE,
        {
            "tls": {"enabled": True, "secretName": "server-tls", "mutual": True},
            "helmTest": {"clientTlsSecretName": "client-tls"},
        },
    )
    pod = next(o for o in objects(render(values)) if o["kind"] == "Pod" and "test" in o["metadata"]["name"])
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--url") + 1].startswith("grpcs://")
    assert command[command.index("--private-key") + 1] == "/etc/cvserve/client-tls/tls.key"
    assert command[command.index("--certificate-chain") + 1] == "/etc/cvserve/client-tls/tls.crt"
    assert command[command.index("--root-certificates") + 1] == "/etc/cvserve/client-tls/ca.crt"
    [secret] = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert secret["secret"]["secretName"] == "client-tls"
