"""Write the report: report.json, report.md (a template of :mod:`cvserve.reporting`) and its matplotlib plots.

Locust's CSVs are written by Locust."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvserve._extras import require
from cvserve.reporting import render


def write_report(report: dict, report_dir: Path, *, plots: bool = True) -> None:
    """Write ``report.json`` and ``report.md`` (with PNG plots unless ``plots`` is false)."""
    images = plot(report, report_dir) if plots else {}
    report["files"] = {
        "json": "report.json",
        "markdown": "report.md",
        "plots": sorted(images.values()),
        "locust_csv": sorted(p.name for p in report_dir.glob("locust_*.csv")),
        "locust_html": "locust.html" if (report_dir / "locust.html").exists() else None,
        "samples": "samples.json",
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (report_dir / "report.md").write_text(markdown(report, images))


def markdown(report: dict, plots: dict[str, str]) -> str:
    """report.md: the report rendered by ``templates/loadtest_report.md.j2``."""
    return render("loadtest_report.md.j2", r=report, plots=plots)


def plot(r: dict, report_dir: Path) -> dict[str, str]:
    """Latency-over-time, throughput and server queue/compute PNGs; returns title -> file name."""
    require("matplotlib", purpose="to plot the load-test report")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = r["timeline"]
    w = r["window"]
    out: dict[str, str] = {}
    if not tl:
        return out
    t = [row["t_s"] for row in tl]

    def shade(ax: Any) -> None:
        ax.axvspan(w["start_s"], w["end_s"], color="tab:green", alpha=0.07, label="measured window")
        ax.set_xlabel("seconds since start")
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(9, 4))
    for q, style in (("p50_ms", "-"), ("p95_ms", "-"), ("p99_ms", ":")):
        ax.plot(t, [row[q] for row in tl], style, label=q.replace("_ms", ""))
    ax.axhline(r["slo"]["p95_ms"], color="tab:red", ls="--", label=f"SLO p95 {r['slo']['p95_ms']:g} ms")
    ax.set_ylabel("latency (ms), per second")
    ax.set_title(f"{r['name']}: latency over time")
    shade(ax)
    ax.legend(loc="upper left", fontsize=8)
    out["latency over time"] = _save(fig, report_dir / "latency.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, [row["throughput_rps"] for row in tl], label="requests/s (ok)")
    ax.plot(t, [row["inferences_per_s"] for row in tl], label="inferences/s (ok)")
    ax.plot(t, [row["failures"] for row in tl], color="tab:red", label="failures/s")
    ax.set_ylabel("per second")
    ax.set_title(f"{r['name']}: throughput")
    shade(ax)
    ax.legend(loc="upper left", fontsize=8)
    out["throughput"] = _save(fig, report_dir / "throughput.png")

    srv = r["server"]
    if srv.get("scraped"):
        fig, ax = plt.subplots(figsize=(9, 4))
        for model, rows in srv["timeline"].items():
            if model == r["model"] or not rows:
                continue
            ts = [x["t_s"] for x in rows]
            line = ax.plot(ts, [x["avg_compute_ms"] for x in rows], label=f"{model} compute")[0]
            ax.plot(
                ts, [x["avg_queue_ms"] for x in rows], ls="--", color=line.get_color(), label=f"{model} queue"
            )
        ax.set_ylabel("mean ms per request, per scrape")
        ax.set_title("Triton: queue vs compute per step")
        shade(ax)
        ax.legend(loc="upper left", fontsize=7)
        out["server queue vs compute"] = _save(fig, report_dir / "server.png")
    return out


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
