"""``cvserve serve``: run the embedded Triton server on a model repository until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.server.process import CONTROL_MODES, ServerSettings, TritonServer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the embedded Triton Inference Server on a model repository",
        description="Run the Triton Inference Server binary shipped in nvidia-pytriton (python backend) "
        "on a model repository. Waits for readiness, prints the endpoints, and shuts down gracefully "
        "on SIGINT/SIGTERM.",
    )
    p.add_argument("--repository", "-r", type=Path, default=DEFAULT_REPOSITORY, help="model repository")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 picks a free one)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (0 picks a free one)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (0: free)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument(
        "--model-control-mode",
        choices=CONTROL_MODES,
        default="none",
        help="none: load every model at start; explicit: load/unload through the API (see --load-model)",
    )
    p.add_argument(
        "--load-model", action="append", default=[], metavar="NAME", help="explicit mode: load at start"
    )
    p.add_argument("--log-verbose", type=int, default=0, help="Triton log verbosity (0-3)")
    p.add_argument("--log-file", type=Path, help="write Triton's log here (default: a temporary file)")
    p.add_argument("--exit-timeout", type=int, default=30, help="seconds in-flight requests get at shutdown")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = ServerSettings(
        repository=args.repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        log_verbose=args.log_verbose,
        exit_timeout_s=args.exit_timeout,
    )
    server = TritonServer(settings, log_path=args.log_file)
    server.start()
    stopping = False

    def _forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        print(f"cvserve serve: {signal.Signals(signum).name}, shutting down gracefully", file=sys.stderr)
        server.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    try:
        took = server.wait_ready(args.ready_timeout)
    except BaseException:
        server.stop()
        raise
    print(f"Triton ready in {took:.1f} s (pid {server.pid}, repository {args.repository})")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  HTTP     {server.http_url}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  log      {server.log_path}")
    sys.stdout.flush()
    code = server.wait()
    server.stop()
    if stopping:
        return 0
    print(f"cvserve serve: Triton exited with status {code} (log: {server.log_path})", file=sys.stderr)
    return 1
