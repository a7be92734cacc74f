"""The Helm chart's per-model config overrides: the ConfigMap and init container that apply them, and
the script itself (helm/cvserve/files/apply_config_overrides.py), which merges an override into a built
config.pbtxt and builds the overlay repository Triton serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit._chart import (
    BASE,
    CHART,
    FULLNAME,
    find,
    load_script,
    merge,
    objects,
    pod_spec,
    render,
    scenario_values,
    triton_container,
)


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
