"""Triton model configurations, built from Triton's own ``model_config`` protobuf (shipped in tritonclient).

Never assembled from strings: every field is typed and checked by protobuf, and printed with
``text_format``. What clients call is always NAME: IMAGE (BYTES, [1]) -> CLASS_INDEX (INT64, [k]),
SCORE (FP32, [k]), with the class names in NAME's ``labels`` parameter (a JSON array). The layouts
(:mod:`cvserve.builders.runtime`):

* ``single``: NAME, a python-backend model that decodes and runs the network (OpenVINO/ONNX Runtime);
* ``ensemble``: NAME (ensemble) -> NAME_preprocess (python: IMAGE -> PIXELS uint8 [H, W, 3]) ->
  NAME_network (openvino / onnxruntime_onnx / tensorrt_plan: PIXELS -> CLASS_INDEX, SCORE); a
  detector's adds PLACEMENT from NAME_preprocess and NAME_postprocess (python: the network's NMS rows
  and PLACEMENT -> BOXES, SCORES, CLASSES, COUNT), the routing derived from the step configs.

Admission control: the model that first queues a request rejects it, as a retryable UNAVAILABLE,
when its queue holds ``max_queue_size`` requests or when it has waited ``queue_timeout_ms``, so an
overload turns into fast rejections instead of unbounded latency. The default queue bound follows from
the SLO and the measured throughput (:mod:`cvserve.builders.admission`), resolved by the build. What Triton 2.51 does with it, as
measured (docs/serving.md, "Admission control"): a full queue rejects at once (a few ms); a timed-out
request is rejected when the batcher next looks at its queue, i.e. at its next batch or at its 500 ms
re-check while the instance is busy. Any queue policy turns off the batcher's payload prefetching, and
the batcher then misses the wake-up of a request that arrives while the instance is handing back its
last batch: such a request waits for that 500 ms re-check. A queue timeout at or below 500 ms rejects
it ("Request timeout expired" at concurrency 1, e.g. every perf_analyzer run), hence a floor. The
wake-up is missed only when no instance is waiting for work, so the model that runs the network gets
two instances by default (``network_instances``): one of them is nearly always waiting, and the
thread budget gives each half the cores. Under saturating load both are busy, and an instance that
finishes idles until the next request arrives (about a client round trip): a few percent of a 20 ms
request, 9-16% of the CPU for a detector's 1.3 ms ones, where 6 instances recover it (measured:
docs/serving.md, "Short requests need more instances under load"). So the build gives 6 to a model whose
one-request execution it times under 5 ms (:mod:`cvserve.builders.admission`).

Malformed BYTES framing (a last element whose length prefix runs past its data) passes Triton core's
check and makes the python backend fail the whole batch of requests it lands in (docs/security.md). So
no python model that reads ``IMAGE`` runs two requests in one execution: the ensemble's decoder has no
dynamic batcher, and the single layout's model keeps one for admission control but executes one request
at a time (:data:`ONE_REQUEST_PER_EXECUTION`; a request of n images is still a batch of n). Each bad
request then fails alone. On the 2-core CPU reference this was also faster than batching requests
(docs/benchmarks.md, "One request per execution"); ``--batch-requests`` turns request batching back on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import tasks
from cvserve.builders.detection import NmsSettings
from cvserve.builders.profile import EngineProfile
from cvserve.builders.runtime import ENTRY, TRITON_BACKENDS, Layout, ServingPlan, model_names
from cvserve.builders.scheduling import ONE_REQUEST_PER_EXECUTION, Scheduling
from cvserve.client import contract
from cvserve.errors import UserInputError
from cvserve.settings import integers, like, setting, to_argv
from cvserve.slo import DEFAULT_SLO_P95_MS, LatencyObjective

IMAGE = contract.IMAGE
PIXELS = contract.PIXELS
CLASS_INDEX = contract.CLASS_INDEX
SCORE = contract.SCORE
FEATURES = contract.FEATURES  # optional: the feature summary the served model counts (docs/monitoring.md)
LABELS_PARAMETER = contract.LABELS_PARAMETER
# The float precision the network computes in (cvserve.builders.precision), per backend: cvserve's
# python model takes f32 or bf16; Triton's openvino backend only takes HINT_BF16 (it cannot pin f32).
PRECISION_PARAMETER = contract.PRECISION_PARAMETER
OPENVINO_BF16_PARAMETER = "HINT_BF16"
NETWORK_INSTANCES = 2  # the default instances of the model that runs the network (the module's docstring)
# Triton's dynamic batcher re-checks a queue it was not woken for every 500 ms (hard-coded in 2.51 and
# still on core main): a derived queue timeout stays a full re-check above it (module docstring).
BATCHER_RECHECK_MS = 500.0
MIN_DERIVED_QUEUE_TIMEOUT_MS = 2 * BATCHER_RECHECK_MS

__all__ = ["ONE_REQUEST_PER_EXECUTION", "Scheduling", "model_names"]


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", name):
        raise UserInputError(f"--name {name!r}: use letters, digits, '_', '-', '.', starting with a letter")
    return name


@dataclass(kw_only=True)
class Batching:
    """Dynamic batching, admission control, instances and threads; ops tune these (``cvserve tune``)."""

    # 16: under overload an admitted request waits for a running batch and its own, so the batch's run
    # time bounds the admitted latency. On the 2-core CPU reference (one intra-op thread per instance) an
    # FP32 MobileNetV2 batch of 32 takes ~0.7 s, more than the default 500 ms SLO: R2 admitted p95
    # 1.66 s with 32, 0.90 s with 16 (within 2 x SLO), and an A/B at 8 users served the same
    # throughput with either (docs/benchmarks.md). GPUs want larger batches: --max-batch-size.
    max_batch_size: int = setting(16, help="largest batch the server forms (the engine profile's max)")
    preferred_batch_sizes: Sequence[int] = setting(
        (),
        parser=integers,
        metavar="N,N",
        help="dynamic batching preferred sizes, e.g. 4,8 (single layout: with --batch-requests)",
    )
    max_queue_delay_us: int = setting(
        0,
        help="how long the batcher waits to fill a batch (0: batch what is waiting; single layout: with "
        "--batch-requests)",
    )
    # Off: the single layout's model executes one request at a time, so a request with malformed
    # framing fails alone (module docstring), and on the 2-core reference it served more, not less.
    batch_requests: bool = setting(
        False,
        help="single layout: let one execution run several requests (off: each runs alone, and a "
        "malformed one fails only itself; docs/serving.md)",
    )
    # Requests waiting per model before new ones are rejected at once. None: derived by the build from
    # the SLO and the served network's measured throughput (cvserve.builders.admission, the one place of
    # that rule) and written as a number; 0: unbounded, as in Triton's config and cvserve tune.
    max_queue_size: int | None = setting(
        None,
        help="requests waiting before new ones are rejected as UNAVAILABLE (0: unbounded)",
        default_help="what the build's measured throughput finishes within half of --slo-p95-ms, at "
        "least one max batch",
    )
    # A request waiting longer is rejected. None: 2 x the SLO (the latency an admitted request may reach
    # under overload), never below MIN_DERIVED_QUEUE_TIMEOUT_MS; 0: no timeout, as in Triton's config.
    queue_timeout_ms: float | None = setting(
        None,
        help="a request queued longer is rejected as UNAVAILABLE (0: no timeout)",
        default_help="2 x --slo-p95-ms, at least 1 s",
    )
    slo_p95_ms: float = like(
        LatencyObjective, "slo_p95_ms", help="latency objective the queue bound and timeout derive from"
    )
    # None: decided by the build (cvserve.builders.admission, the one place of that rule): more instances
    # where a request is short enough for the idle gap between requests to matter, else NETWORK_INSTANCES.
    network_instances: int | None = setting(
        None,
        help="instances of the model that runs the network (docs/serving.md, 'Short requests need more "
        "instances under load')",
        default_help="6 where the build times a one-request execution under 5 ms on this machine, else 2",
    )
    preprocess_instances: int = setting(2, help="ensemble layout: instances of the python decoder")
    network_threads: int = setting(
        0, help="intra-op threads per instance (0: the server's cores / instances, decided when served)"
    )
    decode_threads: int = setting(0, help="decode threads per instance (0: derived when served)")

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise UserInputError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise UserInputError(
                f"preferred batch sizes {bad} are outside 1..max batch size {self.max_batch_size}"
            )
        for flag, value in (
            ("--max-queue-delay-us", self.max_queue_delay_us),
            ("--max-queue-size", self.max_queue_size or 0),
            ("--queue-timeout-ms", self.queue_timeout_ms or 0),
            ("--network-threads", self.network_threads),
            ("--decode-threads", self.decode_threads),
        ):
            if value < 0:
                raise UserInputError(f"{flag} must be >= 0, got {value}")
        if self.slo_p95_ms <= 0:
            raise UserInputError(f"--slo-p95-ms must be positive, got {self.slo_p95_ms}")
        for label, n in (("network", self.network_instances), ("preprocess", self.preprocess_instances)):
            if n is not None and n < 1:
                raise UserInputError(f"--{label}-instances must be at least 1, got {n}")

    @property
    def profile(self) -> EngineProfile:
        return EngineProfile.for_batching(self.max_batch_size, self.preferred_batch_sizes)

    @property
    def queue_timeout_us(self) -> int:
        if self.queue_timeout_ms is None:
            return round(1000 * max(2 * self.slo_p95_ms, MIN_DERIVED_QUEUE_TIMEOUT_MS))
        return round(1000 * self.queue_timeout_ms)

    def scheduling(
        self, layout: Layout, max_queue_size: int | None = None, network_instances: int | None = None
    ) -> Scheduling:
        """These flags as absolute settings for ``layout``; ``max_queue_size`` resolves a derived bound,
        ``network_instances`` a derived count (the build's admission stage, :mod:`cvserve.builders.admission`;
        not derived: :data:`NETWORK_INSTANCES`)."""
        queue = self.max_queue_size if self.max_queue_size is not None else max_queue_size
        if queue is None:
            raise ValueError(
                "max_queue_size is derived at build time: resolve it (cvserve.builders.admission)"
            )
        self.check(layout)
        one_request = layout.one_model and not self.batch_requests
        return Scheduling(
            max_batch_size=self.max_batch_size,
            preferred_batch_sizes=ONE_REQUEST_PER_EXECUTION
            if one_request
            else tuple(self.preferred_batch_sizes),
            max_queue_delay_us=self.max_queue_delay_us,
            network_instances=self.network_instances or network_instances or NETWORK_INSTANCES,
            network_threads=self.network_threads,
            decode_threads=self.decode_threads,
            preprocess_instances=None if layout.one_model else self.preprocess_instances,
            max_queue_size=queue,
            queue_timeout_us=self.queue_timeout_us,
        )

    def check(self, layout: Layout) -> None:
        """Refuse batching flags ``layout`` would ignore, naming the fix."""
        if not layout.one_model or self.batch_requests:  # not one model that runs one request
            return
        given = [
            flag
            for flag, value in (
                ("--preferred-batch-sizes", self.preferred_batch_sizes),
                ("--max-queue-delay-us", self.max_queue_delay_us),
            )
            if value
        ]
        if given:
            raise UserInputError(
                f"{' and '.join(given)} shape batches of several requests, and the single layout executes "
                "one request at a time (so a malformed request fails alone): add --batch-requests, or "
                "serve --layout ensemble"
            )

    @classmethod
    def of(cls, s: Scheduling, layout: Layout, *, slo_p95_ms: float = DEFAULT_SLO_P95_MS) -> Batching:
        """The flags that give ``s`` back on ``layout`` (:meth:`scheduling`'s inverse)."""
        single = layout.one_model
        one_request = s.preferred_batch_sizes == ONE_REQUEST_PER_EXECUTION and not s.max_queue_delay_us
        return cls(
            max_batch_size=s.max_batch_size,
            preferred_batch_sizes=() if single and one_request else s.preferred_batch_sizes,
            max_queue_delay_us=s.max_queue_delay_us,
            batch_requests=single and not one_request,
            max_queue_size=s.max_queue_size,
            queue_timeout_ms=s.queue_timeout_us / 1000,
            slo_p95_ms=slo_p95_ms,
            network_instances=s.network_instances,
            preprocess_instances=s.preprocess_instances or cls.preprocess_instances,
            network_threads=s.network_threads,
            decode_threads=s.decode_threads or 0,
        )

    def flags(self) -> list[str]:
        """``cvserve build`` flags of every setting here, defaults included (a rebuild is then the same
        whatever the defaults become)."""
        return to_argv(self)


@dataclass(kw_only=True)
class VersionPolicy:
    """``latest:N``, ``all`` or ``specific:1,3``."""

    kind: str = "latest"
    values: tuple[int, ...] = (1,)

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, rest = text.partition(":")
        try:
            values = tuple(int(v) for v in rest.split(",") if v.strip())
        except ValueError:
            values = ()
        if kind == "all" and not rest:
            return cls(kind="all", values=())
        if (
            kind in ("latest", "specific")
            and values
            and min(values) >= 1
            and (kind == "specific" or len(values) == 1)
        ):
            return cls(kind=kind, values=values)
        raise UserInputError(f"--version-policy {text!r}: use latest:N, all, or specific:V[,V...]")

    def proto(self) -> mc.ModelVersionPolicy:
        if self.kind == "all":
            return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
        if self.kind == "specific":
            return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=list(self.values)))
        return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=self.values[0]))


@dataclass(kw_only=True)
class PipelineShape:
    """What the configs need to know about the served network."""

    pixels_shape: tuple[int, int, int]  # (H, W, 3), without the batch dimension
    top_k: int  # rows per image: a classifier's top-k, a detector's fixed K
    labels: Sequence[str]
    precision: str = "fp32"  # of the network: the TensorRT accelerator's precision mode follows it
    float_parts: str = "f32"  # what the runtime computes float layers in (cvserve.builders.precision)
    execution_env: str | None = None  # EXECUTION_ENV_PATH of the python models (NGC container)
    feature_dims: int = 0  # width of the served graph's FEATURES output; 0: it has none
    task: str = tasks.DEFAULT  # what the outputs and task parameters are (cvserve.builders.tasks)
    nms: NmsSettings | None = None  # a detector's postprocessing

    def task_of(self):
        return tasks.get(self.task, top_k=self.top_k, nms=self.nms)


def _params(cfg: mc.ModelConfig, params: dict[str, object]) -> None:
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)


def _outputs(shape: PipelineShape, features: bool = False) -> list[mc.ModelOutput]:
    outputs = shape.task_of().outputs(shape.top_k)
    if features and shape.feature_dims:  # clients ask for outputs by name: they never receive it
        outputs.append(mc.ModelOutput(name=FEATURES, data_type=mc.TYPE_FP32, dims=[shape.feature_dims]))
    return outputs


def _task_params(shape: PipelineShape) -> dict[str, object]:
    return {contract.TASK_PARAMETER: shape.task, **shape.task_of().parameters()}


def _dynamic_batching() -> mc.ModelDynamicBatching:
    """A dynamic batcher that rejects what waits too long; the numbers are :meth:`Scheduling.apply`'s."""
    policy = mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.TimeoutAction.REJECT, allow_timeout_override=True
    )
    return mc.ModelDynamicBatching(default_queue_policy=policy)


def _instances(kind: str) -> list[mc.ModelInstanceGroup]:
    return [mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.Kind.Value(kind))]


def _python_params(shape: PipelineShape) -> dict[str, object]:
    return {"EXECUTION_ENV_PATH": shape.execution_env} if shape.execution_env else {}


def single_config(
    name: str, plan: ServingPlan, shape: PipelineShape, policy: VersionPolicy
) -> mc.ModelConfig:
    """NAME as one python-backend model: decode on a thread pool, run the network in-process.

    One request per execution unless ``--batch-requests`` (module docstring).
    """
    cfg = mc.ModelConfig(
        name=name,
        backend="python",
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])],
        output=_outputs(shape, features=True),
        dynamic_batching=_dynamic_batching(),
        instance_group=_instances(plan.instance_kind),
    )
    _params(
        cfg,
        {
            LABELS_PARAMETER: json.dumps(list(shape.labels), ensure_ascii=False),
            "runtime": plan.runtime,
            "network_file": plan.network_file,
            PRECISION_PARAMETER: shape.float_parts,
            **_task_params(shape),
            **_python_params(shape),
        },
    )
    return cfg


def preprocess_config(
    name: str, plan: ServingPlan, shape: PipelineShape, policy: VersionPolicy
) -> mc.ModelConfig:
    """NAME_preprocess (ensemble layout): encoded images -> uint8 pixels, on CPU instances.

    No dynamic batching: each request is decoded alone, so malformed framing fails only its own
    request (module docstring); its instances decode requests in parallel, and the network batches.
    """
    cfg = mc.ModelConfig(
        name=model_names(name)["preprocess"],
        backend="python",
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])],
        output=shape.task_of().decoder_outputs(shape.pixels_shape),
        instance_group=_instances("KIND_CPU"),
    )
    _params(cfg, _python_params(shape))
    return cfg


def postprocess_config(
    name: str, plan: ServingPlan, shape: PipelineShape, policy: VersionPolicy
) -> mc.ModelConfig:
    """NAME_postprocess (a detector's ensemble): the network's NMS rows and the decoder's PLACEMENT ->
    the wire outputs in original pixels, on CPU instances, each request alone."""
    task = shape.task_of()
    decoded = {o.name: o for o in task.decoder_outputs(shape.pixels_shape)}
    cfg = mc.ModelConfig(
        name=model_names(name)[plan.roles.postprocess],
        backend="python",
        version_policy=policy.proto(),
        input=[
            mc.ModelInput(name=o.name, data_type=o.data_type, dims=list(o.dims))
            for o in [*task.network_outputs(shape.top_k), decoded[contract.PLACEMENT]]
        ],
        output=_outputs(shape),
        instance_group=_instances("KIND_CPU"),
    )
    _params(cfg, {**_task_params(shape), **_python_params(shape)})
    return cfg


def network_config(
    name: str, plan: ServingPlan, shape: PipelineShape, policy: VersionPolicy, profile: EngineProfile
) -> mc.ModelConfig:
    """NAME_network (ensemble layout) on a native backend: pixels -> the task's network outputs
    (a classifier's CLASS_INDEX, SCORE; a detector's NMS rows)."""
    cfg = mc.ModelConfig(
        name=model_names(name)["network"],
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=PIXELS, data_type=mc.TYPE_UINT8, dims=list(shape.pixels_shape))],
        output=shape.task_of().network_outputs(shape.top_k),
        dynamic_batching=_dynamic_batching(),
        instance_group=_instances(plan.instance_kind),
        default_model_filename=plan.network_file,
    )
    cfg.backend, platform = TRITON_BACKENDS[plan.runtime]
    if platform:
        cfg.platform = platform
    if plan.runtime == "openvino":  # IR files
        params: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if shape.float_parts == "bf16":
            params[OPENVINO_BF16_PARAMETER] = "YES"
        _params(cfg, params)
    elif plan.accelerator == "tensorrt":  # ONNX Runtime's TensorRT accelerator; an engine runs on GPUs only
        add_tensorrt_accelerator(cfg, precision=shape.precision, shape=shape, profile=profile)
    return cfg


TRT_ACCELERATOR_CACHE = "/tmp/cvserve-trt-cache"  # an emptyDir in the Helm chart: engines are rebuilt per pod
TRT_PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


def add_tensorrt_accelerator(
    cfg: mc.ModelConfig,
    *,
    precision: str,
    shape: PipelineShape,
    profile: EngineProfile,
    cache_dir: str = TRT_ACCELERATOR_CACHE,
    workspace_bytes: int = 1 << 30,
) -> dict[str, str]:
    """Run an ``onnxruntime_onnx`` network on GPU instances through ONNX Runtime's TensorRT accelerator.

    The server builds the engine on first load and caches it. Its optimization profile is the build's
    :class:`~cvserve.builders.profile.EngineProfile`, so the dynamic batcher never forms a batch
    outside it. Returns the accelerator's parameters (for the build report).
    """
    if cfg.platform != "onnxruntime_onnx":
        raise UserInputError(
            "the TensorRT accelerator needs --runtime onnxruntime (Triton's onnxruntime backend)"
        )
    if precision not in TRT_PRECISION_MODES:
        raise UserInputError(f"precision must be one of {', '.join(TRT_PRECISION_MODES)}, not {precision!r}")
    shapes = profile.shapes(shape.pixels_shape)

    def dims(key: str) -> str:
        return f"{PIXELS}:" + "x".join(str(d) for d in shapes[key])

    params = {
        "precision_mode": TRT_PRECISION_MODES[precision],
        "max_workspace_size_bytes": str(workspace_bytes),
        "trt_profile_min_shapes": dims("min"),
        "trt_profile_opt_shapes": dims("opt"),
        "trt_profile_max_shapes": dims("max"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache_dir,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache_dir,
    }
    del cfg.optimization.execution_accelerators.gpu_execution_accelerator[:]
    accelerator = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters.update(params)
    for group in cfg.instance_group:
        group.kind = mc.ModelInstanceGroup.Kind.KIND_GPU
    return params


def ensemble_config(
    name: str, shape: PipelineShape, policy: VersionPolicy, steps: Sequence[mc.ModelConfig]
) -> mc.ModelConfig:
    """NAME as a Triton ensemble of ``steps`` in order (NAME_preprocess -> NAME_network [->
    NAME_postprocess]), routed by name: each step's input reads the tensor of that name (NAME's
    ``IMAGE``, or an earlier step's output), each output becomes the tensor of its name, and NAME
    answers the task's outputs (the last producer's). Intermediate tensors are lower case."""
    outputs = _outputs(shape)
    final = {o.name for o in outputs}

    def tensor(n: str) -> str:
        return n if n in final or n == IMAGE else n.lower()

    produced = {IMAGE}
    for cfg in steps:
        missing = [i.name for i in cfg.input if i.name not in produced]
        if missing:
            raise ValueError(f"{cfg.name} reads {', '.join(missing)}, which no earlier step answers")
        produced |= {o.name for o in cfg.output}
    if not final <= produced:
        raise ValueError(f"no step answers {', '.join(sorted(final - produced))}")
    step = mc.ModelEnsembling.Step
    cfg = mc.ModelConfig(
        name=name,
        platform="ensemble",
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])],
        output=outputs,
        ensemble_scheduling=mc.ModelEnsembling(
            step=[
                step(
                    model_name=s.name,
                    model_version=-1,
                    input_map={i.name: tensor(i.name) for i in s.input},
                    output_map={o.name: tensor(o.name) for o in s.output},
                )
                for s in steps
            ]
        ),
    )
    _params(
        cfg, {LABELS_PARAMETER: json.dumps(list(shape.labels), ensure_ascii=False), **_task_params(shape)}
    )
    return cfg


def pipeline_configs(
    name: str, plan: ServingPlan, shape: PipelineShape, scheduling: Scheduling, policy: VersionPolicy
) -> dict[str, mc.ModelConfig]:
    """Role -> config of every model of the plan's layout (its roles' order), ``scheduling`` written in."""
    check_name(name)
    if plan.layout == "single":
        configs = {ENTRY: single_config(name, plan, shape, policy)}
    else:
        profile = EngineProfile.for_batching(scheduling.max_batch_size, scheduling.preferred_batch_sizes)
        configs = {
            "preprocess": preprocess_config(name, plan, shape, policy),
            "network": network_config(name, plan, shape, policy, profile),
        }
        if plan.roles.postprocess:
            configs[plan.roles.postprocess] = postprocess_config(name, plan, shape, policy)
        configs[ENTRY] = ensemble_config(name, shape, policy, list(configs.values()))
    return scheduling.apply(plan.roles, configs)


def to_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
