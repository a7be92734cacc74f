"""Triton's model-control API (health, repository index, configs, load, unload), errors mapped to cvserve's.

The classification calls go through :mod:`cvserve.client`; reading configs, loading and unloading models
is an operator's job that the thin client does not offer, so the tools that do it (``cvserve release``,
``cvserve tune``) talk to ``tritonclient`` here, in one place: one client, one error mapping.
"""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.errors import TimeLimitError, TritonError, UserInputError

# Seconds a model may take to load (an OpenVINO or TensorRT network compiles at load time).
DEFAULT_LOAD_TIMEOUT_S = 300.0


def config_from_json(text: str | dict) -> mc.ModelConfig:
    """A ``ModelConfig`` from Triton's JSON (``get_model_config(as_json=True)``, with or without "config")."""
    data = json.loads(text) if isinstance(text, str) else text
    data = data.get("config", data)
    return json_format.ParseDict(data, mc.ModelConfig(), ignore_unknown_fields=True)


def config_to_json(cfg: mc.ModelConfig) -> str:
    """The override JSON ``load_model(config=...)`` takes."""
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


class ModelControlDisabled(UserInputError):
    """The server does not take load/unload requests (model-control mode ``none`` or ``poll``: Triton 2.51
    gives the same answer in both)."""


class ModelControl:
    """Model control on the Triton server at ``url`` (gRPC ``host:port``).

    Args:
        load_timeout_s: how long one load may take.
        headers: sent with the model-control calls, e.g. the key of a restricted API.
        disabled_hint: what the caller's user can do when the server takes no loads (appended to the
            :class:`ModelControlDisabled` message).
    """

    def __init__(
        self,
        url: str,
        *,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        headers: dict[str, str] | None = None,
        disabled_hint: str = "",
    ) -> None:
        import tritonclient.grpc as grpcclient

        self.url = url
        self.load_timeout_s = load_timeout_s
        self.disabled_hint = disabled_hint
        # e.g. the key of a server whose model-control API is restricted (--grpc-restricted-api)
        self.headers = dict(headers or {}) or None
        self._triton = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._triton.close()

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            if "not allowed" in message:
                raise ModelControlDisabled(
                    f"the server at {self.url} does not take model loads ({message}): run it with "
                    f"--model-control-mode explicit{self.disabled_hint}"
                ) from None
            if "StatusCode.UNAVAILABLE" in str(exc.status()) or "failed to connect" in message.lower():
                raise TritonError(f"the Triton server at {self.url} is not reachable: {message}") from None
            raise TritonError(f"{what} on {self.url} failed: {message}") from None

    def check_live(self) -> None:
        """Fail with a clear message when the server is not up."""
        if not self._call("the liveness check", self._triton.is_server_live, client_timeout=10.0):
            raise TritonError(f"the Triton server at {self.url} is not live")

    def config(self, name: str) -> mc.ModelConfig:
        """The configuration the server runs ``name`` with (``get_model_config``)."""
        raw = self._call(
            f"reading the config of model '{name}'", self._triton.get_model_config, name, as_json=True
        )
        return config_from_json(raw)

    def server_ready(self) -> bool:
        """Triton's readiness: with --strict-readiness (the default) false while any model loads or unloads."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._triton.is_server_ready(client_timeout=10.0))
        except InferenceServerException:
            return False

    def wait_server_ready(self, timeout_s: float = 60.0) -> bool:
        """Wait until the server is ready again (after loads or unloads); whether it became ready."""
        deadline = time.monotonic() + timeout_s
        while not self.server_ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def index(self) -> list[tuple[str, str, str]]:
        """``(name, version, state)`` of every model in the server's repository index."""
        response = self._call(
            "reading the repository index", self._triton.get_model_repository_index, headers=self.headers
        )
        return [(m.name, m.version, m.state) for m in response.models]

    def ready_versions(self, name: str) -> list[int]:
        """The versions of ``name`` the server serves right now (state READY), ascending."""
        return sorted(
            int(v) for n, v, state in self.index() if n == name and state == "READY" and v.isdigit()
        )

    def is_ready(self, name: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._triton.is_model_ready(name, client_timeout=10.0))
        except InferenceServerException:
            return False

    def load(
        self,
        name: str,
        *,
        config: str | mc.ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        """Load (or reload) ``name``; with ``config`` (a ``ModelConfig`` or its JSON) and ``files``, from
        those instead of the repository."""
        if isinstance(config, mc.ModelConfig):
            config = config_to_json(config)
        self._call(
            f"loading model '{name}'",
            self._triton.load_model,
            name,
            headers=self.headers,
            config=config,
            files=files,
            client_timeout=self.load_timeout_s,
        )

    def unload(self, name: str) -> None:
        self._call(f"unloading model '{name}'", self._triton.unload_model, name, headers=self.headers)

    def wait_serving(self, name: str, version: int, *, timeout_s: float = 60.0) -> None:
        """Wait until ``version`` is the only READY version of ``name`` (older ones finish unloading).

        Raises:
            TimeLimitError: the server still serves other versions (or not ``version``) after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            ready = self.ready_versions(name)
            if ready == [version]:
                return
            if time.monotonic() > deadline:
                raise TimeLimitError(
                    f"{name} on {self.url} serves version(s) {ready or 'none'}, not only {version}, "
                    f"after {timeout_s:g} s: is --repository the folder this server serves?"
                )
            time.sleep(0.1)
