"""Live apply and restore through Triton's explicit model-control API: no server restart.

A candidate is applied by loading each changed model with a config override (``load_model(name,
config=JSON)``, the JSON of Triton's ``ModelConfig``). The starting configs are read from the server
first (``get_model_config``; which models, from NAME's config: :func:`cvserve.tune.models.discover`),
and :meth:`LiveApplier.restoring` loads them back when the block ends: normally, on an error, on Ctrl-C
or on SIGTERM.

Single layout: NAME is the only model; it is reloaded with its override (a python model takes a few
seconds: its stub starts and the network compiles). Ensemble layout: ordering matters. Loading a step
makes Triton reload the ensemble that uses it from the repository, which fails when the max batch size
changes (an ensemble may not allow larger batches than its steps) or when the ensemble itself was loaded
with an override. So the ensemble is unloaded first (its steps stay loaded), the steps are loaded with
their overrides, and the ensemble is loaded last with its own. Either way clients see NAME unavailable
while it loads: tune on a server that is not in service. The calls go through
:class:`cvserve.server.control.ModelControl`, the release's model-control client.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.runtime import ENTRY
from cvserve.errors import UserInputError
from cvserve.server.control import ModelControl
from cvserve.tune.candidates import Candidate
from cvserve.tune.models import Pipeline, discover


class LiveApplier:
    """Applies candidates to a running explicit-mode Triton; restores the starting configs afterwards."""

    def __init__(self, url: str, name: str, *, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.control = ModelControl(url)
        self.pipeline = self._snapshot(name)
        self.names = self.pipeline.models
        self.start_configs = self.pipeline.configs
        self._live = dict(self.start_configs)  # role -> config Triton runs now
        self.start = self.pipeline.scheduling()
        self.current: Candidate | None = self.start

    def _snapshot(self, name: str) -> Pipeline:
        self.control.check_live()

        def read(model: str) -> mc.ModelConfig:
            if not self.control.is_ready(model):
                raise UserInputError(
                    f"model {model} is not loaded on the server: build the pipeline with cvserve build and "
                    "load it (the server must run with --model-control-mode explicit)"
                )
            return self.control.config(model)

        return discover(name, read)

    def ready_versions(self) -> list[int]:
        """The versions of NAME the server serves (state READY), ascending."""
        return self.control.ready_versions(self.names[ENTRY])

    def _load(self, configs: dict[str, mc.ModelConfig]) -> None:
        order = self.pipeline.roles.roles  # the steps first, the model clients call last
        if len(order) > 1:  # an ensemble: unloaded first, loaded last (module docstring)
            ensemble = self.names[ENTRY]
            self._live.pop(ENTRY, None)
            self.control.unload(ensemble)
        for role in order:
            if self._live.get(role) == configs[role]:
                continue  # unchanged model: reloading a python model costs seconds
            self._live.pop(role, None)
            model = self.names[role]
            self.control.load(model, config=configs[role])
            self._live[role] = configs[role]

    def apply(self, candidate: Candidate) -> None:
        """Make ``candidate`` live; a no-op if it already is. Raises TritonError if Triton refuses it
        (:class:`~cvserve.server.control.ModelControl` maps the error)."""
        if candidate == self.current:
            return
        self.current = None  # unknown until every model has loaded
        self._load(self.pipeline.apply(candidate))
        self.current = candidate

    def restore(self) -> None:
        """Load the starting configs back exactly as they were read."""
        self.current = None
        self._load(self.start_configs)
        self.current = self.start

    def close(self) -> None:
        self.control.close()

    @contextmanager
    def restoring(self, keep: Callable[[], Candidate | None] = lambda: None) -> Iterator[LiveApplier]:
        """Restore the starting configs when the block ends, however it ends (SIGTERM included).

        Args:
            keep: called at a normal exit; a candidate it returns is left live instead of restoring.
        """

        def on_term(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
        ok = False
        try:
            yield self
            ok = True
        finally:
            # Ignore Ctrl-C/SIGTERM while restoring: a half-restored pipeline is the worst outcome.
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                kept = keep() if ok else None
                if kept is not None:
                    self.apply(kept)
                    self.log(f"left live: {kept.label()}")
                elif self.current != self.start or not ok:
                    self.log("restoring the starting configuration ...")
                    self.restore()
                    self.log("starting configuration restored")
            finally:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, previous)
