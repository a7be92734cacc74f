"""``cvserve serve``: run the embedded Triton server on a model repository, supervised, until stopped."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from cvserve.server.process import ServerSettings
from cvserve.server.supervisor import SupervisorSettings
from cvserve.settings import add_command, from_args, setting


@dataclass(kw_only=True)
class ServeSettings:
    """Everything ``cvserve serve`` takes: the server, how it is watched, where its log goes."""

    server: ServerSettings = setting(default_factory=ServerSettings, title="server")
    supervisor: SupervisorSettings = setting(
        default_factory=SupervisorSettings,
        title="supervisor",
        description="canary inferences, restarts and the supervisor's own /metrics",
    )
    log_file: Path | None = setting(None, help="write Triton's log here (default: a temporary file)")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "serve",
        ServeSettings,
        run,
        help="run the embedded Triton Inference Server on a model repository",
        description="Run the Triton Inference Server binary shipped in nvidia-pytriton (python backend) "
        "on a model repository, under a supervisor: canary inferences restart a server whose python stub "
        "died, SIGINT/SIGTERM drain in-flight requests (exit status 1 if the drain did not finish). "
        "Durations take 90, 60s, 2m, 1m30s or 1h.",
        argument_kwargs=_append_flags,
    )


def _append_flags(flag: str) -> dict:
    return {"action": "append"} if flag in ("--load-model", "--canary-model") else {}


def run(args: argparse.Namespace) -> int:
    return serve(from_args(ServeSettings, args))


def serve(s: ServeSettings) -> int:
    from cvserve import hardware
    from cvserve.server.budget import model_threads
    from cvserve.server.process import check_repository
    from cvserve.server.restricted import is_loopback
    from cvserve.server.supervisor import Supervisor

    check_repository(Path(s.server.repository), s.server.model_control_mode)
    supervisor = Supervisor(s.server, s.supervisor, log_path=s.log_file)
    supervisor.install_signal_handlers()
    try:
        took = supervisor.start()
    except BaseException:
        if supervisor.stopping:  # a signal during start-up: the server is gone, nothing to drain
            return 1
        raise
    server = supervisor.server
    loaded = s.server.load_models if s.server.model_control_mode == "explicit" else None
    print(f"Triton ready in {took:.1f} s (pid {server.pid}, repository {s.server.repository})")
    print(f"  gRPC        {server.grpc_url}")
    print(f"  HTTP        {server.http_url}")
    print(f"  metrics     {server.metrics_url}")
    print(f"  supervisor  {supervisor.metrics_url}")
    print(f"  log         {server.log_path}")
    print(f"  hardware    {hardware.summary()}")
    for t in model_threads(Path(s.server.repository), cpus=s.server.cpus, names=loaded):
        print(f"  threads     {t.model}: {t.text}")
    models = supervisor.canary_models()
    every = s.supervisor.canary_interval_s
    print(
        f"  canary      every {every:g} s: {', '.join(models)}"
        if every and models
        else "  canary      off (no model with the classifier contract)"
        if every
        else "  canary      off (--canary-interval 0)"
    )
    if server.restricted is not None:
        print(f"  restricted  {server.restricted.describe()}")
    elif not is_loopback(s.server.host):
        print(
            "  restricted  off (--restrict-api off): every API group is open to anyone who reaches the ports"
        )
    sys.stdout.flush()
    return supervisor.run()
