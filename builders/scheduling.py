"""The serving settings of a pipeline, one model of them: :class:`Scheduling`.

How Triton schedules a pipeline NAME (its max batch size, the network's preferred batch sizes and
queue delay, the instances and intra-op threads of the model that runs the network, the decode threads
of the python model that decodes, the ensemble's decoder instances, and admission control: the queue
bound and timeout of every model with a dynamic batcher) is one value with absolute numbers. The build
resolves its flags (:class:`cvserve.builders.triton_config.Batching`, where 0 and None have their flag
meanings) into one, writes it into the configs with :meth:`Scheduling.apply` and records it in the build
report; ``cvserve tune`` reads one back from the served configs (:meth:`Scheduling.read`), searches
around it and applies its candidates live with the same :meth:`Scheduling.apply`; its winner becomes
build flags (``Batching.of(...).flags()``, or ``cvserve build --from-tune``) and the Helm chart's
overrides, so a rebuild keeps what was tuned.

Meanings are Triton's everywhere in this value: ``max_queue_size`` 0 is unbounded, ``queue_timeout_us``
0 is no timeout, threads 0 are derived when served (cvserve's python model: the cores divided among
its instances; Triton's native CPU backends: their own default). ``None`` marks a knob the pipeline does
not have (``preprocess_instances`` in the single layout, ``decode_threads`` without a python decoder).
Which model carries which knob is the layout's answer (:class:`cvserve.builders.runtime.Layout`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.runtime import LAYOUT, TRITON_BACKENDS, Layout
from cvserve.client.contract import DECODE_THREADS_PARAMETER, INTRA_OP_THREADS_PARAMETER
from cvserve.errors import NotFoundError, UserInputError

# The config parameter that sets a network's intra-op threads, per backend: python is cvserve's own
# model (model_repository/classifier.py), the others Triton's backends (absent: every core per instance).
THREADS_PARAMETER = {
    "python": INTRA_OP_THREADS_PARAMETER,
    "openvino": "INFERENCE_NUM_THREADS",
    "onnxruntime": "intra_op_thread_count",
}


def backend(cfg: mc.ModelConfig) -> str:
    """The backend that runs ``cfg`` (a platform names its backend)."""
    if cfg.backend:
        return cfg.backend
    return {platform: name for name, platform in TRITON_BACKENDS.values() if platform}.get(
        cfg.platform, cfg.platform
    )


def threads_parameter(network: mc.ModelConfig) -> str | None:
    """The parameter that sets the network's intra-op threads; None where there is no CPU thread budget."""
    if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in network.instance_group):
        return None
    return THREADS_PARAMETER.get(backend(network))


def threads_share_cores(network: mc.ModelConfig) -> bool:
    """True if 0 threads means the cores divided among the instances (cvserve's python model); False if
    it means every core per instance (Triton's native backends)."""
    return backend(network) == "python"


@dataclass(frozen=True, kw_only=True)
class Scheduling:
    """The absolute serving settings of a pipeline (module docstring); hashable, so trials cache by it."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    network_instances: int = 1
    network_threads: int = 0
    decode_threads: int | None = None
    preprocess_instances: int | None = None
    max_queue_size: int = 0
    queue_timeout_us: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))

    # -- reading and writing ---------------------------------------------------------------------------
    def label(self) -> str:
        pref = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        text = (
            f"mbs={self.max_batch_size} pref={pref} delay={self.max_queue_delay_us}us "
            f"net={self.network_instances}x{self.network_threads or 'auto'}"
        )
        if self.decode_threads is not None:
            text += f" dec={self.decode_threads or 'auto'}"
        if self.preprocess_instances is not None:
            text += f" pre={self.preprocess_instances}"
        timeout = f"{self.queue_timeout_us / 1000:g}ms" if self.queue_timeout_us else "none"
        return text + f" queue={self.max_queue_size or 'inf'} timeout={timeout}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Scheduling:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or "max_batch_size" not in data:
            raise UserInputError(
                f"not a serving configuration: unknown keys {unknown}" if unknown else "no max_batch_size"
            )
        return cls(**data)

    def with_value(self, dimension: str, value) -> Scheduling:
        """A copy with one knob changed; preferred sizes above the max batch size are dropped."""
        c = replace(self, **{dimension: value})
        return replace(c, preferred_batch_sizes=_preferred(c.preferred_batch_sizes, c.max_batch_size))

    @classmethod
    def read(cls, layout: Layout, configs: dict[str, mc.ModelConfig]) -> Scheduling:
        """The settings as the pipeline's configs (role -> config) set them (instances summed over groups)."""
        net = configs[layout.network]
        db = net.dynamic_batching
        queues = [r for r in layout.queues if configs[r].HasField("dynamic_batching")]
        policy = configs[queues[0]].dynamic_batching.default_queue_policy if queues else None
        threads_key = threads_parameter(net)
        decoder = configs[layout.decode]
        return cls(
            max_batch_size=net.max_batch_size,
            preferred_batch_sizes=_preferred(db.preferred_batch_size, net.max_batch_size),
            max_queue_delay_us=db.max_queue_delay_microseconds,
            network_instances=_count(net),
            network_threads=_int_param(net, threads_key) if threads_key else 0,
            decode_threads=_int_param(decoder, DECODE_THREADS_PARAMETER)
            if backend(decoder) == "python"
            else None,
            preprocess_instances=None if layout.one_model else _count(decoder),
            max_queue_size=policy.max_queue_size if policy is not None else 0,
            queue_timeout_us=policy.default_timeout_microseconds if policy is not None else 0,
        )

    def apply(self, layout: Layout, configs: dict[str, mc.ModelConfig]) -> dict[str, mc.ModelConfig]:
        """Role -> a copy of each config with these settings written in; ``configs`` is not modified.

        The one code path that writes scheduling into a model config: the build's writer, the tuner's
        live candidates and the Helm overrides all go through it.
        """
        out = {}
        for role, cfg in configs.items():
            new = mc.ModelConfig()
            new.CopyFrom(cfg)
            new.max_batch_size = self.max_batch_size  # the pipeline's models share it (the ensemble too)
            if new.HasField("dynamic_batching"):  # a oneof: the ensemble has ensemble_scheduling instead
                # Triton fills an empty preferred list with max_batch_size: drop sizes the max cannot form.
                kept = [p for p in new.dynamic_batching.preferred_batch_size if p <= self.max_batch_size]
                del new.dynamic_batching.preferred_batch_size[:]
                new.dynamic_batching.preferred_batch_size.extend(kept)
            out[role] = new
        net = out[layout.network]
        del net.dynamic_batching.preferred_batch_size[:]
        net.dynamic_batching.preferred_batch_size.extend(self.preferred_batch_sizes)
        net.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        _set_count(net, self.network_instances)
        key = threads_parameter(net)
        if key:  # cvserve's python model reads 0 as "derived"; a native backend gets no parameter for it
            if self.network_threads or threads_share_cores(net):
                net.parameters[key].string_value = str(self.network_threads)
            elif key in net.parameters:
                del net.parameters[key]
        decoder = out[layout.decode]
        if self.decode_threads is not None and backend(decoder) == "python":
            decoder.parameters[DECODE_THREADS_PARAMETER].string_value = str(self.decode_threads)
        if self.preprocess_instances is not None and not layout.one_model:
            _set_count(out[layout.decode], self.preprocess_instances)
        for role in layout.queues:
            if out[role].HasField("dynamic_batching"):  # the ensemble's decoder has none
                db = out[role].dynamic_batching
                db.default_queue_policy.max_queue_size = self.max_queue_size
                db.default_queue_policy.default_timeout_microseconds = self.queue_timeout_us
                db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.TimeoutAction.REJECT
        return out


# A dynamic batcher whose only preferred batch size is 1, with no queue delay, gives every execution
# exactly one request: a batch grows past its largest preferred size only by its first request (core's
# dynamic_batch_scheduler.cc, 2.51 and main). Its queue policy still applies.
ONE_REQUEST_PER_EXECUTION = (1,)

TUNE_REPORT_KEY = "scheduling"  # where a tune report (tuning_report.json) keeps its winner


def from_tune_report(path: Path, layout: str) -> Scheduling:
    """The winner of a ``cvserve tune`` report (``tuning_report.json``) for a build of ``layout``.

    Raises:
        NotFoundError: no such file.
        UserInputError: not a tune report with a winner, or tuned on another layout.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tuning_report.json"
    if not path.is_file():
        raise NotFoundError(f"--from-tune {path}: no such file (cvserve tune writes tuning_report.json)")
    try:
        data = json.loads(path.read_text())
        chosen, tuned_layout = data[TUNE_REPORT_KEY], data["settings"]["layout"]
    except (ValueError, KeyError, TypeError):
        raise UserInputError(
            f"--from-tune {path}: not a cvserve tune report with a chosen configuration (rerun cvserve tune)"
        ) from None
    if tuned_layout != layout:
        raise UserInputError(
            f"--from-tune {path}: tuned on the {tuned_layout} layout, this build serves {layout}: "
            f"build with --layout {tuned_layout}, or tune a {layout} build"
        )
    return Scheduling.from_dict(chosen)


def _preferred(sizes, max_batch_size: int) -> tuple[int, ...]:
    """Preferred sizes the max batch can form; ``(max,)`` is ``()``: Triton fills an empty list with it."""
    kept = tuple(p for p in sizes if p <= max_batch_size)
    return () if kept == (max_batch_size,) else kept


def _count(cfg: mc.ModelConfig) -> int:
    return sum(g.count or 1 for g in cfg.instance_group) or 1


def _set_count(cfg: mc.ModelConfig, count: int) -> None:
    # Keep the first group's kind/devices/name; one group of `count` instances.
    group = mc.ModelInstanceGroup()
    if cfg.instance_group:
        group.CopyFrom(cfg.instance_group[0])
    else:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    group.count = count
    del cfg.instance_group[:]
    cfg.instance_group.append(group)


def _int_param(cfg: mc.ModelConfig, key: str) -> int:
    text = cfg.parameters[key].string_value if key in cfg.parameters else ""
    try:
        return int(text or 0)
    except ValueError:
        raise UserInputError(f"{cfg.name}: parameter {key} is {text!r}, not a whole number") from None


__all__ = ["LAYOUT", "ONE_REQUEST_PER_EXECUTION", "Scheduling", "from_tune_report"]
