"""Model configs come from Triton's protobuf and describe the served layouts."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.admission import resolve
from cvserve.builders.profile import EngineProfile
from cvserve.errors import UserInputError
from cvserve.slo import DEFAULT_SLO_P95_MS

LABELS = [f"class {i}" for i in range(10)]
SHAPE = tc.PipelineShape(pixels_shape=(224, 224, 3), top_k=5, labels=LABELS)


def _configs(target="cpu", runtime="auto", layout="auto", **batching):
    plan = rt.decide(target=target, runtime=runtime, layout=layout)
    b = resolve(tc.Batching(**batching), plan.roles, None)  # no throughput measured: the rule's floor
    return tc.pipeline_configs("resnet", plan, SHAPE, b, tc.VersionPolicy())


def test_single_layout_is_one_python_model_with_the_v2_contract():
    configs = _configs()
    assert list(configs) == ["classifier"]
    cfg = configs["classifier"]
    assert (cfg.name, cfg.backend) == ("resnet", "python")
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("IMAGE", mc.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("CLASS_INDEX", mc.TYPE_INT64, [5]),
        ("SCORE", mc.TYPE_FP32, [5]),
    ]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["labels"]) == LABELS
    assert (params["runtime"], params["network_file"]) == ("openvino", "model.xml")
    # two instances: Triton 2.51's batcher misses a request's wake-up when no instance is waiting
    assert cfg.instance_group[0].count == 2


def test_ensemble_layout_wires_preprocess_to_a_native_network():
    configs = _configs(layout="ensemble", runtime="onnxruntime")
    assert list(configs) == ["preprocess", "network", "classifier"]  # what clients call is written last
    ensemble = configs["classifier"]
    assert ensemble.platform == "ensemble"
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["resnet_preprocess", "resnet_network"]
    assert steps[0].output_map["PIXELS"] == steps[1].input_map["PIXELS"]
    assert not configs["preprocess"].HasField("dynamic_batching")  # each request decoded (and failed) alone
    assert configs["network"].dynamic_batching.default_queue_policy.max_queue_size > 0  # the network batches
    pixels = configs["preprocess"].output[0]
    assert (pixels.name, pixels.data_type, list(pixels.dims)) == ("PIXELS", mc.TYPE_UINT8, [224, 224, 3])
    assert configs["network"].input[0].data_type == mc.TYPE_UINT8  # only uint8 travels between models
    assert json.loads(ensemble.parameters["labels"].string_value) == LABELS


@pytest.mark.parametrize(
    ("runtime", "backend", "platform", "filename"),
    [
        ("onnxruntime", "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ("openvino", "openvino", "", "model.xml"),
    ],
)
def test_native_cpu_backends_for_the_ngc_container(runtime, backend, platform, filename):
    cfg = _configs(layout="ensemble", runtime=runtime, network_threads=2)["network"]
    assert (cfg.backend, cfg.platform, cfg.default_model_filename) == (backend, platform, filename)
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    threads = "intra_op_thread_count" if runtime == "onnxruntime" else "INFERENCE_NUM_THREADS"
    assert cfg.parameters[threads].string_value == "2"


def test_gpu_target_is_a_tensorrt_engine_on_gpu_instances():
    cfg = _configs(target="gpu")["network"]
    assert (cfg.platform, cfg.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_onnxruntime_on_gpu_uses_the_tensorrt_accelerator_with_the_engine_profile():
    cfg = _configs(target="gpu", runtime="onnxruntime", max_batch_size=16, preferred_batch_sizes=[4])[
        "network"
    ]
    [accelerator] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["trt_profile_min_shapes"] == "PIXELS:1x224x224x3"
    assert accelerator.parameters["trt_profile_opt_shapes"] == "PIXELS:4x224x224x3"
    assert accelerator.parameters["trt_profile_max_shapes"] == "PIXELS:16x224x224x3"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_the_single_layout_executes_one_request_at_a_time_by_default():
    """Malformed framing fails the batch of requests it lands in (docs/security.md): so none is formed."""
    batcher = _configs(max_batch_size=16)["classifier"].dynamic_batching
    assert list(batcher.preferred_batch_size) == list(tc.ONE_REQUEST_PER_EXECUTION) == [1]
    assert batcher.max_queue_delay_microseconds == 0
    assert batcher.default_queue_policy.max_queue_size == 16  # admission control stays
    ensemble = _configs(layout="ensemble", runtime="openvino", preferred_batch_sizes=[4, 8])
    assert not ensemble["preprocess"].HasField("dynamic_batching")  # the decoder runs requests alone
    assert list(ensemble["network"].dynamic_batching.preferred_batch_size) == [4, 8]  # pixels batch


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"preferred_batch_sizes": [4, 8]}, "--preferred-batch-sizes shape"),
        ({"max_queue_delay_us": 500}, "--max-queue-delay-us shape"),
        ({"preferred_batch_sizes": [4], "max_queue_delay_us": 500}, "--preferred-batch-sizes and --max"),
    ],
)
def test_request_batching_flags_on_the_single_layout_need_batch_requests(flags, named):
    with pytest.raises(UserInputError, match=f"{named}.*add --batch-requests, or serve --layout ensemble"):
        _configs(**flags)


def test_dynamic_batching_instances_and_threads():
    cfg = _configs(
        max_batch_size=16,
        batch_requests=True,
        preferred_batch_sizes=[4, 8],
        max_queue_delay_us=500,
        network_instances=2,
        network_threads=1,
        decode_threads=3,
    )["classifier"]
    assert cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    assert cfg.parameters["decode_threads"].string_value == "3"


def test_admission_control_rejects_instead_of_queueing_without_bound():
    policy = _configs(max_batch_size=16)["classifier"].dynamic_batching.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert policy.max_queue_size == 16  # throughput not measured: one max batch, the rule's floor
    assert policy.default_timeout_microseconds == round(2 * DEFAULT_SLO_P95_MS * 1000)  # 2 x the SLO
    explicit = _configs(max_queue_size=5, queue_timeout_ms=40)["classifier"].dynamic_batching
    assert (
        explicit.default_queue_policy.max_queue_size,
        explicit.default_queue_policy.default_timeout_microseconds,
    ) == (
        5,
        40_000,
    )
    slo = _configs(slo_p95_ms=800)["classifier"].dynamic_batching.default_queue_policy
    assert slo.default_timeout_microseconds == 1_600_000
    # never at or below Triton's 500 ms batcher re-check (a request waiting for it would be rejected)
    tight = _configs(slo_p95_ms=100)["classifier"].dynamic_batching.default_queue_policy
    assert tight.default_timeout_microseconds == round(tc.MIN_DERIVED_QUEUE_TIMEOUT_MS * 1000)


def test_text_format_round_trip():
    for layout, runtime in (("single", "auto"), ("ensemble", "openvino")):
        for cfg in _configs(layout=layout, runtime=runtime).values():
            assert tc.parse(tc.to_text(cfg)) == cfg


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
        ({"max_queue_size": -1}, "--max-queue-size"),
        ({"slo_p95_ms": 0}, "--slo-p95-ms"),
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
    cfg = _configs(layout="ensemble", runtime="openvino")["network"]
    with pytest.raises(UserInputError, match="--runtime onnxruntime"):
        tc.add_tensorrt_accelerator(cfg, precision="int8", shape=SHAPE, profile=EngineProfile.for_batching(8))
