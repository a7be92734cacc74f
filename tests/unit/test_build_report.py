"""build_report.md from build_report.json (schema 2, and older schema-1 reports): no server, no build."""

from __future__ import annotations

from cvserve.builders.report import as_schema2, render_markdown

SCHEMA2 = {
    "schema": 2,
    "name": "mobilenet_v2",
    "version": 3,
    "created": "2025-01-02T03:04:05+00:00",
    "checkpoint": {"path": "weights.pth", "sha256": "cd" * 32, "kind": "state_dict"},
    "network": {
        "layout": "single",
        "runtime": "openvino",
        "precision": "int8",
        "target": "cpu",
        "file": "model.onnx",
        "sha256": "ab" * 32,
        "size_bytes": 3_512_345,
        "opset": 17,
        "num_classes": 1000,
        "top_k": 5,
    },
    "engine_profile": {"schema": 1, "min_batch": 1, "opt_batch": 8, "max_batch": 32},
    "preprocess": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "layout": "NHWC"},
    "quantization": {
        "method": "nncf",
        "calibration": {"images": 300, "subset": "folder"},
        "excluded_layers": ["/features/0/Conv"],
        "sensitivity": {"/features/0/Conv": 0.02134},
    },
    "accuracy": {
        "images": 500,
        "top1_agreement": 0.99523,
        "top5_overlap": 0.9871,
        "gate": {
            "decision": "passed",
            "metric": "top1_agreement",
            "thresholds": {"max_drop": 0.01},
            "images": 500,
        },
    },
    "throughput": {
        "batch": 8,
        "runtime": "openvino",
        "img_s": 812.34,
        "reference_fp32_img_s": 280.1,
        "speedup": 2.9,
        "cpu": "AMD EPYC 7B13, 2 cores",
    },
    "verification": {"images": 8, "max_abs_diff": 1.2e-05, "top1_equal": 8},
    "timings_s": {"export": 10.512, "quantize": 40.0, "total": 55.1},
}


def test_schema2_report_lists_every_section():
    md = render_markdown(SCHEMA2)
    assert md.startswith("# mobilenet_v2 version 3\n") and md.endswith("|\n")
    for needle in (
        "Built 2025-01-02T03:04:05+00:00.",
        "| layout | single |",
        "| runtime | openvino |",
        "| network file size (bytes) | 3512345 |",
        f"| network file sha256 | `{'ab' * 32}` |",
        "| checkpoint sha256 | `" + "cd" * 32 + "` |",
        "| 1 | 8 | 32 |",  # the engine profile
        "| mean | 0.485, 0.456, 0.406 |",
        "| method | nncf |",
        "| `/features/0/Conv` | 0.0213 |",
        "| top-1 agreement | 0.995 |",  # the one number format: 3 significant digits
        "Gate: **passed**",
        "Thresholds: max_drop 0.01.",
        "| images/s | 812 |",
        "| speed-up | 2.9 |",
        "| CPU | AMD EPYC 7B13, 2 cores |",
        "| max absolute difference | 1.20e-05 |",
        "| export | quantize | total |",
        "| 10.5 | 40 | 55.1 |",
    ):
        assert needle in md, needle
    assert "\n\n\n" not in md


def test_fp32_build_without_optional_sections():
    report = {**SCHEMA2, "quantization": None, "accuracy": None, "throughput": None}
    del report["timings_s"], report["created"]
    md = render_markdown(report)
    for absent in ("## Quantization", "## Accuracy", "## Throughput", "## Timings", "Built"):
        assert absent not in md
    assert "## Engine profile" in md and "## Verification" in md


def test_a_nearly_empty_report_still_renders():
    md = render_markdown({"schema": 2, "name": "m", "network": None, "checkpoint": None})
    assert md.startswith("# m version ?") and "| runtime | - |" in md


def test_schema1_report_is_read_as_schema2():
    old = {
        "name": "m",
        "version": 1,
        "checkpoint": "w.pth",
        "source_kind": "torchscript",
        "precision": "int8",
        "runtime": "onnxruntime",
        "sha256": "ef" * 32,
        "calibration": {"method": "minmax", "samples": 64},
        "excluded_layers": [],
        "tensorrt_accelerator": {"precision_mode": "INT8"},
    }
    r = as_schema2(old)
    assert r["network"]["runtime"] == "onnxruntime" and r["checkpoint"] == {
        "path": "w.pth",
        "kind": "torchscript",
    }
    assert r["quantization"]["calibration"]["method"] == "minmax" and r["accuracy"] is None
    md = render_markdown(old)
    assert "| checkpoint | w.pth |" in md and "| precision_mode | INT8 |" in md
    assert "None: every quantizable layer runs in the reduced precision." in md


def test_the_admission_section_shows_the_queue_bound_and_how_it_was_derived():
    admission = {
        "max_queue_size": 65,
        "source": "derived from the SLO and the measured throughput",
        "slo_p95_ms": 500.0,
        "queueing_share": 0.5,
        "queue_timeout_ms": 1000.0,
        "throughput": {"img_s": 260.0, "batch": 8, "instances": 2, "threads_per_instance": 1, "cpu": "x"},
    }
    md = render_markdown({**SCHEMA2, "admission": admission})
    assert "## Admission control" in md and "| max queue size (requests) | 65 |" in md
    assert "| instances x threads | 2 x 1 |" in md and "| measured images/s (all instances) | 260 |" in md
    assert "## Admission control" not in render_markdown(SCHEMA2)  # older reports have none
