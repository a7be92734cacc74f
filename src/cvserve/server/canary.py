"""A canary inference: one tiny PNG through a served classifier, the check that tells a live server from a
server whose python stub died.

Triton 2.51 neither restarts a python-backend stub that died nor fails ``/v2/health/live`` or
``/v2/health/ready`` for it: the model stays "ready" and fails every request. So ``cvserve serve``
(:mod:`cvserve.server.supervisor`) sends each classifier a canary, as the Helm chart's liveness probe
does (:mod:`cvserve.server.triton_probe`, the file the chart ships: both send the same request). The
request is the cvserve contract: input ``IMAGE`` (BYTES, shape [1, 1]) over HTTP with the binary-data
extension; the answer must carry probabilities in ``SCORE``.

A check sends :data:`SHOTS` canaries one after another and stops at the first failure: a model runs in
several instances (two by default), each its own stub process, and a request goes to whichever instance
is free, so one canary can miss the instance whose stub died; the next ones reach it (the instances
take turns when idle). Without this, a dead stub among two instances failed every other canary and
the "failures in a row" count never grew.

Verdicts: ``ok``; ``shed`` (HTTP 503: the queue policy turned it away, so the server is alive and busy:
restarting it would only move the load); ``fail`` (an error, a wrong answer, or no answer in time).
Standard library only, and the wire contract (:mod:`cvserve.client.contract`).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cvserve.client import contract

# The canary request and the check of its answer are the Helm chart's probe's own code (the chart ships
# this very file: helm/cvserve/files/triton_probe.py links to it), so both send the same request.
from cvserve.server.triton_probe import SHOTS, canary_png, check_outputs, error_text, infer_request

INPUT = contract.IMAGE
OUTPUT = contract.SCORE


@dataclass(frozen=True)
class Verdict:
    model: str
    outcome: str  # ok | shed | fail
    detail: str

    @property
    def alive(self) -> bool:
        return self.outcome != "fail"

    def __str__(self) -> str:
        return f"canary {self.model}: {self.detail}"


def check(
    http_url: str, model: str, *, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> Verdict:
    """Send up to :data:`SHOTS` canaries to ``model`` at ``http_url`` (``http://host:port``), one after
    another; the first one that fails is the verdict, else the last one's."""
    for _ in range(SHOTS):
        verdict = _one(http_url, model, timeout=timeout, headers=headers)
        if not verdict.alive:
            break
    return verdict


def _one(http_url: str, model: str, *, timeout: float, headers: dict[str, str] | None) -> Verdict:
    body, header_len = infer_request(canary_png())
    request = urllib.request.Request(
        f"{http_url}/v2/models/{urllib.parse.quote(model, safe='')}/infer",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_len),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            json_len = resp.headers.get("Inference-Header-Content-Length")
            response = json.loads(raw[: int(json_len)] if json_len else raw)
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return Verdict(model, "shed", f"shed by admission control (HTTP 503: {error_text(exc)})")
        return Verdict(model, "fail", f"HTTP {exc.code}: {error_text(exc)}")
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
        return Verdict(model, "fail", f"no answer within {timeout:g} s ({exc})")
    except ValueError as exc:
        return Verdict(model, "fail", f"unreadable answer ({exc})")
    problem = check_outputs(response)
    return Verdict(model, "fail", problem) if problem else Verdict(model, "ok", "ok")


def classifier_models(repository: Path, names: list[str] | None = None) -> list[str]:
    """Models of ``repository`` (or just ``names``) that follow the classifier contract: an ``IMAGE``
    BYTES input and a ``SCORE`` output. Ensembles qualify, so their steps are checked through them."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    found = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        name = config_path.parent.name
        if names is not None and name not in names:
            continue
        try:
            cfg = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        except (OSError, text_format.ParseError):
            continue
        inputs = {i.name: i.data_type for i in cfg.input}
        if inputs.get(INPUT) == mc.TYPE_STRING and any(o.name == OUTPUT for o in cfg.output):
            found.append(cfg.name or name)
    return found


def ensemble_models(repository: Path) -> list[str]:
    """The ensembles of ``repository`` (``platform: "ensemble"``)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    found = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        try:
            cfg = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        except (OSError, text_format.ParseError):
            continue
        if cfg.platform == "ensemble":
            found.append(cfg.name or config_path.parent.name)
    return found
