"""The tuning search space: candidate batching settings, the engine-profile bound, and config mapping.

A :class:`Candidate` is one setting of the knobs ``cvserve tune`` searches: the pipeline's max batch size,
the network's preferred batch sizes and max queue delay, and the instance counts of the network and of the
pre/post-processing models. :func:`apply_candidate` writes a candidate into the four Triton configs
(Triton's ``model_config`` protobuf); :func:`candidate_from_configs` reads one back.

The batch bound: a TensorRT engine runs only the batch sizes its optimisation profile covers, and a
network that is not ONNX Runtime with dynamic shapes may have been exported for a fixed batch range. The
tuner therefore never proposes a max batch size above the smaller of the starting ``max_batch_size`` and
the engine profile's max batch recorded in the build report (:func:`profile_batch_bound`), and no preferred batch
size above the candidate's max batch size, so no candidate can form a batch the engine cannot run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.profile import EngineProfile
from cvserve.errors import UserInputError

ROLES = ("preprocess", "network", "postprocess", "ensemble")
DIMENSIONS = (
    "network_instances",
    "max_queue_delay_us",
    "preferred_batch_sizes",
    "max_batch_size",
    "preprocess_instances",
    "postprocess_instances",
)
QUEUE_DELAYS_US = (0, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000)


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One setting of the searched knobs; hashable, so trials can be cached by candidate."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    network_instances: int = 1
    preprocess_instances: int = 1
    postprocess_instances: int = 1

    def label(self) -> str:
        pref = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        return (
            f"mbs={self.max_batch_size} pref={pref} delay={self.max_queue_delay_us}us "
            f"net={self.network_instances} pre={self.preprocess_instances} post={self.postprocess_instances}"
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return d

    def with_value(self, dimension: str, value) -> Candidate:
        """A copy with one knob changed; preferred sizes above the max batch size are dropped."""
        c = replace(self, **{dimension: value})
        return replace(c, preferred_batch_sizes=_preferred(c.preferred_batch_sizes, c.max_batch_size))


@dataclass(kw_only=True)
class SearchSpace:
    """Ordered values of every dimension (coordinate descent walks each list one step at a time)."""

    values: dict[str, list] = field(default_factory=dict)
    batch_bound: int = 1

    def valid(self, c: Candidate) -> bool:
        """True if ``c`` can only form batches the engine runs (and its knobs are in range)."""
        return (
            1 <= c.max_batch_size <= self.batch_bound
            and all(1 <= p <= c.max_batch_size for p in c.preferred_batch_sizes)
            and c.max_queue_delay_us >= 0
            and min(c.network_instances, c.preprocess_instances, c.postprocess_instances) >= 1
        )

    def neighbours(self, c: Candidate, dimension: str) -> tuple[Candidate | None, Candidate | None]:
        """The candidates one step down and one step up ``dimension`` from ``c`` (None at an end)."""
        values = self.values.get(dimension, [])
        current = getattr(c, dimension)
        if current not in values:
            values = sorted([*values, current], key=_order_key)
        i = values.index(current)
        down = c.with_value(dimension, values[i - 1]) if i > 0 else None
        up = c.with_value(dimension, values[i + 1]) if i + 1 < len(values) else None
        return (
            down if down is not None and self.valid(down) else None,
            up if up is not None and self.valid(up) else None,
        )


def _preferred(sizes, max_batch_size: int) -> tuple[int, ...]:
    """Preferred sizes the max batch can form; ``(max,)`` is ``()``: Triton fills an empty list with it."""
    kept = tuple(p for p in sizes if p <= max_batch_size)
    return () if kept == (max_batch_size,) else kept


def _order_key(v):
    return (len(v), v) if isinstance(v, tuple) else v


def _powers_of_two(lo: int, hi: int) -> list[int]:
    out, p = [], 1
    while p <= hi:
        if p >= lo:
            out.append(p)
        p *= 2
    return out


def build_space(
    start: Candidate, *, batch_bound: int, max_instances: int, slo_p95_ms: float, min_batch: int = 1
) -> SearchSpace:
    """The search space around ``start``.

    Args:
        start: the starting configuration (always a member of the space).
        batch_bound: largest max batch size allowed (engine profile / starting max batch size).
        max_instances: largest instance count of any model.
        slo_p95_ms: the p95 SLO; queue delays above a quarter of it are not tried.
        min_batch: smallest max batch size (the images per request clients send).
    """
    if batch_bound < min_batch:
        raise UserInputError(
            f"the engine allows batches of at most {batch_bound}, fewer than the {min_batch} images per request"
        )
    sizes = sorted(
        {*_powers_of_two(max(1, min_batch), batch_bound), batch_bound, min(start.max_batch_size, batch_bound)}
    )
    preferred = [(), *[(p,) for p in _powers_of_two(2, batch_bound)]]
    delays = sorted({d for d in QUEUE_DELAYS_US if d / 1000 <= slo_p95_ms / 4} | {start.max_queue_delay_us})
    counts = list(range(1, max(1, max_instances) + 1))
    return SearchSpace(
        values={
            "max_batch_size": sizes,
            "preferred_batch_sizes": preferred,
            "max_queue_delay_us": delays,
            "network_instances": counts,
            "preprocess_instances": counts,
            "postprocess_instances": counts,
        },
        batch_bound=batch_bound,
    )


def candidate_from_configs(configs: dict[str, mc.ModelConfig]) -> Candidate:
    """The knobs as set in the four configs (instance counts are summed over instance groups)."""
    net = configs["network"]
    db = net.dynamic_batching
    return Candidate(
        max_batch_size=net.max_batch_size,
        preferred_batch_sizes=_preferred(db.preferred_batch_size, net.max_batch_size),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        network_instances=_count(net),
        preprocess_instances=_count(configs["preprocess"]),
        postprocess_instances=_count(configs["postprocess"]),
    )


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


def apply_candidate(configs: dict[str, mc.ModelConfig], c: Candidate) -> dict[str, mc.ModelConfig]:
    """New configs for the four roles with ``c`` applied; ``configs`` is not modified."""
    out = {}
    for role, cfg in configs.items():
        new = mc.ModelConfig()
        new.CopyFrom(cfg)
        new.max_batch_size = c.max_batch_size  # the pipeline's models share it (the ensemble too)
        if new.HasField("dynamic_batching"):  # one of a oneof: the ensemble has ensemble_scheduling instead
            # Triton fills an empty preferred list with max_batch_size: drop sizes the new max cannot form.
            kept = [p for p in new.dynamic_batching.preferred_batch_size if p <= c.max_batch_size]
            del new.dynamic_batching.preferred_batch_size[:]
            new.dynamic_batching.preferred_batch_size.extend(kept)
        out[role] = new
    net = out["network"]
    del net.dynamic_batching.preferred_batch_size[:]
    net.dynamic_batching.preferred_batch_size.extend(c.preferred_batch_sizes)
    net.dynamic_batching.max_queue_delay_microseconds = c.max_queue_delay_us
    _set_count(net, c.network_instances)
    _set_count(out["preprocess"], c.preprocess_instances)
    _set_count(out["postprocess"], c.postprocess_instances)
    return out


def profile_batch_bound(network: mc.ModelConfig, build_report: dict | None) -> tuple[int, str]:
    """The largest max batch size the network can run, and where that bound comes from.

    Never above the starting ``max_batch_size``, nor above the max batch of the engine profile the
    build report records (:class:`~cvserve.builders.profile.EngineProfile`, read back by its name).
    """
    bound, source = network.max_batch_size, "starting max_batch_size"
    profile = EngineProfile.from_report(build_report or {})
    if profile is not None and profile.max_batch < bound:
        bound, source = profile.max_batch, "engine profile (build_report.json)"
    elif network.platform == "tensorrt_plan" and profile is None:
        source = "starting max_batch_size (TensorRT engine; no engine profile in a build report)"
    return bound, source


def read_build_report(repository: Path | None, ensemble: str) -> dict | None:
    """The newest version's build_report.json of ``ensemble`` in ``repository``, if there is one."""
    if repository is None:
        return None
    model_dir = Path(repository) / ensemble
    versions = sorted(
        (int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()), reverse=True
    )
    for v in versions:
        path = model_dir / str(v) / "build_report.json"
        if path.exists():
            return json.loads(path.read_text())
    return None
