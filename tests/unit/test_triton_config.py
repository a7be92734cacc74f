"""Model configs come from Triton's protobuf and describe the four-model pipeline."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import triton_config as tc
from cvserve.errors import UserInputError

SHAPE = tc.PipelineShape(tensor_shape=(3, 224, 224), num_classes=1000, top_k=5)


def _configs(runtime="python", **batching):
    return tc.pipeline_configs("resnet", SHAPE, tc.Batching(**batching), tc.VersionPolicy(), runtime)


def test_ensemble_wires_preprocess_network_postprocess():
    cfg = _configs()["ensemble"]
    assert cfg.platform == "ensemble"
    steps = cfg.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["resnet_preprocess", "resnet_network", "resnet_postprocess"]
    assert steps[0].output_map["input"] == steps[1].input_map["input"]
    assert steps[1].output_map["logits"] == steps[2].input_map["logits"]
    assert [i.data_type for i in cfg.input] == [mc.TYPE_STRING]
    assert {o.name: list(o.dims) for o in cfg.output} == {"CLASS_INDEX": [5], "SCORE": [5], "LABEL": [5]}


def test_network_dynamic_batching_and_instances():
    cfg = _configs(
        max_batch_size=16, preferred_batch_sizes=[4, 8], max_queue_delay_us=500, network_instances=2
    )["network"]
    assert cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.backend == "python" and cfg.parameters["onnx_file"].string_value == "model.onnx"


@pytest.mark.parametrize(
    ("runtime", "platform", "filename"),
    [("onnxruntime", "onnxruntime_onnx", "model.onnx"), ("tensorrt", "tensorrt_plan", "model.plan")],
)
def test_native_backends_for_the_ngc_container(runtime, platform, filename):
    cfg = _configs(runtime)["network"]
    assert (cfg.platform, cfg.default_model_filename) == (platform, filename)


def test_text_format_round_trip():
    for cfg in _configs().values():
        assert tc.parse(tc.to_text(cfg)) == cfg


def test_top_k_is_capped_by_the_number_of_classes():
    shape = tc.PipelineShape(tensor_shape=(3, 8, 8), num_classes=3, top_k=5)
    cfg = tc.postprocess_config("tiny", shape, tc.Batching(), tc.VersionPolicy())
    assert [list(o.dims) for o in cfg.output] == [[3], [3], [3]]


@pytest.mark.parametrize(
    "text,expected",
    [("latest:2", ("latest", (2,))), ("all", ("all", ())), ("specific:1,3", ("specific", (1, 3)))],
)
def test_version_policy_parsing(text, expected):
    policy = tc.VersionPolicy.parse(text)
    assert (policy.kind, policy.values) == expected
    assert policy.proto().WhichOneof("policy_choice") == expected[0]


@pytest.mark.parametrize("text", ["latest", "latest:0", "newest:1", "specific:", "latest:1,2"])
def test_bad_version_policy_names_the_forms(text):
    with pytest.raises(UserInputError, match="latest:N, all, or specific"):
        tc.VersionPolicy.parse(text)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"max_batch_size": 0}, "--max-batch-size"),
        ({"max_batch_size": 8, "preferred_batch_sizes": [16]}, "outside 1..max batch size 8"),
        ({"network_instances": 0}, "--network-instances"),
    ],
)
def test_bad_batching_values(kwargs, needle):
    with pytest.raises(UserInputError, match=needle):
        tc.Batching(**kwargs)


@pytest.mark.parametrize("name", ["1abc", "a b", "", "x" * 80, "../evil"])
def test_model_names_are_checked(name):
    with pytest.raises(UserInputError):
        tc.check_name(name)


def test_tensorrt_accelerator_needs_the_onnxruntime_backend():
    shape = tc.PipelineShape(tensor_shape=(3, 224, 224), num_classes=10)
    cfg = tc.network_config("m", shape, tc.Batching(), tc.VersionPolicy(), "python")
    with pytest.raises(UserInputError, match="--runtime onnxruntime"):
        tc.add_tensorrt_accelerator(
            cfg, precision="int8", input_name="input", tensor_shape=(3, 224, 224), b=tc.Batching()
        )
