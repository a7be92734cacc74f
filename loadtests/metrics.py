"""The server-side view: Triton's Prometheus endpoint scraped during a run, per model.

Counters are cumulative, so every figure is a difference between two scrapes: the one at the start of
the measured window and the one at its end. Per model (the ensemble and each of its steps):
requests, failures, the average batch the dynamic batcher formed (inferences / executions), and the
average time a request spent queued and computing (input, infer, output), which tells whether
latency is queueing or compute. Triton exports sums and counts, so these are means, not percentiles.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict

from cvserve._extras import require

# Triton metric -> short name used in the report.
COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}

Snapshot = dict[str, dict[str, float]]  # model -> short counter name -> value (summed over versions)


def parse(text: str) -> Snapshot:
    """Per-model counters from a Prometheus text exposition (summed over versions and failure reasons)."""
    parser = require("prometheus_client.parser", purpose="to read Triton's metrics")
    out: Snapshot = defaultdict(lambda: defaultdict(float))
    for family in parser.text_string_to_metric_families(text):
        key = COUNTERS.get(family.name)
        if key is None:
            continue
        for sample in family.samples:  # the parser names counter samples "<family>_total"
            model = sample.labels.get("model")
            if model and sample.name in (family.name, family.name + "_total"):
                out[model][key] += float(sample.value)
    return {m: dict(v) for m, v in out.items()}


NETWORK_INFO = "cvserve_network_info"  # exported by cvserve's python model (model_repository/classifier.py)


def network_info(url: str, model: str, timeout: float = 2.0) -> list[dict[str, str]] | None:
    """The served networks of ``model`` (its versions): runtime and float precision, read back in the
    server; ``None`` when the endpoint cannot be read or the model does not export them."""
    parser = require("prometheus_client.parser", purpose="to read Triton's metrics")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None
    found = [
        {k: sample.labels[k] for k in ("model", "version", "runtime", "precision") if k in sample.labels}
        for family in parser.text_string_to_metric_families(text)
        if family.name == NETWORK_INFO
        for sample in family.samples
        if sample.labels.get("model") == model
    ]
    return sorted(found, key=lambda d: d.get("version", "")) or None


def scrape(url: str, timeout: float = 2.0) -> Snapshot:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return parse(r.read().decode("utf-8", "replace"))


def model_figures(
    before: dict[str, float], after: dict[str, float], window_s: float
) -> dict[str, float | None]:
    """What one model did between two snapshots."""

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok, execs = d("success"), d("executions")

    def per_request_ms(*keys: str) -> float | None:
        return round(sum(d(k) for k in keys) / ok / 1000.0, 3) if ok > 0 else None

    return {
        "requests": int(ok),
        "failures": int(d("failure")),
        "requests_per_s": round(ok / window_s, 3) if window_s > 0 else None,
        "inferences": int(d("inferences")),
        "executions": int(execs),
        "avg_batch_size": round(d("inferences") / execs, 3) if execs > 0 else None,
        "avg_request_ms": per_request_ms("request_us"),
        "avg_queue_ms": per_request_ms("queue_us"),
        "avg_compute_input_ms": per_request_ms("compute_input_us"),
        "avg_compute_infer_ms": per_request_ms("compute_infer_us"),
        "avg_compute_output_ms": per_request_ms("compute_output_us"),
        "avg_compute_ms": per_request_ms("compute_input_us", "compute_infer_us", "compute_output_us"),
    }


def window_figures(before: Snapshot, after: Snapshot, window_s: float, models: list[str]) -> dict[str, dict]:
    """:func:`model_figures` for each of ``models`` present in the snapshots."""
    return {m: model_figures(before.get(m, {}), after[m], window_s) for m in models if m in after}


class Scraper:
    """Scrapes ``url`` every ``interval_s`` seconds in a background thread (never more than ``max_s``)."""

    def __init__(self, url: str, interval_s: float = 1.0, max_s: float = 3600.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.max_s = max_s
        self.snapshots: list[tuple[float, Snapshot]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cvserve-metrics", daemon=True)

    def __enter__(self) -> Scraper:
        self.take()  # the baseline; a failing endpoint is reported in the report, not fatal
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.take()

    def take(self) -> None:
        try:
            self.snapshots.append((time.time(), scrape(self.url)))
        except (urllib.error.URLError, OSError, ValueError) as e:
            self.errors.append(f"{self.url}: {getattr(e, 'reason', e)}")

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.wait(self.interval_s) and time.monotonic() < deadline:
            self.take()

    def at(self, t: float, *, after: bool) -> tuple[float, Snapshot] | None:
        """The last snapshot at or before ``t`` (``after=False``) or the first at or after it."""
        if not self.snapshots:
            return None
        if after:
            later = [s for s in self.snapshots if s[0] >= t]
            return later[0] if later else self.snapshots[-1]
        earlier = [s for s in self.snapshots if s[0] <= t]
        return earlier[-1] if earlier else self.snapshots[0]

    def timeline(self, model: str, t0: float) -> list[dict]:
        """Per scrape interval: the model's requests/s, average queue and compute ms (for the plots)."""
        rows = []
        for (ta, a), (tb, b) in zip(self.snapshots, self.snapshots[1:], strict=False):
            if model in b and tb > ta:
                f = model_figures(a.get(model, {}), b[model], tb - ta)
                rows.append({"t_s": round(tb - t0, 3), **f})
        return rows
