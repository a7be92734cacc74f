"""Tuning outputs: tuning_report.json / .md, the throughput-vs-p95 plot, config.pbtxt changes, Helm values.

The config changes are the chosen candidate applied to the repository's own ``config.pbtxt`` files (or to
the configs the server reported, without ``--repository``), printed with ``text_format``. The Helm values
follow the chart's ``modelConfigOverrides`` schema (``max_batch_size`` and a complete ``dynamic_batching``
per model); instance counts are not part of that schema, so they are only in the config.pbtxt change.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.tune.candidates import Candidate, apply_candidate
from cvserve.tune.search import SearchResult, Trial

_HELM_BATCHING_KEYS = ("preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering")


def trial_row(t: Trial, price_per_hour: float) -> dict:
    """One candidate as a flat dict (a row of the candidates table)."""
    m = t.summary
    return {
        "index": t.index,
        "phase": t.phase,
        "dimension": t.dimension,
        "candidate": t.candidate.as_dict(),
        "label": t.candidate.label(),
        "users": m.users if m else None,
        "p50_ms": m.p50_ms if m else None,
        "p95_ms": m.p95_ms if m else None,
        "p99_ms": m.p99_ms if m else None,
        "inferences_per_s": m.inferences_per_s if m else None,
        "error_rate": m.error_rate if m else None,
        "cost_per_1k_usd": t.cost_per_1k(price_per_hour) if m else None,
        "meets_slo": t.feasible,
        "repeats": len(t.repeats) or (1 if m else 0),
        "apply_s": round(t.apply_s, 2),
        "at_s": round(t.at_s, 1),
        "error": t.error,
        "runs": [r.as_dict() for r in t.runs + t.repeats[1:]],
    }


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(p95, throughput) points no other point beats on both (lower p95, higher throughput), by p95."""
    front: list[tuple[float, float]] = []
    for p95, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or tput > front[-1][1]:
            front.append((p95, tput))
    return front


def config_changes(base: dict[str, mc.ModelConfig], chosen: Candidate) -> dict[str, dict]:
    """Role -> {"before", "after", "diff"} texts for every model whose config changes."""
    after = apply_candidate(base, chosen)
    out = {}
    for role, cfg in base.items():
        old, new = text_format.MessageToString(cfg), text_format.MessageToString(after[role])
        if old != new:
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"a/{cfg.name}/config.pbtxt",
                f"b/{cfg.name}/config.pbtxt",
            )
            out[role] = {"model": cfg.name, "before": old, "after": new, "diff": "".join(diff)}
    return out


def helm_overrides(base: dict[str, mc.ModelConfig], chosen: Candidate) -> tuple[dict, list[str]]:
    """The chart's ``modelConfigOverrides`` for ``chosen``, and notes on what the chart cannot express."""
    after = apply_candidate(base, chosen)
    overrides, notes = {}, []
    for role, cfg in base.items():
        new, entry = after[role], {}
        if new.max_batch_size != cfg.max_batch_size:
            entry["max_batch_size"] = new.max_batch_size
        if new.HasField("dynamic_batching") and new.dynamic_batching != cfg.dynamic_batching:
            db = json_format.MessageToDict(new.dynamic_batching, preserving_proto_field_name=True)
            entry["dynamic_batching"] = {
                k: (int(v) if k == "max_queue_delay_microseconds" else v)
                for k, v in db.items()
                if k in _HELM_BATCHING_KEYS
            }
            entry["dynamic_batching"].setdefault("max_queue_delay_microseconds", 0)
        if entry:
            overrides[cfg.name] = entry
        old_n = sum(g.count for g in cfg.instance_group)
        new_n = sum(g.count for g in new.instance_group)
        if old_n != new_n:
            notes.append(f"{cfg.name}: instance_group count {old_n} -> {new_n} (config.pbtxt only)")
    return {"modelConfigOverrides": overrides}, notes


def to_yaml(value, indent: int = 0) -> str:
    """Minimal YAML for nested dicts of ints, bools, strings and lists of scalars."""
    pad, lines = "  " * indent, []
    for key, v in value.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{key}:" + (" {}" if not v else ""))
            if v:
                lines.append(to_yaml(v, indent + 1))
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [{', '.join(json.dumps(x) for x in v)}]")
        else:
            lines.append(f"{pad}{key}: {json.dumps(v)}")
    return "\n".join(lines)


def build_report(result: SearchResult, *, settings: dict, base: dict[str, mc.ModelConfig]) -> dict:
    price = settings["price_per_hour"]
    helm, notes = helm_overrides(base, result.best.candidate)
    return {
        "settings": settings,
        "noise_relative_spread": result.noise,
        "win_margin": result.margin,
        "stopped_by": result.stopped_by,
        "elapsed_s": round(result.elapsed_s, 1),
        "meets_slo": result.best.feasible,
        "start": trial_row(result.start, price),
        "chosen": trial_row(result.best, price),
        "candidates": [trial_row(t, price) for t in result.trials],
        "config_changes": config_changes(base, result.best.candidate),
        "helm_values": helm,
        "helm_notes": notes,
    }


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(report: dict) -> str:
    s, start, chosen = report["settings"], report["start"], report["chosen"]
    lines = [
        f"# Tuning report: {s['model']}",
        "",
        f"SLO p95 <= {s['slo_p95_ms']} ms, price ${s['price_per_hour']}/h, budget {s['budget_s']:.0f} s "
        f"(used {report['elapsed_s']} s, stopped: {report['stopped_by']}); batch bound {s['batch_bound']} "
        f"({s['batch_bound_source']}); run-to-run throughput spread {report['noise_relative_spread']:.1%}, "
        f"a win needs > {report['win_margin']:.1%}.",
        "",
        "| | configuration | users | p95 ms | inferences/s | cost per 1k | meets SLO |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("starting", start), ("chosen", chosen)):
        lines.append(
            f"| {name} | {r['label']} | {r['users']} | {_fmt(r['p95_ms'], '.1f')} | "
            f"{_fmt(r['inferences_per_s'], '.1f')} | ${_fmt(r['cost_per_1k_usd'], '.5f')} | {r['meets_slo']} |"
        )
    lines += [
        "",
        "![throughput against p95](tuning_pareto.png)",
        "",
        "## Candidates",
        "",
        "| # | phase | knob | configuration | users | p95 ms | inferences/s | cost per 1k | SLO | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["candidates"]:
        lines.append(
            f"| {r['index']} | {r['phase']} | {r['dimension'] or '-'} | {r['label']} | {r['users'] or '-'} | "
            f"{_fmt(r['p95_ms'], '.1f')} | {_fmt(r['inferences_per_s'], '.1f')} | "
            f"${_fmt(r['cost_per_1k_usd'], '.5f')} | {'yes' if r['meets_slo'] else 'no'} | {r['repeats']} |"
        )
    lines += ["", "## config.pbtxt changes", ""]
    changes = report["config_changes"]
    lines += [f"```diff\n{c['diff']}```" for c in changes.values()] or [
        "No change: keep the starting configuration."
    ]
    lines += ["", "## Helm values", "", "```yaml", to_yaml(report["helm_values"]), "```"]
    lines += [f"- {n}" for n in report["helm_notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Throughput against p95 for every load run and candidate, with the Pareto front and the SLO."""
    from cvserve._extras import require

    require("matplotlib", purpose="to plot the tuning report")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def xy(points):
        return [p[0] for p in points], [p[1] for p in points]

    fig, ax = plt.subplots(figsize=(8, 5))
    runs = [(r["p95_ms"], r["inferences_per_s"]) for c in report["candidates"] for r in c["runs"]]
    if runs:
        ax.scatter(*xy(runs), s=12, c="lightgray", label="load runs")
    cands = [c for c in report["candidates"] if c["p95_ms"] is not None]
    ok = [(c["p95_ms"], c["inferences_per_s"]) for c in cands if c["meets_slo"]]
    bad = [(c["p95_ms"], c["inferences_per_s"]) for c in cands if not c["meets_slo"]]
    if ok:
        ax.scatter(*xy(ok), s=30, c="tab:blue", label="candidates (meet SLO)")
    if bad:
        ax.scatter(*xy(bad), s=30, c="tab:red", marker="x", label="candidates (miss SLO)")
    front = pareto_front([(c["p95_ms"], c["inferences_per_s"]) for c in cands])
    if front:
        ax.plot(*xy(front), "-", c="tab:green", drawstyle="steps-post", label="Pareto front")
    for key, style, size, color in (("start", "s", 110, "black"), ("chosen", "*", 220, "gold")):
        r = report[key]
        if r["p95_ms"] is not None:
            ax.scatter(
                [r["p95_ms"]],
                [r["inferences_per_s"]],
                s=size,
                marker=style,
                c=color,
                edgecolors="black",
                label=key,
            )
    ax.axvline(report["settings"]["slo_p95_ms"], ls="--", c="gray", label="p95 SLO")
    ax.set(
        xlabel="p95 latency (ms)",
        ylabel="inferences / s",
        title=f"cvserve tune {report['settings']['model']}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """Write tuning_report.json/.md, the plot, configs/<model>/config.pbtxt(+.diff), helm-values.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "tuning_report.json", out_dir / "tuning_report.md", out_dir / "helm-values.yaml"]
    written[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    written[1].write_text(render_markdown(report))
    notes = "".join(f"# {n}\n" for n in report["helm_notes"])
    written[2].write_text(
        f"# cvserve tune {report['settings']['model']}: chosen configuration\n{notes}"
        f"{to_yaml(report['helm_values'])}\n"
    )
    for change in report["config_changes"].values():
        d = out_dir / "configs" / change["model"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.pbtxt").write_text(change["after"])
        (d / "config.pbtxt.diff").write_text(change["diff"])
        written.append(d / "config.pbtxt")
    if plots:
        plot(report, out_dir / "tuning_pareto.png")
        written.append(out_dir / "tuning_pareto.png")
    return written
