"""Turn a run's samples and scrapes into the report: windows, figures, server view, cost, gates."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

from cvserve.loadtests import ceiling, schedule
from cvserve.loadtests.cost import Price, cost_per_1k
from cvserve.loadtests.stats import Summary, summarize, timeline, window

# Warn when the load generator runs this close to what it can do on this machine.
CEILING_WARN_FRACTION = 0.7
CPU_WARN_PERCENT = 80.0


def _held(s: Summary, slo_ms: float, max_error_rate: float) -> bool:
    return s.count > 0 and s.p95_ms is not None and s.p95_ms <= slo_ms and s.error_rate <= max_error_rate


def evaluation_window(
    scenario: str, stages: list[schedule.Stage], samples: list, t0: float, t_stop: float, st: dict
) -> tuple[float, float, dict]:
    """The window the gates judge (seconds since ``t0``) and the scenario's own section of the report."""
    end_cap = t_stop - t0
    if scenario == "ramp":
        steps = []
        for stage in (x for x in stages if x.label.startswith("step")):
            lo, hi = schedule.step_window(stage, st["warmup_s"])
            if lo >= end_cap:
                steps.append({"step": stage.label, "users": stage.users, "ran": False})
                continue
            hi = min(hi, end_cap)
            s = summarize(window(samples, t0 + lo, t0 + hi), hi - lo)
            held = _held(s, st["slo_p95_ms"], st["max_error_rate"])
            steps.append(
                {
                    "step": stage.label,
                    "users": stage.users,
                    "ran": True,
                    "held_slo": held,
                    **s.as_dict(),
                    "span_s": [lo, hi],
                }
            )
        held = [x for x in steps if x.get("held_slo")]
        best = (
            max(held, key=lambda x: x["throughput_rps"])
            if held
            else next((x for x in steps if x["ran"]), None)
        )
        section = {
            "steps": steps,
            "max_throughput_rps_under_slo": best["throughput_rps"] if held else None,
            "max_inferences_per_s_under_slo": best["inferences_per_s"] if held else None,
            "users_at_max": best["users"] if held else None,
            "first_step_over_slo": next((x["step"] for x in steps if x["ran"] and not x["held_slo"]), None),
        }
        lo, hi = best["span_s"] if best else (st["warmup_s"], end_cap)
        return lo, hi, {"ramp": section}
    lo = st["warmup_s"]
    hi = min(schedule.total_s(stages), end_cap)
    section: dict[str, Any] = {}
    if scenario == "spike":
        section["spike"] = {
            x.label: {
                "users": x.users,
                **summarize(
                    window(samples, t0 + x.start_s, t0 + min(x.end_s, end_cap)),
                    min(x.end_s, end_cap) - x.start_s,
                ).as_dict(),
            }
            for x in stages
            if x.label != "warmup" and x.start_s < end_cap
        }
    return lo, hi, section


def server_view(scraper: Any, model: str, t0: float, lo: float, hi: float) -> dict:
    """Per-model figures from the scrapes bracketing the window, and the queue/compute breakdown."""
    if scraper is None:
        return {"scraped": False, "reason": "no --metrics-url given"}
    a, b = scraper.at(t0 + lo, after=False), scraper.at(t0 + hi, after=True)
    if a is None or b is None or b[0] <= a[0]:
        return {"scraped": False, "reason": "; ".join(scraper.errors[:3]) or "no scrapes in the window"}
    from cvserve.loadtests.metrics import window_figures

    names = sorted(m for m in b[1] if m == model or m.startswith(model + "_"))
    models = window_figures(a[1], b[1], b[0] - a[0], names)
    # An ensemble's work is in its steps; the single layout's model does the work itself.
    steps = {m: f for m, f in models.items() if m != model} or {m: f for m, f in models.items() if m == model}
    queue = sum(f["avg_queue_ms"] or 0.0 for f in steps.values())
    compute = sum(f["avg_compute_ms"] or 0.0 for f in steps.values())
    ensemble = models.get(model, {})
    network = models.get(f"{model}_network") or ensemble
    return {
        "scraped": True,
        "url": scraper.url,
        "window_s": [round(a[0] - t0, 3), round(b[0] - t0, 3)],
        "models": models,
        "breakdown_ms": {
            "ensemble_avg_request_ms": ensemble.get("avg_request_ms"),
            "steps_avg_queue_ms": round(queue, 3),
            "steps_avg_compute_ms": round(compute, 3),
            "queue_plus_compute_ms": round(queue + compute, 3),
            "network_avg_batch_size": network.get("avg_batch_size"),
        },
        "errors": scraper.errors[:5],
        "timeline": {m: scraper.timeline(m, t0) for m in names},
    }


def generator_view(
    st: dict, meta: dict, t0: float, lo: float, hi: float, throughput: float
) -> tuple[dict, list[str]]:
    warnings = []
    known = (
        ceiling.known_ceiling()
        if st.get("generator_ceiling_rps") is None
        else {"rps": st["generator_ceiling_rps"], "source": "--generator-ceiling-rps"}
    )
    processes = max(int(st.get("workers") or 0), 1)
    cpu = [c[1] for c in meta.get("cpu", []) if t0 + lo <= c[0] <= t0 + hi]
    view: dict[str, Any] = {
        "processes": processes,
        "cpu_percent_max": max(cpu) if cpu else None,
        "cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
        "ceiling_rps": None,
        "fraction_of_ceiling": None,
    }
    if known and known.get("rps"):
        limit = known["rps"] * processes
        view |= {"ceiling_rps": limit, "ceiling": known, "fraction_of_ceiling": round(throughput / limit, 3)}
        if throughput > CEILING_WARN_FRACTION * limit:
            warnings.append(
                f"load generator near its ceiling: {throughput:.0f} req/s is {throughput / limit:.0%} of the "
                f"{limit:.0f} req/s it can drive here; figures may be the generator's, not the server's: "
                "add --workers or run workers on other machines"
            )
    else:
        view["ceiling"] = "not measured on this machine: python -m cvserve.loadtests.ceiling"
    if cpu and max(cpu) > CPU_WARN_PERCENT:
        warnings.append(
            f"a load generator process used up to {max(cpu):.0f}% of a CPU core; it may be the bottleneck: "
            "add --workers"
        )
    return view, warnings


def locust_totals(report_dir: Path) -> dict | None:
    """Locust's own aggregate row (whole run, warm-up included) from its CSV."""
    path = report_dir / "locust_stats.csv"
    if not path.exists():
        return None
    for row in csv.DictReader(path.open()):
        if row.get("Name") == "Aggregated":
            return {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
                "note": "whole run including warm-up; Locust rounds percentiles",
            }
    return None


def gates(st: dict, summary: Summary, cost: float | None) -> dict[str, dict]:
    p95 = summary.p95_ms
    out = {
        "p95_latency_ms": {
            "value": p95,
            "threshold": st["slo_p95_ms"],
            "op": "<=",
            "passed": p95 is not None and p95 <= st["slo_p95_ms"],
        },
        "error_rate": {
            "value": summary.error_rate,
            "threshold": st["max_error_rate"],
            "op": "<=",
            "passed": summary.count > 0 and summary.error_rate <= st["max_error_rate"],
        },
    }
    if st.get("min_throughput_rps") is not None:
        v = summary.throughput_rps
        out["throughput_rps"] = {
            "value": v,
            "threshold": st["min_throughput_rps"],
            "op": ">=",
            "passed": v >= st["min_throughput_rps"],
        }
    if st.get("max_cost_per_1k_usd") is not None:
        out["cost_per_1k_usd"] = {
            "value": cost,
            "threshold": st["max_cost_per_1k_usd"],
            "op": "<=",
            "passed": cost is not None and cost <= st["max_cost_per_1k_usd"],
        }
    return out


def build_report(
    *,
    settings: dict,
    stages: list,
    samples: list,
    meta: dict,
    scraper: Any,
    price: Price | None,
    started: float,
    report_dir: Path,
    task: str | None = None,
    payload: dict | None = None,
) -> dict:
    """The report dict (written to report.json); see docs/loadtests.md for every field.

    ``task`` is the served model's (the call each request made), ``payload`` what the requests carried
    (:func:`cvserve.loadtests.payloads.describe`)."""
    st = settings
    t0 = float(meta.get("test_start") or started)
    t_stop = float(meta.get("test_stop") or (samples[-1][0] if samples else t0))
    lo, hi, section = evaluation_window(st["scenario"], stages, samples, t0, t_stop, st)
    summary = summarize(window(samples, t0 + lo, t0 + hi), max(hi - lo, 0.0))
    cost = cost_per_1k(price.per_hour, st["replicas"], summary.inferences_per_s) if price else None
    g = gates(st, summary, cost)
    generator, warnings = generator_view(st, meta, t0, lo, hi, summary.throughput_rps)
    if price is None:
        warnings.append(
            "no price given (--price-per-hour or --instance-type): cost per 1k inferences not computed"
        )
    if st["scenario"] == "ramp" and not section["ramp"]["max_throughput_rps_under_slo"]:
        warnings.append(
            f"no ramp step held the SLO (p95 <= {st['slo_p95_ms']:g} ms); gates judge the first step"
        )
    server = server_view(scraper, st["model"], t0, lo, hi)
    if server.get("scraped") is False and st.get("metrics_url"):
        warnings.append(f"Triton metrics not scraped: {server['reason']}")
    failed = [name for name, gate in g.items() if not gate["passed"]]
    from cvserve import hardware
    from cvserve.loadtests.metrics import network_info

    return {
        "name": st.get("name") or st["model"],
        "model": st["model"],
        "url": st["url"],
        "scenario": st["scenario"],
        "task": task,
        "payload": payload,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "window": {
            "start_s": round(lo, 3),
            "end_s": round(hi, 3),
            "duration_s": round(hi - lo, 3),
            "warmup_s": st["warmup_s"],
        },
        "users": st["users"],
        "images_per_request": st["images_per_request"],
        "requests": summary.count,
        "failures": summary.failures,
        "p50_ms": summary.p50_ms,
        "p95_ms": summary.p95_ms,
        "p99_ms": summary.p99_ms,
        "mean_ms": summary.mean_ms,
        "max_ms": summary.max_ms,
        "throughput_rps": summary.throughput_rps,
        "inferences_per_s": summary.inferences_per_s,
        "error_rate": summary.error_rate,
        "price": price.as_dict() if price else None,
        "replicas": st["replicas"],
        "cost_per_1k_usd": round(cost, 6) if cost is not None else None,
        "slo": {"p95_ms": st["slo_p95_ms"], "met": g["p95_latency_ms"]["passed"]},
        "gates": g,
        "gates_passed": not failed,
        "failed_gates": failed,
        **section,
        "server": server,
        # the load generator's machine (the server's too when both run here, as in cvserve release)
        "machine": hardware.summary(),
        "network": network_info(st["metrics_url"], st["model"]) if st.get("metrics_url") else None,
        "generator": generator,
        "locust": locust_totals(report_dir),
        "warnings": warnings,
        "timeline": timeline(samples, t0),
        "stopped_after": meta.get("stopped_after"),
        "settings": st,
    }
