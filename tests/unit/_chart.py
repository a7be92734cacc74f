"""What the Helm chart tests share: the chart rendered by Helm's own Go code, and reading its objects.

Helm runs in-process through helm-python-sdk (libhelm_c over Helm's Go SDK), so these tests stay in
tests/unit: Helm's Go runtime segfaulted when it was loaded after the integration tests in one process
(the Makefile says why; tests/integration/_chart.py renders in a child process instead). Importing this
module skips the importing test module where helm-python-sdk or the validators are not installed.
"""

from __future__ import annotations

import importlib.util
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


def render_scenarios() -> dict[str, list[dict[str, Any]]]:
    """Every ci/ scenario's objects, by file name (the ``rendered`` fixture of tests/unit/conftest.py)."""
    return {name: objects(render(scenario_values(name))) for name in SCENARIOS}


def find(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as info:
        render(values)
    return str(info.value)


def triton_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]]
    assert container["name"] == "triton"
    return container


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objs, "Deployment")["spec"]["template"]["spec"]


def load_script(name: str) -> Any:
    """One of the chart's python scripts (helm/cvserve/files/NAME.py), imported as a module."""
    spec = importlib.util.spec_from_file_location(name, CHART / "files" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
