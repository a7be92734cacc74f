"""What counting the signals costs the served model: throughput at concurrency 16, signals on vs off.

A measurement script (docs/benchmarks.md keeps its figures with the machine), not a test::

    python -m cvserve.monitor.bench_cost --repository models --name mobilenet_v2

The built version is served twice by one embedded Triton: as built (``NAME``, signals on) and as a
copy whose config says ``monitor_signals: off`` (``NAME_signals_off``); the served graph is the same
file, so its FEATURES MatMul (1280 x 16 multiply-adds per image, against MobileNetV2's ~300 M) is in
both and the difference is the counting and the metric updates. Rounds alternate A/B (the order
flips every round), each a closed-loop load of ``--seconds`` through :class:`cvserve.client.Client`
at ``--concurrency``, after an unmeasured ``--warmup`` of each; the script prints each run, then the medians and their ratio, the server's CPU
per image (``/proc``: wall time on a shared machine also counts other people's work) and the load
generator's own CPU.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY

OFF_SUFFIX = "_signals_off"


def _copy_with_signals_off(repository: Path, name: str, out: Path) -> None:
    """``out`` gets NAME as built and NAME_signals_off, its copy with ``monitor_signals: off``."""
    from cvserve.builders import triton_config as tc

    shutil.copytree(repository / name, out / name, symlinks=True)
    shutil.copytree(repository / name, out / f"{name}{OFF_SUFFIX}", symlinks=True)
    config = out / f"{name}{OFF_SUFFIX}" / "config.pbtxt"
    cfg = tc.parse(config.read_text())
    cfg.name = f"{name}{OFF_SUFFIX}"
    cfg.parameters["monitor_signals"].string_value = "off"
    config.write_text(tc.to_text(cfg))
    for snapshot in (out / f"{name}{OFF_SUFFIX}").glob("*/config.pbtxt.build"):
        snapshot.unlink()  # the build's snapshot would name NAME


def main(argv: list[str] | None = None) -> int:
    from cvserve.bench import jpegs
    from cvserve.bench_measure import ServerWatch, client_load
    from cvserve.hardware import summary
    from cvserve.server import ServerSettings, TritonServer

    p = argparse.ArgumentParser(
        prog="python -m cvserve.monitor.bench_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--name", default="mobilenet_v2")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="per run")
    p.add_argument("--rounds", type=int, default=5, help="A/B pairs")
    p.add_argument("--warmup", type=float, default=10.0, help="unmeasured load per variant first (s)")
    a = p.parse_args(argv)

    images = jpegs()
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-cost-") as tmp:
        repo = Path(tmp)
        _copy_with_signals_off(a.repository, a.name, repo)
        variants = {"on": a.name, "off": f"{a.name}{OFF_SUFFIX}"}
        settings = ServerSettings.embedded(repo, load_models=list(variants.values()))
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        with TritonServer(settings) as server:
            watch = ServerWatch(server.grpc_url, server.pid)
            try:
                for model in variants.values():  # first calls, caches, thread pools: not measured
                    client_load(server.grpc_url, model, images, a.concurrency, a.warmup)
                for r in range(a.rounds):
                    for variant in ("off", "on") if r % 2 == 0 else ("on", "off"):
                        model = variants[variant]
                        result, srv = watch.measure(
                            model,
                            lambda m=model: client_load(server.grpc_url, m, images, a.concurrency, a.seconds),
                        )
                        runs[variant].append({**result, "server": srv})
                        print(
                            f"round {r + 1} signals {variant:>3}: {result['img_s']:.1f} img/s, "
                            f"p95 {result['p95_ms']:.1f} ms, server {srv['core_ms_per_img'] or float('nan'):.2f} "
                            f"core-ms/img, client CPU {result['cpu_s'] / result['wall_s']:.2f} cores, "
                            f"errors {result['errors'] or 0}",
                            flush=True,
                        )
            finally:
                watch.close()
    med = {v: statistics.median(x["img_s"] for x in runs[v]) for v in runs}
    cost = {
        v: statistics.median(x["server"]["core_ms_per_img"] or float("nan") for x in runs[v]) for v in runs
    }
    ratios = [on["img_s"] / off["img_s"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    print(f"machine: {summary()}; concurrency {a.concurrency}, {a.rounds} A/B rounds of {a.seconds:g} s")
    print(f"median throughput: signals off {med['off']:.1f} img/s, on {med['on']:.1f} img/s")
    print(f"median server CPU: signals off {cost['off']:.2f} core-ms/img, on {cost['on']:.2f} core-ms/img")
    print(
        f"RESULT throughput on/off: median of paired ratios {statistics.median(ratios):.3f} "
        f"(cost {100 * (1 - statistics.median(ratios)):.1f} % of throughput; budget 3 %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
