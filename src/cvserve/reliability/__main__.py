"""``python -m cvserve.reliability``: run the reliability scenarios and print the report."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import tempfile
from pathlib import Path

from cvserve.settings import add_arguments, duration, from_args, setting

SCENARIOS = ("R1", "R2", "R3", "R4", "R5", "R6", "R7")
ORDER = ("R1", "R2", "R6", "R7", "R3", "R4", "R5")


@dataclasses.dataclass(kw_only=True)
class ReliabilitySettings:
    repository: Path | None = setting(
        None,
        short="-r",
        help="a built repository to test (copied first); default: build the demo MobileNetV2",
    )
    model: str = setting("mobilenet_v2", help="the classifier to test (single layout)")
    only: str = setting(",".join(SCENARIOS), help="scenarios to run, comma-separated (R5 stops the server)")
    bad_requests: int = setting(2000, help="R1: bad requests to send", at_least=1)
    overload_s: float = duration(20.0, help="R2: how long the overload lasts")
    goodput_s: float = duration(20.0, help="R6: how long each caller's overload lasts")
    goodput_rounds: int = setting(1, help="R6: rounds of the two callers, alternating", at_least=1)
    burst_processes: int = setting(8, help="R7: client processes bursting together", at_least=1)
    burst_calls: int = setting(64, help="R7: calls each process sends at once", at_least=1)
    burst_rounds: int = setting(
        1, help="R7: bursts, each compared with the unloaded rate around it", at_least=1
    )
    output: Path = setting(Path("reports/reliability"), help="writes OUTPUT.md and OUTPUT.json")


def _build_demo(into: Path) -> Path:
    from cvserve.builders.pipeline import BuildSettings, build
    from cvserve.builders.samples import demo_weights, imagenet_labels_path

    repo = into / "models"
    build(
        BuildSettings(
            checkpoint=demo_weights(),
            arch="cvserve.builders.architectures:mobilenet_v2",
            name="mobilenet_v2",
            labels=imagenet_labels_path(),
            repository=repo,
            progress=False,
        ),
        log=lambda m: print(m, file=sys.stderr),
    )
    return repo


def _queue_policy(repo: Path, model: str) -> tuple[str, str, float]:
    from tritonclient.grpc import model_config_pb2 as mc

    from cvserve.builders.repository import Repository

    cfg = Repository(repo).config(model)
    p = cfg.dynamic_batching.default_queue_policy
    layout = "single layout" if cfg.backend == "python" else f"platform {cfg.platform or cfg.backend}"
    text = (
        f"max_queue_size {p.max_queue_size}, timeout {p.default_timeout_microseconds / 1000:g} ms "
        f"({mc.ModelQueuePolicy.TimeoutAction.Name(p.timeout_action)}), max batch {cfg.max_batch_size}, "
        f"{sum(g.count or 1 for g in cfg.instance_group)} instance(s)"
    )
    return text, layout, p.default_timeout_microseconds / 1000 / 2  # the SLO the timeout derives from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvserve.reliability", description=__doc__)
    add_arguments(parser, ReliabilitySettings)
    s = from_args(ReliabilitySettings, parser.parse_args(argv))
    wanted = [x.strip().upper() for x in s.only.split(",") if x.strip()]
    from cvserve import hardware, reporting
    from cvserve.reliability import goodput as gp
    from cvserve.reliability import scenarios as sc
    from cvserve.server.runtime import ensure_runtime
    from cvserve.server.serve_process import ServeProcess

    work = Path(tempfile.mkdtemp(prefix="cvserve-reliability-"))
    source = s.repository or _build_demo(work / "build")
    repo = sc.copy_repository(source, work / "models")
    policy, layout, slo_ms = _queue_policy(repo, s.model)
    server = ServeProcess(
        repo,
        args=["--model-control-mode", "explicit", "--load-model", s.model, "--canary-interval", "5"],
        exit_timeout_s=30,
    )
    print(f"starting cvserve serve on {repo} ...", file=sys.stderr)
    server.start()
    results = []
    runs = {
        "R1": lambda: sc.r1_hostile(server, s.model, bad_requests=s.bad_requests),
        "R2": lambda: sc.r2_overload(server, s.model, slo_ms=slo_ms, overload_s=s.overload_s),
        "R3": lambda: sc.r3_rollout(server, s.model),
        "R4": lambda: sc.r4_kill(server, s.model),
        "R5": lambda: sc.r5_sigterm(server, s.model),
        "R6": lambda: gp.r6_goodput(
            server, s.model, slo_ms=slo_ms, duration_s=s.goodput_s, rounds=s.goodput_rounds
        ),
        "R7": lambda: gp.r7_bursts(
            server, s.model, processes=s.burst_processes, calls=s.burst_calls, rounds=s.burst_rounds
        ),
    }
    try:
        # R3 after R1: a rollout still unloads the old version after R1's malformed framing (a model
        # that had executed it with other requests could not unload: docs/security.md). R4 restarts
        # the server, so R5 starts clean; R6 and R7 overload it before.
        for name in ORDER:
            if name in wanted:
                print(f"{name} ...", file=sys.stderr)
                results.append(runs[name]())
                print(f"{name} done: {results[-1]}", file=sys.stderr)
    finally:
        server.kill()
    context = {
        "command": "python -m cvserve.reliability" + (" " + shlex.join(argv) if argv else ""),
        "machine": hardware.summary(),
        "date": datetime.date.today().isoformat(),
        "model": s.model,
        "layout": layout,
        "triton": ensure_runtime().version.replace("0.7.0", "2.51 (nvidia-pytriton 0.7.0)"),
        "queue_policy": policy,
        "results": sorted(results, key=lambda r: r.name),
    }
    text = reporting.render("reliability.md.j2", **context)
    print(text)
    s.output.parent.mkdir(parents=True, exist_ok=True)
    s.output.with_suffix(".md").write_text(text)
    raw = {**context, "results": [dataclasses.asdict(r) for r in results]}
    s.output.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"written {s.output.with_suffix('.md')} and {s.output.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
