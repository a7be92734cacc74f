"""The thread budget (and network precision) of each served model, as ``cvserve serve`` prints it at start.

A python-backend model built by cvserve reads its instance count and its ``intra_op_threads`` /
``decode_threads`` parameters from its config and splits the cores it may use between its instances
(:func:`cvserve.builders.runners.thread_budget`, the one place that decides it). This module reads the
same config files and calls the same function, with the cores the server will have (``--cpus``, or this
process's CPU affinity and cgroup quota), so the operator sees the split, and an oversubscription,
before any request arrives. The network's runtime and float precision (the ``runtime`` and
``inference_precision`` parameters the build wrote) are printed with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvserve.client import contract

THREAD_PARAMETERS = (contract.INTRA_OP_THREADS_PARAMETER, contract.DECODE_THREADS_PARAMETER)
NETWORK_PARAMETERS = ("runtime", contract.PRECISION_PARAMETER)


@dataclass(frozen=True)
class ModelThreads:
    model: str
    text: str  # ThreadBudget.describe(), or why there is none
    oversubscribed: bool = False


def _parameter(cfg, key: str) -> str:
    return cfg.parameters[key].string_value if key in cfg.parameters else ""


def _int_parameter(cfg, key: str) -> int:
    value = _parameter(cfg, key)
    return int(value) if value.strip().isdigit() else 0


def model_threads(
    repository: Path, *, cpus: int | None = None, names: list[str] | None = None
) -> list[ModelThreads]:
    """The budget of every model in ``repository`` (or just ``names``) that declares thread parameters.

    Models without them (ensembles, toy python models, native backends) are left out: their threads are
    not cvserve's to split.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from cvserve.builders.runners import available_cpus, thread_budget

    cores = cpus or available_cpus()
    found = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        if names is not None and config_path.parent.name not in names:
            continue
        try:
            cfg = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        except (OSError, text_format.ParseError):
            continue
        if not any(key in cfg.parameters for key in THREAD_PARAMETERS):
            continue
        instances = sum(g.count or 1 for g in cfg.instance_group) or 1
        budget = thread_budget(
            instances,
            cores=cores,
            intra_op=_int_parameter(cfg, contract.INTRA_OP_THREADS_PARAMETER),
            decode=_int_parameter(cfg, contract.DECODE_THREADS_PARAMETER),
        )
        runtime, precision = (_parameter(cfg, key) for key in NETWORK_PARAMETERS)
        network = f"{runtime} in {precision or 'f32'}; " if runtime else ""
        found.append(
            ModelThreads(
                cfg.name or config_path.parent.name, network + budget.describe(), budget.oversubscribed
            )
        )
    return found
