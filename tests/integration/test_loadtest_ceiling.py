"""The load generator's ceiling, measured against the generated no-op python-backend model (real Triton)."""

from __future__ import annotations

from cvserve.loadtests import ceiling


def test_noop_model_ceiling_is_measured_without_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # save=False must not write; keep the real cache out
    result = ceiling.measure(duration_s=3.0, users=4, warmup_s=1.0, save=False)
    assert result["rps"] > 0 and result["error_rate"] == 0.0 and result["cpus"] >= 1
    assert not ceiling.cache_path().exists()
