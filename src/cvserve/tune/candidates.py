"""The tuning search space: candidate settings, the bounds they keep, and their mapping onto the configs.

A candidate is one setting of the knobs ``cvserve tune`` searches, for either layout
(:mod:`cvserve.tune.models`): a :class:`~cvserve.builders.scheduling.Scheduling`, the same value the
build writes its configs from. The knobs: the max batch size (every model of the pipeline shares it), the network's
preferred batch sizes and max queue delay, the instances and intra-op threads of the model that runs
the network, the decode threads of the python model that decodes, the instances of the preprocess
model (ensemble layout), and admission control: ``max_queue_size`` and the queue timeout of every
model with a dynamic batcher (REJECT). ``Scheduling.apply`` writes a candidate into the pipeline's
configs (Triton's ``model_config`` protobuf); ``Scheduling.read`` reads one back.

The bounds every candidate keeps (:meth:`SearchSpace.valid`):

* the batch bound: a TensorRT engine runs only the batch sizes its optimisation profile covers, and a
  network may have been exported for a fixed batch range. No max batch size goes above the smaller of
  the starting ``max_batch_size`` and the engine profile's max batch in the build report
  (:func:`profile_batch_bound`), and no preferred size above the candidate's max batch size;
* one request per execution: a single-layout model that executes one request at a time
  (:data:`cvserve.builders.triton_config.ONE_REQUEST_PER_EXECUTION`, so that malformed framing fails
  alone) keeps doing so: its preferred batch sizes and queue delay are not searched;
* the thread budget: instances x intra-op threads of the network never exceed the cores, unless each
  instance runs on one thread (:func:`cvserve.builders.runners.fits`). A step in the instance count
  that would break it lowers the threads per instance to fit (:meth:`SearchSpace.fit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.profile import EngineProfile
from cvserve.builders.runners import fits
from cvserve.builders.scheduling import ONE_REQUEST_PER_EXECUTION, Scheduling
from cvserve.errors import UserInputError

Candidate = Scheduling  # what the search calls a setting it tries

DIMENSIONS = (
    "network_instances",
    "network_threads",
    "max_queue_delay_us",
    "preferred_batch_sizes",
    "max_batch_size",
    "decode_threads",
    "preprocess_instances",
    "max_queue_size",
    "queue_timeout_us",
)
QUEUE_DELAYS_US = (0, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000)
QUEUE_TIMEOUT_SLO_FRACTIONS = (0.25, 0.5, 1.0, 2.0)


@dataclass(kw_only=True)
class SearchSpace:
    """Ordered values of every dimension (coordinate descent walks each list one step at a time).

    Args:
        values: dimension -> its values; a pipeline's missing knobs have no entry.
        batch_bound: the largest max batch size allowed.
        cores: the cores the server may use; None: no CPU thread budget (GPU instances).
        threads_share_cores: 0 threads means the cores divided among the instances (cvserve's python
            model) rather than every core per instance (Triton's native CPU backends).
    """

    values: dict[str, list] = field(default_factory=dict)
    batch_bound: int = 1
    cores: int | None = None
    threads_share_cores: bool = True

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(d for d in DIMENSIONS if d in self.values)

    def threads(self, c: Candidate) -> int:
        """The intra-op threads each network instance runs with."""
        if c.network_threads or self.cores is None:
            return c.network_threads
        return max(1, self.cores // c.network_instances) if self.threads_share_cores else self.cores

    def within_budget(self, c: Candidate) -> bool:
        return self.cores is None or fits(c.network_instances, self.threads(c), self.cores)

    def fit(self, c: Candidate) -> Candidate:
        """``c`` with its threads per instance lowered to fit the budget, if that is what breaks it."""
        if self.within_budget(c):
            return c
        return replace(c, network_threads=max(1, (self.cores or 1) // c.network_instances))

    def valid(self, c: Candidate) -> bool:
        """True if ``c`` can only form batches the engine runs, keeps the thread budget, knobs in range."""
        return (
            1 <= c.max_batch_size <= self.batch_bound
            and all(1 <= p <= c.max_batch_size for p in c.preferred_batch_sizes)
            and c.max_queue_delay_us >= 0
            and c.network_instances >= 1
            and (c.preprocess_instances is None or c.preprocess_instances >= 1)
            and min(c.network_threads, c.decode_threads or 0, c.max_queue_size, c.queue_timeout_us) >= 0
            and self.within_budget(c)
        )

    def neighbours(self, c: Candidate, dimension: str) -> tuple[Candidate | None, Candidate | None]:
        """The candidates one step down and one step up ``dimension`` from ``c`` (None at an end)."""
        values = self.values.get(dimension, [])
        current = getattr(c, dimension)
        if current not in values:
            values = sorted([*values, current], key=_order_key)
        i = values.index(current)
        down = self.fit(c.with_value(dimension, values[i - 1])) if i > 0 else None
        up = self.fit(c.with_value(dimension, values[i + 1])) if i + 1 < len(values) else None
        return (
            down if down is not None and down != c and self.valid(down) else None,
            up if up is not None and up != c and self.valid(up) else None,
        )


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
    start: Candidate,
    *,
    batch_bound: int,
    max_instances: int,
    slo_p95_ms: float,
    cores: int | None,
    threads_share_cores: bool = True,
    min_batch: int = 1,
    max_users: int = 64,
) -> SearchSpace:
    """The search space around ``start``.

    Args:
        start: the starting configuration (always a member of the space). Its ``None`` knobs are not
            searched.
        batch_bound: largest max batch size allowed (engine profile / starting max batch size).
        max_instances: largest instance count of any model.
        slo_p95_ms: the p95 SLO; queue delays above a quarter of it are not tried, queue timeouts
            are fractions of it.
        cores: the cores the server may use (the thread budget); None: no CPU thread budget, and the
            network threads are not searched.
        threads_share_cores: see :class:`SearchSpace`.
        min_batch: smallest max batch size (the images per request clients send).
        max_users: the most concurrent users the search tries (the largest queue worth holding).
    """
    if batch_bound < min_batch:
        raise UserInputError(
            f"the engine allows batches of at most {batch_bound}, fewer than the {min_batch} images per request"
        )
    sizes = sorted(
        {*_powers_of_two(max(1, min_batch), batch_bound), batch_bound, min(start.max_batch_size, batch_bound)}
    )
    delays = sorted({d for d in QUEUE_DELAYS_US if d / 1000 <= slo_p95_ms / 4} | {start.max_queue_delay_us})
    counts = list(range(1, max(1, max_instances) + 1))
    values: dict[str, list] = {
        "max_batch_size": sizes,
        "preferred_batch_sizes": [(), *[(p,) for p in _powers_of_two(2, batch_bound)]],
        "max_queue_delay_us": delays,
        "network_instances": counts,
        "max_queue_size": sorted({*_powers_of_two(4, max(4, 4 * max_users)), start.max_queue_size}),
        "queue_timeout_us": sorted(
            {round(f * slo_p95_ms * 1000) for f in QUEUE_TIMEOUT_SLO_FRACTIONS} | {start.queue_timeout_us}
        ),
    }
    if start.preferred_batch_sizes == ONE_REQUEST_PER_EXECUTION:  # the batcher never joins requests
        values["preferred_batch_sizes"] = [start.preferred_batch_sizes]
        values["max_queue_delay_us"] = [start.max_queue_delay_us]
    threads = [0, *range(1, (cores or 1) + 1)]
    if cores is not None:
        values["network_threads"] = sorted({*threads, start.network_threads})
    if start.decode_threads is not None:
        values["decode_threads"] = sorted({*threads, start.decode_threads})
    if start.preprocess_instances is not None:
        values["preprocess_instances"] = counts
    return SearchSpace(
        values=values, batch_bound=batch_bound, cores=cores, threads_share_cores=threads_share_cores
    )


# -- the batch bound -----------------------------------------------------------------------------------
def profile_batch_bound(network: mc.ModelConfig, build_report: dict | None) -> tuple[int, str]:
    """The largest max batch size the network can run, and where that bound comes from.

    Never above the starting ``max_batch_size``, nor above the max batch of the engine profile the
    build report records (:class:`~cvserve.builders.profile.EngineProfile`, read back by its name).
    """
    bound, source = network.max_batch_size, "starting max_batch_size"
    profile = EngineProfile.from_report(build_report or {})
    if profile is not None and profile.max_batch < bound:
        bound, source = profile.max_batch, "engine profile (the served version's build report)"
    elif network.platform == "tensorrt_plan" and profile is None:
        source = "starting max_batch_size (TensorRT engine; no engine profile in a build report)"
    return bound, source
