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
while it loads: tune on a server that is not in service.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.runtime import ENTRY
from cvserve.errors import TritonError, UserInputError
from cvserve.tune.candidates import Candidate
from cvserve.tune.models import Pipeline, discover


def config_from_json(text: str | dict) -> mc.ModelConfig:
    """A ``ModelConfig`` from Triton's JSON (``get_model_config(as_json=True)``, with or without "config")."""
    data = json.loads(text) if isinstance(text, str) else text
    data = data.get("config", data)
    return json_format.ParseDict(data, mc.ModelConfig(), ignore_unknown_fields=True)


def config_to_json(cfg: mc.ModelConfig) -> str:
    """The override JSON ``load_model(config=...)`` takes."""
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


class LiveApplier:
    """Applies candidates to a running explicit-mode Triton; restores the starting configs afterwards."""

    def __init__(self, url: str, name: str, *, log: Callable[[str], None] = print) -> None:
        import tritonclient.grpc as grpcclient

        self.log = log
        self._client = grpcclient.InferenceServerClient(url)
        self.pipeline = self._snapshot(name)
        self.names = self.pipeline.models
        self.start_configs = self.pipeline.configs
        self._live = dict(self.start_configs)  # role -> config Triton runs now
        self.start = self.pipeline.scheduling()
        self.current: Candidate | None = self.start

    def _call(self, what: str, fn, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise TritonError(f"{what}: {exc.message()}") from None

    def _snapshot(self, name: str) -> Pipeline:
        if not self._call("server not reachable", self._client.is_server_live):
            raise TritonError("the Triton server is not live")

        def read(model: str) -> mc.ModelConfig:
            if not self._call(f"checking {model}", self._client.is_model_ready, model):
                raise UserInputError(
                    f"model {model} is not loaded on the server: build the pipeline with cvserve build and "
                    "load it (the server must run with --model-control-mode explicit)"
                )
            raw = self._call(f"reading {model}'s config", self._client.get_model_config, model, as_json=True)
            return config_from_json(raw)

        return discover(name, read)

    def _load(self, configs: dict[str, mc.ModelConfig]) -> None:
        order = self.pipeline.roles.roles  # the steps first, the model clients call last
        if len(order) > 1:  # an ensemble: unloaded first, loaded last (module docstring)
            ensemble = self.names[ENTRY]
            self._live.pop(ENTRY, None)
            self._call(f"unloading {ensemble}", self._client.unload_model, ensemble)
        for role in order:
            if self._live.get(role) == configs[role]:
                continue  # unchanged model: reloading a python model costs seconds
            self._live.pop(role, None)
            model = self.names[role]
            self._call(
                f"Triton refused the config for {model}",
                self._client.load_model,
                model,
                config=config_to_json(configs[role]),
            )
            self._live[role] = configs[role]

    def apply(self, candidate: Candidate) -> None:
        """Make ``candidate`` live; a no-op if it already is. Raises TritonError if Triton refuses it."""
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
        self._client.close()

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
