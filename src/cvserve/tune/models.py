"""Which models serve a pipeline NAME, and which knobs each has: read from their configs, never guessed.

NAME is the model clients call. Its config tells the layout (:mod:`cvserve.builders.runtime`):

* ``single``: NAME is not an ensemble. It is the only model: it queues and batches the requests and
  runs the network (cvserve's python model also decodes the images, on ``decode_threads`` threads).
* ``ensemble``: NAME has ``ensemble_scheduling``; its steps are the models it names. The step that
  takes the encoded ``IMAGE`` is the preprocess model, the step that emits ``CLASS_INDEX`` the network.

The thread budget (:func:`cvserve.builders.runners.thread_budget`): instances x intra-op threads of the
model that runs the network must not exceed the cores. Where its threads are set depends on the model:
cvserve's python model reads ``intra_op_threads`` (0: the cores divided among its instances), Triton's
openvino and onnxruntime backends read their own parameter (absent: the backend uses every core, per
instance). GPU instances have no CPU thread budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import triton_config as tc
from cvserve.errors import UserInputError

THREADS_PARAMETER = tc.THREADS_PARAMETER  # the builder's names (cvserve.builders.triton_config)
DECODE_THREADS_PARAMETER = tc.DECODE_THREADS_PARAMETER


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """The models of NAME by role (``classifier`` is NAME itself), with their configs."""

    name: str
    layout: str  # single | ensemble
    models: dict[str, str]  # role -> model name
    configs: dict[str, mc.ModelConfig]  # role -> config

    @property
    def network_role(self) -> str:
        """The role of the model that runs the network (and forms its batches)."""
        return "classifier" if self.layout == "single" else "network"

    @property
    def queue_roles(self) -> tuple[str, ...]:
        """Roles of the models with a dynamic batcher, the one that first queues a request first."""
        roles = ("classifier",) if self.layout == "single" else ("preprocess", "network")
        return tuple(r for r in roles if self.configs[r].HasField("dynamic_batching"))

    @property
    def decode_role(self) -> str | None:
        """The python model that decodes images (its ``decode_threads``), if there is one."""
        role = "classifier" if self.layout == "single" else "preprocess"
        return role if _backend(self.configs[role]) == "python" else None

    @property
    def threads_parameter(self) -> str | None:
        """The parameter that sets the network's intra-op threads; None where there is no CPU budget."""
        cfg = self.configs[self.network_role]
        if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group):
            return None
        return THREADS_PARAMETER.get(_backend(cfg))

    @property
    def threads_share_cores(self) -> bool:
        """True if 0 threads means the cores divided among the instances (cvserve's python model);
        False if it means every core per instance (Triton's native backends)."""
        return _backend(self.configs[self.network_role]) == "python"


def _backend(cfg: mc.ModelConfig) -> str:
    if cfg.backend:
        return cfg.backend
    return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "ensemble": "ensemble"}.get(
        cfg.platform, cfg.platform
    )


def _role_of_step(cfg: mc.ModelConfig) -> str | None:
    if any(i.name == tc.IMAGE for i in cfg.input) and _backend(cfg) == "python":
        return "preprocess"
    if any(o.name == tc.CLASS_INDEX for o in cfg.output):
        return "network"
    return None


def discover(name: str, read_config: Callable[[str], mc.ModelConfig]) -> Pipeline:
    """The pipeline NAME as its configs describe it; ``read_config(model)`` returns a model's config.

    Raises:
        UserInputError: NAME is an ensemble of other steps than one preprocess and one network model.
    """
    top = read_config(name)
    if not top.HasField("ensemble_scheduling"):
        return Pipeline(name=name, layout="single", models={"classifier": name}, configs={"classifier": top})
    models, configs = {"classifier": name}, {"classifier": top}
    for step in top.ensemble_scheduling.step:
        cfg = read_config(step.model_name)
        role = _role_of_step(cfg)
        if role is None or role in models:
            break
        models[role], configs[role] = step.model_name, cfg
    else:
        if set(models) == set(tc.ROLES):
            return Pipeline(name=name, layout="ensemble", models=models, configs=configs)
    steps = ", ".join(s.model_name for s in top.ensemble_scheduling.step)
    raise UserInputError(
        f"{name} is an ensemble of {steps}: cvserve tune knows ensembles of one python preprocess step "
        "(IMAGE in) and one network step (CLASS_INDEX out), as cvserve build --layout ensemble writes "
        "them; rebuild the pipeline with cvserve build"
    )
