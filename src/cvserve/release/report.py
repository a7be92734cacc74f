"""The release's outputs: release_report.json, release_report.md with its plots, and MODEL_CARD.md.

Markdown is rendered through :func:`cvserve.reporting.render` (templates ``release_report.md.j2`` and
``model_card.md.j2``), numbers through its ``num`` filter; plots with matplotlib (``[loadtest]`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvserve._extras import require
from cvserve.reporting import num, render

REPORT_JSON = "release_report.json"
REPORT_MD = "release_report.md"
MODEL_CARD = "MODEL_CARD.md"
ACCURACY_PLOT = "accuracy_by_slice.png"
LATENCY_PLOT = "latency_baseline_vs_candidate.png"


def plot(report: dict, latencies: dict[str, list[float]], report_dir: Path) -> list[str]:
    """The golden-set figure per slice (both versions) and the latency distributions; returns the files
    written. The figure is the golden-set format's ``metric`` (top-1 accuracy, mAP)."""
    matplotlib = require("matplotlib", purpose="to plot the release report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    name, b, c = report["name"], report["baseline"], report["candidate"]
    slices, metric = report["slices"], report["golden"]["metric"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(slices)), 3.8))
    x = np.arange(len(slices))
    ax.bar(x - 0.2, [s["baseline_" + metric["key"]] for s in slices], 0.4, label=f"baseline v{b}")
    ax.bar(x + 0.2, [s["candidate_" + metric["key"]] for s in slices], 0.4, label=f"candidate v{c}")
    ax.set_xticks(x, [s["slice"] for s in slices], rotation=30, ha="right")
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(f"{metric['label']} on the golden set")
    ax.set_title(f"{name}: {metric['label']} per slice")
    ax.legend(loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(report_dir / ACCURACY_PLOT, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for role, version in (("baseline", b), ("candidate", c)):
        values = np.sort(np.asarray(latencies.get(role) or [], dtype=float))
        if values.size:
            ax.plot(values, np.arange(1, values.size + 1) / values.size, label=f"{role} v{version}")
    ax.axvline(report["settings"]["slo_p95_ms"], color="grey", linestyle="--", label="p95 SLO")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")  # the SLO and the measured latencies may be orders of magnitude apart
    ax.set_xlabel("response time (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{name}: latency under the release load test")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(report_dir / LATENCY_PLOT, dpi=110)
    plt.close(fig)
    return [ACCURACY_PLOT, LATENCY_PLOT]


def limitations(report: dict) -> list[str]:
    """What the figures do not show, derived from them (the user's own text is added by the card)."""
    out = []
    overall = report["slices"][0]
    key, label = "candidate_" + report["golden"]["metric"]["key"], report["golden"]["metric"]["label"]
    for s in report["slices"][1:]:
        if s[key] < overall[key]:
            out.append(
                f"Below its overall golden-set {label} on {s['slice']}: {s[key]:.3f} "
                f"against {overall[key]:.3f} ({s['cases']} cases)."
            )
    out.append(
        f"The golden set has {overall['cases']} cases; a slice's {label} is only as precise as its size "
        "allows (one case of 10 is a tenth of the slice)."
    )
    out.append(
        f"Latency and cost were measured on {report['machine']}, a shared machine; re-measure on the "
        "serving hardware before sizing a deployment."
    )
    return out


def _brief(value: Any) -> str:
    """One table cell for a build fact: scalars as they are, a mapping's scalar items, a list's length."""
    if isinstance(value, dict):
        items = [f"{k} {num(v, 4)}" for k, v in value.items() if not isinstance(v, dict | list)]
        return ", ".join(items) or "-"
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value) and len(value) <= 5:
            return ", ".join(str(v) for v in value) or "none"
        return f"{len(value)} entries"
    return num(value, 4)


def card_facts(build: dict) -> dict:
    """The candidate's build facts as the model card shows them (accuracy gate, quantization, speed)."""
    accuracy = build.get("accuracy") or {}
    gate = accuracy.get("gate") if isinstance(accuracy.get("gate"), dict) else {}
    metrics = accuracy.get("metrics") if isinstance(accuracy.get("metrics"), dict) else accuracy
    passed = gate.get("passed")
    return {
        "gate_decision": gate.get("decision") or {True: "pass", False: "fail"}.get(passed, "unknown"),
        "gate_images": gate.get("images") or accuracy.get("held_out_images"),
        "gate_max_drop": gate.get("max_accuracy_drop"),
        "accuracy_metrics": [
            (k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        ],
        "quantization": [(k, _brief(v)) for k, v in (build.get("quantization") or {}).items()],
        "throughput": build.get("throughput") or None,
    }


def write(report: dict, latencies: dict[str, list[float]], report_dir: Path, *, plots: bool = True) -> dict:
    """Write the report files into ``report_dir``; returns the model card's text."""
    report_dir.mkdir(parents=True, exist_ok=True)
    images = plot(report, latencies, report_dir) if plots else []
    report["files"] = {"json": REPORT_JSON, "markdown": REPORT_MD, "model_card": MODEL_CARD, "plots": images}
    report["limitations"] = limitations(report)
    card = render("model_card.md.j2", r=report, card=card_facts(report["builds"]["candidate"]))
    (report_dir / MODEL_CARD).write_text(card)
    (report_dir / REPORT_MD).write_text(render("release_report.md.j2", r=report, plots=images))
    (report_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return {"model_card": card}


def write_model_card(card: str, version_dir: Path) -> Path:
    """Put the model card next to the version it describes."""
    path = version_dir / MODEL_CARD
    path.write_text(card)
    return path


def summary_lines(report: dict[str, Any], report_dir: Path) -> list[str]:
    """What the command prints: per slice, the load tests, the gates, the decision and where the report is."""
    metric = report["golden"]["metric"]
    lines = [
        f"{s['slice']}: {metric['label']} {num(s['baseline_' + metric['key']], 4)} -> "
        f"{num(s['candidate_' + metric['key']], 4)}, {s['regressions']} regression(s) and "
        f"{s['improvements']} improvement(s) in {s['cases']} cases"
        for s in report["slices"]
    ]
    for role in ("baseline", "candidate"):
        lt = report["loadtest"][role]
        cost = num(lt["cost_per_1k_usd"], 4, "USD") if lt["cost_per_1k_usd"] is not None else "n/a (no price)"
        lines.append(
            f"{role} v{report[role]}: p95 {num(lt['p95_ms'])} ms, error rate {num(lt['error_rate'])}, "
            f"{num(lt['inferences_per_s'])} inferences/s, cost per 1k {cost}"
        )
    for g in report["gates"]:
        verdict = "pass" if g["passed"] else "FAIL"
        lines.append(
            f"gate {g['name']}: {num(g['value'], 4)} {g['op']} {num(g['threshold'], 4)} {g['unit']}: {verdict}"
        )
    verdict = "GO" if report["decision"] == "go" else "NO-GO, failing: " + ", ".join(report["failed_gates"])
    lines.append(
        f"{report['name']} v{report['candidate']} against v{report['baseline']}: {verdict}; "
        f"report in {report_dir / REPORT_MD}"
    )
    return lines
