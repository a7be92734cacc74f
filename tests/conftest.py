"""Shared test set-up: each folder's tests get their marker (unit / integration) and a time limit.

Every test has a pytest-timeout limit: ``timeout`` in pyproject.toml (600 s, fixtures included) for the integration tests,
:data:`UNIT_TIMEOUT_S` for unit tests, or the test's own ``@pytest.mark.timeout(N)``. The limits stop a
hanging test; they are no statement about speed (no test asserts wall-clock time).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
UNIT_TIMEOUT_S = 120


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Unit tests first when both folders run in one process (`pytest tests`): the Helm chart tests load
    # Helm's Go runtime, which segfaulted when it was loaded after the integration tests in the same
    # process. `make test` runs the two folders as separate processes anyway.
    items.sort(key=lambda item: "integration" in Path(str(item.fspath)).resolve().relative_to(ROOT).parts[:1])
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(ROOT).parts
        if parts and parts[0] in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, parts[0]))
        if parts and parts[0] == "unit" and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


def pytest_sessionstart(session: pytest.Session) -> None:
    """The CPU's numerics features at the top of every run (also under ``-q``, as ``make test`` runs), so
    a CI log says what it covered: tests of bf16 run only where the CPU has it, and the f32 pinning is
    what the other CPUs check."""
    from cvserve import hardware

    cpu = hardware.cpu()
    bf16 = "bf16 tests run" if cpu.native_bf16 else "no native bf16: bf16 tests skip, refusals run"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"cvserve hardware: {cpu.summary()} ({bf16})")
