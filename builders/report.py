"""build_report.md: the build report (build_report.json, schema 2 or 3) rendered for people.

The Markdown is ``templates/build_report.md.j2``, rendered by :mod:`cvserve.reporting` (one number
format). Every section may be missing or null (an FP32 build has no quantization or accuracy gate; a
failed measurement leaves throughput out). A schema-1 report (written before schema 2, without a
``schema`` key) is read through :func:`as_schema2`, so older builds in a repository still render.
"""

from __future__ import annotations

from typing import Any

from cvserve.reporting import render

SECTIONS = (
    "checkpoint",
    "network",
    "engine_profile",
    "admission",
    "preprocess",
    "quantization",
    "accuracy",
    "throughput",
    "verification",
    "timings_s",
    "hardware",  # schema 3
)


def as_schema2(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with every schema-2 section present (``None`` when absent); a schema-1 report's
    top-level network fields, checkpoint path and calibration moved to their schema-2 sections."""
    r = {key: None for key in SECTIONS} | dict(report)
    if report.get("schema") is None and ("precision" in report or "sha256" in report):
        r["network"] = {
            "runtime": report.get("runtime"),
            "precision": report.get("precision"),
            "target": report.get("target"),
            "sha256": report.get("sha256"),
            "size_bytes": report.get("size_bytes"),
            "opset": report.get("opset"),
            "num_classes": report.get("num_classes"),
        }
        if isinstance(report.get("checkpoint"), str):
            r["checkpoint"] = {"path": report["checkpoint"], "kind": report.get("source_kind")}
        if report.get("calibration") or "excluded_layers" in report:
            r["quantization"] = {
                "calibration": report.get("calibration"),
                "excluded_layers": report.get("excluded_layers", []),
                "fallback": report.get("fallback"),
            }
    return r


def render_markdown(report: dict[str, Any]) -> str:
    """Markdown summary of a build report (the dict written as build_report.json)."""
    return render("build_report.md.j2", r=as_schema2(report)).rstrip("\n") + "\n"
