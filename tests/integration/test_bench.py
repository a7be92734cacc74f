"""``make bench``'s measurements against the real demo build, runtimes and embedded Triton (short runs).

They check what each measurement returns, never how fast anything is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cvserve import bench_measure, perf_analyzer
from cvserve.bench import jpegs, networks_of

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return jpegs()


def test_stage_costs_and_the_loop_run_the_served_network_file(demo_build, images):
    report = demo_build.report
    build = {
        "fp32": {
            "version_dir": str(Path(demo_build.repository) / MODEL / str(demo_build.version)),
            "file": report["network"]["file"],
            "runtime": report["network"]["runtime"],
        }
    }
    networks = networks_of(build)
    assert networks[0].path.name == report["network"]["file"] and networks[0].path.exists()
    costs = bench_measure.stage_costs(networks, images, cores=2, rounds=1, seconds=0.2)["fp32"]
    assert (
        costs["decode_cpu_ms"] > 0 and costs["network_1t_cpu_ms"] > 0 and costs["network_budget_wall_ms"] > 0
    )
    assert costs["limit_img_s"] == pytest.approx(2000 / (costs["decode_cpu_ms"] + costs["network_1t_cpu_ms"]))
    loop = bench_measure.loop(networks, images, cores=2, rounds=2, seconds=0.6)["fp32"]
    assert loop["requests"] > 1 and loop["img_s"] > 0 and loop["p50_ms"] <= loop["p95_ms"]


def test_client_load_and_the_servers_own_account_of_it(triton, images):
    watch = bench_measure.ServerWatch(triton.grpc_url, triton.pid)
    try:
        result, server = watch.measure(
            MODEL, lambda: bench_measure.client_load(triton.grpc_url, MODEL, images, 2, 1.0)
        )
    finally:
        watch.close()
    assert result["requests"] > 0 and result["errors"] == {} and result["cpu_s"] > 0
    # Triton counted the warm-up requests and the measured ones, each one image, in batches of >= 1.
    assert server["requests"] >= result["requests"] and server["inferences"] == server["requests"]
    assert server["avg_batch"] >= 1 and server["compute_infer_ms"] > 0 and server["queue_ms"] >= 0
    assert server["cpu_s"] > 0 and server["core_ms_per_img"] > 0


def test_perf_analyzer_measures_the_served_model(triton, images, tmp_path):
    if not (perf_analyzer.cache_dir() / ".complete").exists():
        pytest.skip(f"perf_analyzer is not assembled in {perf_analyzer.cache_dir()} (make bench does it)")
    pa = perf_analyzer.ensure(log=lambda _m: None)
    data = perf_analyzer.write_input_data(images, tmp_path / "input.json")
    result = perf_analyzer.run(
        pa, url=triton.grpc_url, model=MODEL, concurrency=2, input_data=data, seconds=3, workdir=tmp_path
    )
    assert result.error is None, result.error
    assert result.img_s > 0 and result.requests > 0 and result.p50_ms <= result.p95_ms
    assert result.cpu_s > 0
