"""Tuning outputs: tuning_report.json / .md, the throughput-vs-p95 plot, config.pbtxt changes, Helm values.

The Markdown and the Helm values are templates of :mod:`cvserve.reporting` (YAML through ``yaml.safe_dump``).

The config changes are the chosen candidate applied to the repository's own ``config.pbtxt`` files (or to
the configs the server reported, without ``--repository``), printed with ``text_format``. The Helm values
follow the chart's ``modelConfigOverrides`` schema (``max_batch_size`` and a complete ``dynamic_batching``
per model, its queue policy included); instance counts and thread parameters are not part of that
schema, so they are only in the config.pbtxt change.
"""

from __future__ import annotations

import difflib
import json
import shlex
from pathlib import Path

from google.protobuf import json_format, text_format

from cvserve.builders.scheduling import TUNE_REPORT_KEY
from cvserve.builders.triton_config import Batching
from cvserve.client.contract import PRECISION_PARAMETER
from cvserve.reporting import render, yaml_dump
from cvserve.tune.candidates import Candidate
from cvserve.tune.models import Pipeline
from cvserve.tune.search import SearchResult, Trial

BUILD_FLAGS_FILE = "build-flags.txt"

_HELM_BATCHING_KEYS = (
    "preferred_batch_size",
    "max_queue_delay_microseconds",
    "preserve_ordering",
    "default_queue_policy",
)
_INT64_KEYS = ("max_queue_delay_microseconds", "default_timeout_microseconds")  # JSON strings in protobuf


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


def config_changes(base: Pipeline, chosen: Candidate) -> dict[str, dict]:
    """Role -> {"before", "after", "diff"} texts for every model whose config changes."""
    after = base.apply(chosen)
    out = {}
    for role, cfg in base.configs.items():
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


def _ints(d: dict) -> dict:
    """protobuf's JSON writes int64 as strings: the chart's schema wants integers."""
    return {k: (_ints(v) if isinstance(v, dict) else int(v) if k in _INT64_KEYS else v) for k, v in d.items()}


def helm_overrides(base: Pipeline, chosen: Candidate) -> tuple[dict, list[str]]:
    """The chart's ``modelConfigOverrides`` for ``chosen``, and notes on what the chart cannot express."""
    after = base.apply(chosen)
    overrides, notes = {}, []
    for role, cfg in base.configs.items():
        new, entry = after[role], {}
        if new.max_batch_size != cfg.max_batch_size:
            entry["max_batch_size"] = new.max_batch_size
        if new.HasField("dynamic_batching") and new.dynamic_batching != cfg.dynamic_batching:
            db = json_format.MessageToDict(new.dynamic_batching, preserving_proto_field_name=True)
            entry["dynamic_batching"] = _ints({k: v for k, v in db.items() if k in _HELM_BATCHING_KEYS})
            entry["dynamic_batching"].setdefault("max_queue_delay_microseconds", 0)
        if entry:
            overrides[cfg.name] = entry
        old_n = sum(g.count for g in cfg.instance_group)
        new_n = sum(g.count for g in new.instance_group)
        if old_n != new_n:
            notes.append(f"{cfg.name}: instance_group count {old_n} -> {new_n} (config.pbtxt only)")
        for key in sorted(set(cfg.parameters) | set(new.parameters)):
            old_p = cfg.parameters[key].string_value if key in cfg.parameters else "(unset)"
            new_p = new.parameters[key].string_value if key in new.parameters else "(unset)"
            if old_p != new_p:
                notes.append(f"{cfg.name}: parameter {key} {old_p} -> {new_p} (config.pbtxt only)")
    return {"modelConfigOverrides": overrides}, notes


def build_report(result: SearchResult, *, settings: dict, base: Pipeline) -> dict:
    price = settings["price_per_hour"]
    from cvserve import hardware

    helm, notes = helm_overrides(base, result.best.candidate)
    network = base.configs[base.network_role]
    params = {k: v.string_value for k, v in network.parameters.items()}
    return {
        "settings": settings,
        # where the trials ran (the server's machine when tuned on localhost) and what ran there
        "machine": hardware.summary(),
        "network": {
            "model": network.name,
            "runtime": params.get("runtime") or network.backend or network.platform,
            "precision": params.get(PRECISION_PARAMETER, "-"),
        },
        "noise_relative_spread": result.noise,
        "win_margin": result.margin,
        "stopped_by": result.stopped_by,
        "elapsed_s": round(result.elapsed_s, 1),
        "meets_slo": result.best.feasible,
        "start": trial_row(result.start, price),
        "chosen": trial_row(result.best, price),
        "candidates": [trial_row(t, price) for t in result.trials],
        # the winner as the build's settings model: `cvserve build --from-tune` reads it, the flags say it
        TUNE_REPORT_KEY: result.best.candidate.as_dict(),
        "build_flags": Batching.of(
            result.best.candidate, base.roles, slo_p95_ms=settings["slo_p95_ms"]
        ).flags(),
        "config_changes": config_changes(base, result.best.candidate),
        "helm_values": helm,
        "helm_notes": notes,
    }


def render_markdown(report: dict) -> str:
    """tuning_report.md: ``templates/tune_report.md.j2``."""
    return render("tune_report.md.j2", r=report, helm_yaml=yaml_dump(report["helm_values"]))


def render_helm_values(report: dict) -> str:
    """helm-values.yaml: the chosen configuration as the chart's values (``yaml.safe_dump``)."""
    return render(
        "tune_helm_values.yaml.j2",
        model=report["settings"]["model"],
        notes=report["helm_notes"],
        values_yaml=yaml_dump(report["helm_values"]),
    )


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
    """Write tuning_report.json/.md, the plot, configs/<model>/config.pbtxt(+.diff), helm-values.yaml and
    build-flags.txt (the chosen settings as ``cvserve build`` flags)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        out_dir / "tuning_report.json",
        out_dir / "tuning_report.md",
        out_dir / "helm-values.yaml",
        out_dir / BUILD_FLAGS_FILE,
    ]
    written[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    written[1].write_text(render_markdown(report))
    written[2].write_text(render_helm_values(report))
    written[3].write_text(shlex.join(report["build_flags"]) + "\n")
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
