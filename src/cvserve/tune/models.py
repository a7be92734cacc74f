"""Which models serve a pipeline NAME, and which knobs each has: read from their configs, never guessed.

NAME is the model clients call. Its config tells the layout (:mod:`cvserve.builders.runtime`):

* ``single``: NAME is not an ensemble. It is the only model: it queues and batches the requests and
  runs the network (cvserve's python model also decodes the images, on ``decode_threads`` threads).
* ``ensemble``: NAME has ``ensemble_scheduling``; its steps are the models it names. The step that
  takes the encoded ``IMAGE`` is the preprocess model, the step that takes its ``PIXELS`` the network
  (whatever the task: a classifier's network emits ``CLASS_INDEX``, a detector's its boxes).

The thread budget (:func:`cvserve.builders.runners.thread_budget`): instances x intra-op threads of the
model that runs the network must not exceed the cores. Where its threads are set depends on the model
(:mod:`cvserve.builders.scheduling`); GPU instances have no CPU thread budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import scheduling as sch
from cvserve.builders import triton_config as tc
from cvserve.builders.runtime import ENTRY, LAYOUT, Layout
from cvserve.errors import UserInputError


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """The models of NAME by role (:data:`~cvserve.builders.runtime.ENTRY` is NAME itself), with their
    configs; which role does what is the layout's answer (:class:`cvserve.builders.runtime.Layout`)."""

    name: str
    layout: str  # single | ensemble
    models: dict[str, str]  # role -> model name
    configs: dict[str, mc.ModelConfig]  # role -> config

    @property
    def roles(self) -> Layout:
        return LAYOUT[self.layout]

    @property
    def network_role(self) -> str:
        """The role of the model that runs the network (and forms its batches)."""
        return self.roles.network

    @property
    def queue_roles(self) -> tuple[str, ...]:
        """Roles of the models with a dynamic batcher, the one that first queues a request first."""
        return tuple(r for r in self.roles.queues if self.configs[r].HasField("dynamic_batching"))

    @property
    def threads_parameter(self) -> str | None:
        """The parameter that sets the network's intra-op threads; None where there is no CPU budget."""
        return sch.threads_parameter(self.configs[self.network_role])

    @property
    def threads_share_cores(self) -> bool:
        return sch.threads_share_cores(self.configs[self.network_role])

    def scheduling(self) -> sch.Scheduling:
        """The serving settings as the configs set them."""
        return sch.Scheduling.read(self.roles, self.configs)

    def apply(self, settings: sch.Scheduling) -> dict[str, mc.ModelConfig]:
        """Role -> new config with ``settings`` written in; the pipeline is not modified."""
        return settings.apply(self.roles, self.configs)


def _role_of_step(cfg: mc.ModelConfig) -> str | None:
    if any(i.name == tc.IMAGE for i in cfg.input) and sch.backend(cfg) == "python":
        return "preprocess"
    if any(i.name == tc.PIXELS for i in cfg.input):
        return "network"
    return None


def discover(name: str, read_config: Callable[[str], mc.ModelConfig]) -> Pipeline:
    """The pipeline NAME as its configs describe it; ``read_config(model)`` returns a model's config.

    Raises:
        UserInputError: NAME is an ensemble of other steps than one preprocess and one network model.
    """
    top = read_config(name)
    if not top.HasField("ensemble_scheduling"):
        return Pipeline(name=name, layout="single", models={ENTRY: name}, configs={ENTRY: top})
    models, configs = {ENTRY: name}, {ENTRY: top}
    for step in top.ensemble_scheduling.step:
        cfg = read_config(step.model_name)
        role = _role_of_step(cfg)
        if role is None or role in models:
            break
        models[role], configs[role] = step.model_name, cfg
    else:
        if set(models) == set(LAYOUT["ensemble"].roles):
            return Pipeline(name=name, layout="ensemble", models=models, configs=configs)
    steps = ", ".join(s.model_name for s in top.ensemble_scheduling.step)
    raise UserInputError(
        f"{name} is an ensemble of {steps}: cvserve tune knows ensembles of one python preprocess step "
        "(IMAGE in) and one network step (PIXELS in), as cvserve build --layout ensemble writes "
        "them; rebuild the pipeline with cvserve build"
    )
