"""Waiting on observable state instead of sleeping: any condition (:func:`wait_for`), Triton's own
per-model statistics once they have settled, and Triton's count of requests waiting in a queue."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.25) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)  # a poll interval, not a wait for the state itself


def settled_stats(url: str, model: str, *, at_least: int | None = None, timeout: float = 10.0) -> dict:
    """``model``'s statistics (Triton's JSON ``model_stats`` entry) once its counters stop moving.

    Triton records a request's statistics just after answering it, so a client can hold every response
    while the last batch is still uncounted (CI once read 7 of 16). This waits (up to ``timeout``) until
    the counts are the same twice, 0.1 s apart, and at least ``at_least`` requests have succeeded.
    """
    import tritonclient.grpc as triton

    def counts(stats: dict) -> tuple[int, int, int]:
        success = int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))
        return success, int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    deadline = time.monotonic() + timeout
    with triton.InferenceServerClient(url) as client:
        last = None
        while True:
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
            now = counts(stats)
            # Settled: the same twice (a request's counts and its execution's are reported separately),
            # and, with at_least, enough requests counted.
            if now == last and (at_least is None or now[0] >= at_least):
                return stats
            if time.monotonic() > deadline:
                return stats
            last = now
            time.sleep(0.1)


def requests_served(url: str, model: str, *, at_least: int | None = None) -> int:
    """How many inference requests ``model`` has answered successfully (see settled_stats)."""
    stats = settled_stats(url, model, at_least=at_least)
    return int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))


def pending_requests(metrics_url: str, *models: str) -> int:
    """Requests that ``models`` (every model if none) have queued and not yet started executing: Triton's
    ``nv_inference_pending_request_count`` gauge on its metrics endpoint (``metrics_url``, ending /metrics)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    total = 0
    for match in re.finditer(
        r'^nv_inference_pending_request_count\{model="([^"]+)",[^}]*\} (\S+)$', text, re.M
    ):
        if not models or match.group(1) in models:
            total += int(float(match.group(2)))
    return total
