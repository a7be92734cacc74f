"""The Helm chart (helm/cvserve) rendered by Helm's own Go code: lint, a client-side dry-run install,
Helm's values.schema.json validation, clear errors for misconfiguration, every rendered manifest checked
in strict mode with kubernetes-validate for several Kubernetes versions, the Prometheus Operator objects
with jsonschema against the CRD schemas under tests/unit/schemas/, what the workload objects say, and
the documentation of values.yaml. No cluster is involved.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit._chart import (
    BASE,
    CHART,
    CRD_SCHEMAS,
    DEFAULT_GROUPS,
    FULLNAME,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    SCHEMAS,
    find,
    helm,
    jsonschema,
    kubernetes_validate,
    merge,
    objects,
    pod_spec,
    render,
    render_error,
    scenario_values,
    triton_container,
)


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


def test_optional_features_default_off() -> None:
    kinds = {o["kind"] for o in objects(render(BASE))}
    assert kinds == {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"}


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
