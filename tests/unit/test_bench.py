"""``make bench``'s pieces that need no server: perf_analyzer's input data, verdicts, the report."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from cvserve import perf_analyzer
from cvserve.bench import jpegs, judge
from cvserve.reporting import render


def test_input_data_holds_each_jpeg_in_tritons_bytes_wire_format(tmp_path):
    images = jpegs()
    data = json.loads(perf_analyzer.write_input_data(images, tmp_path / "in.json").read_text())["data"]
    assert len(data) == len(images)
    for step, jpeg in zip(data, images, strict=True):
        assert step["IMAGE"]["shape"] == [1]
        raw = base64.b64decode(step["IMAGE"]["b64"])
        assert struct.unpack("<I", raw[:4])[0] == len(jpeg) and raw[4:] == jpeg
        assert jpeg[:2] == b"\xff\xd8"  # JPEG, as served


def test_a_perf_analyzer_that_fails_gives_a_row_with_its_error(tmp_path):
    broken = perf_analyzer.PerfAnalyzer(binary=Path("/bin/false"), lib_dirs=())
    result = perf_analyzer.run(
        broken, url="127.0.0.1:1", model="m", concurrency=1, input_data=tmp_path / "x.json", seconds=1,
        workdir=tmp_path,
    )  # fmt: skip
    assert result.img_s is None and result.error and result.cpu_s >= 0


COSTS = {"fp32": {"decode_cpu_ms": 3.0, "network_1t_cpu_ms": 12.0, "limit_img_s": 2000 / 15}}
LOOP = {"fp32": {"img_s": 50.0, "p50_ms": 20.0, "p95_ms": 25.0, "requests": 1000}}


def row(concurrency: int, img_s: float, p50_ms: float) -> dict:
    server = {
        "requests": 100, "failed": 0, "avg_batch": 4.0, "queue_ms": 30.0, "compute_input_ms": 0.1,
        "compute_infer_ms": 40.0, "compute_output_ms": 0.5, "cpu_s": 2.0, "cores_busy": 1.8,
        "inferences": 100, "core_ms_per_img": 20.0,
    }  # fmt: skip
    return {
        "precision": "fp32", "generator": "client", "concurrency": concurrency, "img_s": img_s,
        "p50_ms": p50_ms, "p95_ms": p50_ms * 2, "requests": 100, "wall_s": 10.0, "cpu_s": 1.0, "server": server,
    }  # fmt: skip


def test_targets_are_judged_per_row_and_a_miss_says_where_the_time_goes():
    rows = [row(1, 40.0, 22.5), row(16, 70.0, 200.0), row(16, 110.0, 150.0), row(64, 100.0, 600.0)]
    judge(rows, COSTS, LOOP)
    c1, slow, fast, c64 = rows
    assert [t["met"] for t in c1["targets"]] == [True] and c1["where"] is None  # 2.5 ms over the loop
    assert slow["served_over_loop"] == 70.0 / 50.0
    assert [t["met"] for t in slow["targets"]] == [True, False]  # 1.4x the loop, 52 % of the limit
    assert "queue 30.0 ms" in slow["where"] and "20.0 core-ms/img vs 15.0 in the stages" in slow["where"]
    assert "load generator 0.10 cores" in slow["where"]
    assert all(t["met"] for t in fast["targets"]) and fast["where"] is None
    assert c64["targets"] == []


def test_report_renders_every_section():
    rows = [row(1, 40.0, 30.0), row(16, 70.0, 200.0)]
    judge(rows, COSTS, LOOP)
    cost = {
        **COSTS["fp32"], "decode_wall_ms": 3.1, "network_1t_wall_ms": 12.5, "network_budget_threads": 2,
        "network_budget_cpu_ms": 14.0, "network_budget_wall_ms": 7.5, "network_budget_core_ms": 15.0,
        "limit_budget_img_s": 110.0, "rounds": 3,
    }  # fmt: skip
    result = {
        "command": "python -m cvserve.bench", "machine": "a CPU, 2 cores", "cores": 2, "date": "2026-01-01",
        "load_average_before": [1, 1, 1], "load_average_after": [1, 1, 1], "versions": {"openvino": "x"},
        "images": "6 photos", "rounds": 3, "build_queue_policy": {"queue_timeout_ms": 10000.0, "max_queue_size": 256},
        "builds": {"fp32": {"model": "m_fp32", "layout": "single", "runtime": "openvino", "file": "model.xml",
                            "top1_agreement": None, "max_accuracy_drop": None, "note": None}},
        "perf_analyzer": {"version": "2.40.0", "available": False, "note": "perf_analyzer unavailable (offline)"},
        "stage_costs": {"fp32": cost}, "loop": LOOP, "served": rows,
    }  # fmt: skip
    md = render("bench_report.md.j2", r=result)
    assert "**perf_analyzer unavailable (offline)**" in md
    assert "| fp32 | - | 3 | 12 / 12.5 |" in md and "| fp32 | 50 | 20 | 25 | 1000 |" in md
    # the runtime comparison: the other runtime's builds appear in the stage-cost table, not as served rows
    compared = {**cost, "runtime": "onnxruntime"}
    result["stage_costs"]["fp32 (onnxruntime)"] = compared
    result["compared_builds"] = {"fp32": {"note": None}}
    md = render("bench_report.md.j2", r=result)
    assert "| fp32 (onnxruntime) | onnxruntime | 3 |" in md and "measured in the same rounds" in md
    assert "p50 <= loop p50 + 3 ms: **missed**" in md and "served/loop >= 1.2: met" in md
    assert "Where the time goes" in md and "fp32, client, c=16: Triton per request: queue 30.0 ms" in md


def test_flags_come_from_the_settings_and_bad_ones_name_the_fix(capsys):
    from cvserve.bench import BenchSettings, parse_args

    s = parse_args(["--concurrency", "1,16", "--generators", "client", "--compare-runtime", ""])
    assert s == BenchSettings(concurrency=(1, 16), generators=("client",), compare_runtime="")
    for argv, fragment in (
        (["--generators", "wrk"], "choose from perf_analyzer,client"),
        (["--concurrency", "1,x"], "comma-separated whole numbers"),
        (["--concurrency", "0"], "positive whole numbers"),
    ):
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == 2 and fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("2,x", "counts separated by commas"), ("0", "each at least 1"), ("", "at least one")],
)
def test_bench_detect_refuses_bad_instance_counts_before_building_anything(capsys, value, fragment):
    from cvserve.bench_detect import main

    with pytest.raises(SystemExit) as info:
        main(["--network-instances", value])
    assert info.value.code == 2 and fragment in capsys.readouterr().err
