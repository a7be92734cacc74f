"""The load generator's own ceiling on this machine: the highest request rate Locust (this suite, one
process) drives against a model that does nothing.

A load test's figures describe the server only while the generator keeps up; :mod:`analysis` warns
when a run comes near the figure measured here. The model is generated at run time in a temporary
repository: a python-backend classifier with the cvserve contract that returns a constant answer, so
the same user, client and payload path as a real run is measured. Triton shares the machine, so the
figure is a lower bound of what Locust alone could do; the generator's CPU use is recorded with it.

    python -m cvserve.loadtests.ceiling [--duration 15s] [--users 32]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cvserve.client import contract
from cvserve.settings import add_arguments, duration, from_args, setting

MODEL = "noop_classifier"

_MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers every image with class 0, score 1.0: no decoding, no compute."""

    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "{IMAGE}").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("{CLASS_INDEX}", np.zeros((n, 1), np.int64)),
                pb_utils.Tensor("{SCORE}", np.ones((n, 1), np.float32)),
            ]))
        return responses
'''


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cvserve" / "loadgen-ceiling.json"


def _machine() -> dict:
    return {"host": socket.gethostname(), "cpus": os.cpu_count()}


def known_ceiling() -> dict | None:
    """The ceiling measured earlier on this machine (same host name and CPU count), if any."""
    path = Path(os.environ.get("CVSERVE_LOADGEN_CEILING_FILE") or cache_path())
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if {k: data.get(k) for k in ("host", "cpus")} != _machine() or not data.get("rps"):
        return None
    return data | {"source": str(path)}


def write_repository(repo: Path) -> Path:
    """Write the no-op classifier's repository (config from Triton's model_config protobuf)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    def tensor(cls, name, dtype):
        return cls(name=name, data_type=dtype, dims=[1])

    config = mc.ModelConfig(
        name=MODEL,
        backend="python",
        max_batch_size=64,
        input=[tensor(mc.ModelInput, contract.IMAGE, mc.TYPE_STRING)],
        output=[
            tensor(mc.ModelOutput, contract.CLASS_INDEX, mc.TYPE_INT64),
            tensor(mc.ModelOutput, contract.SCORE, mc.TYPE_FP32),
        ],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=500),
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    names = {"IMAGE": contract.IMAGE, "CLASS_INDEX": contract.CLASS_INDEX, "SCORE": contract.SCORE}
    (repo / MODEL / "1" / "model.py").write_text(_MODEL_PY.lstrip().format(**names))
    (repo / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))
    return repo


def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def measure(*, duration_s: float = 15.0, users: int = 32, warmup_s: float = 3.0, save: bool = True) -> dict:
    """Start Triton with the no-op model, drive it as hard as one Locust process can, return the rate."""
    from cvserve.loadtests.runner import LoadTestSettings, run_loadtest
    from cvserve.server import ServerSettings, TritonServer

    with tempfile.TemporaryDirectory(prefix="cvserve-ceiling-") as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        (images / "tiny.png").write_bytes(_tiny_png())
        repo = write_repository(root / "repo")
        with TritonServer(ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0)) as srv:
            report = run_loadtest(
                LoadTestSettings(
                    model=MODEL,
                    url=srv.grpc_url,
                    images=images,
                    users=users,
                    spawn_rate=float(users),
                    duration_s=duration_s,
                    warmup_s=warmup_s,
                    slo_p95_ms=60_000.0,
                    max_error_rate=1.0,
                    metrics=False,
                    report_dir=root / "report",
                    plots=False,
                    generator_ceiling_rps=0.0,
                )
            )
    result = {
        **_machine(),
        "rps": report["throughput_rps"],
        "p50_ms": report["p50_ms"],
        "p95_ms": report["p95_ms"],
        "users": users,
        "duration_s": duration_s,
        "generator_cpu_percent_mean": report["generator"]["cpu_percent_mean"],
        "generator_cpu_percent_max": report["generator"]["cpu_percent_max"],
        "error_rate": report["error_rate"],
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if save:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        result["saved_to"] = str(path)
    return result


@dataclass(kw_only=True)
class CeilingSettings:
    """``python -m cvserve.loadtests.ceiling``."""

    duration_s: float = duration(15.0, above=0, help="the measured window")
    users: int = setting(32, at_least=1, help="concurrent users")
    save: bool = setting(True, help=f"record the figure in {cache_path()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cvserve.loadtests.ceiling", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser, CeilingSettings)
    s = from_args(CeilingSettings, parser.parse_args(argv))
    result = measure(duration_s=s.duration_s, users=s.users, save=s.save)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
