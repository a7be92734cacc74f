"""The Helm chart's probes: startup, readiness and liveness on Triton's health endpoints, the canary
liveness probe, and the probe script (helm/cvserve/files/triton_probe.py) itself. The script runs
against the embedded Triton in tests/integration/test_reliability.py.
"""

from __future__ import annotations

import ast
import io
import json
import struct
import sys
from typing import Any

import pytest

from tests.unit._chart import (
    BASE,
    CHART,
    FULLNAME,
    PROBE,
    find,
    load_script,
    merge,
    objects,
    pod_spec,
    render,
    triton_container,
)


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
