"""Triton's own per-model statistics, read once they have settled."""

from __future__ import annotations

import time


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
