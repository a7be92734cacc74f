"""Write the report: report.json, report.md and its matplotlib plots (Locust's CSVs are written by Locust)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvserve._extras import require


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


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}{unit}" if abs(v) < 0.01 else f"{v:,.2f}{unit}"
    return f"{v}{unit}"


def markdown(r: dict, images: dict[str, str]) -> str:
    verdict = "PASS" if r["gates_passed"] else "FAIL: " + ", ".join(r["failed_gates"])
    w = r["window"]
    lines = [
        f"# Load test {r['name']}: {verdict}",
        "",
        f"{r['scenario']} scenario against `{r['model']}` at `{r['url']}`, {r['users']} users, "
        f"{r['images_per_request']} image(s) per request, started {r['started_at']}. Measured window "
        f"{w['start_s']:g}-{w['end_s']:g} s after the start ({w['warmup_s']:g} s warm-up excluded).",
        "",
        "## Gates",
        "",
        "| gate | value | threshold | result |",
        "|---|---|---|---|",
    ]
    for name, g in r["gates"].items():
        lines.append(
            f"| {name} | {_fmt(g['value'])} | {g['op']} {_fmt(g['threshold'])} | {'pass' if g['passed'] else '**FAIL**'} |"
        )
    price = r.get("price") or {}
    cost = "n/a" if r["cost_per_1k_usd"] is None else f"${r['cost_per_1k_usd']:.4f}"
    lines += [
        "",
        "## Client-side figures (Locust)",
        "",
        "| p50 | p95 | p99 | mean | max | requests/s | inferences/s | requests | failures | error rate | cost / 1k inferences |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {_fmt(r['p50_ms'], ' ms')} | {_fmt(r['p95_ms'], ' ms')} | {_fmt(r['p99_ms'], ' ms')} | {_fmt(r['mean_ms'], ' ms')} "
        f"| {_fmt(r['max_ms'], ' ms')} | {_fmt(r['throughput_rps'])} | {_fmt(r['inferences_per_s'])} | {r['requests']} "
        f"| {r['failures']} | {_fmt(r['error_rate'])} | {cost} |",
        "",
    ]
    if price:
        lines.append(
            f"Cost: ${price['per_hour']:g}/hour x {r['replicas']} replica(s) / ({_fmt(r['inferences_per_s'])} inferences/s x 3600) x 1000; "
            f"price from {price['source']}{' (' + price['date'] + ')' if price.get('date') else ''}."
        )
        lines.append("")
    lines += _ramp(r) + _spike(r) + _server(r)
    gen = r["generator"]
    lines += [
        "## Load generator",
        "",
        f"{gen['processes']} process(es); CPU mean {_fmt(gen['cpu_percent_mean'], '%')}, max {_fmt(gen['cpu_percent_max'], '%')} of a core; "
        f"ceiling {_fmt(gen['ceiling_rps'], ' req/s')} (this run: {_fmt(gen['fraction_of_ceiling'])} of it).",
        "",
    ]
    if r["warnings"]:
        lines += ["## Warnings", ""] + [f"- {x}" for x in r["warnings"]] + [""]
    if images:
        lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in images.items()] + [""]
    lines += [
        "## Files",
        "",
        "report.json; Locust's CSVs: "
        + ", ".join(r["files"]["locust_csv"])
        + "; per-request samples: samples.json.",
        "",
    ]
    return "\n".join(lines)


def _ramp(r: dict) -> list[str]:
    ramp = r.get("ramp")
    if not ramp:
        return []
    lines = [
        "## Ramp",
        "",
        f"Highest throughput that held p95 <= {r['slo']['p95_ms']:g} ms: **{_fmt(ramp['max_throughput_rps_under_slo'], ' req/s')}** "
        f"({_fmt(ramp['max_inferences_per_s_under_slo'], ' inferences/s')}) at {ramp['users_at_max'] or 'n/a'} users; "
        f"first step over the SLO: {ramp['first_step_over_slo'] or 'none'}.",
        "",
        "| step | users | req/s | p50 | p95 | p99 | error rate | held SLO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in ramp["steps"]:
        if not s["ran"]:
            lines.append(f"| {s['step']} | {s['users']} | not run (stopped after the SLO broke) | | | | | |")
            continue
        lines.append(
            f"| {s['step']} | {s['users']} | {_fmt(s['throughput_rps'])} | {_fmt(s['p50_ms'])} | {_fmt(s['p95_ms'])} "
            f"| {_fmt(s['p99_ms'])} | {_fmt(s['error_rate'])} | {'yes' if s['held_slo'] else 'no'} |"
        )
    return [*lines, ""]


def _spike(r: dict) -> list[str]:
    spike = r.get("spike")
    if not spike:
        return []
    lines = [
        "## Spike phases",
        "",
        "| phase | users | req/s | p50 | p95 | p99 | error rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in spike.items():
        lines.append(
            f"| {name} | {s['users']} | {_fmt(s['throughput_rps'])} | {_fmt(s['p50_ms'])} | {_fmt(s['p95_ms'])} | {_fmt(s['p99_ms'])} | {_fmt(s['error_rate'])} |"
        )
    return [*lines, ""]


def _server(r: dict) -> list[str]:
    srv = r["server"]
    if not srv.get("scraped"):
        return ["## Server (Triton metrics)", "", f"Not scraped: {srv.get('reason')}.", ""]
    b = srv["breakdown_ms"]
    lines = [
        "## Server (Triton metrics)",
        "",
        "Means per request over the window (Triton exports sums and counts, not percentiles).",
        "",
        "| model | requests | failures | avg batch | avg request | avg queue | avg compute (in / infer / out) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, f in srv["models"].items():
        lines.append(
            f"| {m} | {f['requests']} | {f['failures']} | {_fmt(f['avg_batch_size'])} | {_fmt(f['avg_request_ms'], ' ms')} "
            f"| {_fmt(f['avg_queue_ms'], ' ms')} | {_fmt(f['avg_compute_ms'], ' ms')} ({_fmt(f['avg_compute_input_ms'])} / "
            f"{_fmt(f['avg_compute_infer_ms'])} / {_fmt(f['avg_compute_output_ms'])}) |"
        )
    lines += [
        "",
        f"Per request, summed over the ensemble's steps: queue {_fmt(b['steps_avg_queue_ms'], ' ms')} + compute "
        f"{_fmt(b['steps_avg_compute_ms'], ' ms')} = {_fmt(b['queue_plus_compute_ms'], ' ms')}; the ensemble's own mean "
        f"request time {_fmt(b['ensemble_avg_request_ms'], ' ms')}; Locust's mean {_fmt(r['mean_ms'], ' ms')}, p95 {_fmt(r['p95_ms'], ' ms')}. "
        "The difference is time outside Triton's model steps: gRPC, (de)serialisation, the ensemble's scheduling, "
        "and the client (see docs/loadtests.md).",
        "",
    ]
    return lines


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
