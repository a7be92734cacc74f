"""Fixtures shared by several unit test modules."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """The Helm chart's objects for every ci/ scenario, rendered once (tests/unit/_chart.py)."""
    from tests.unit import _chart  # skips the test where helm-python-sdk is not installed

    return _chart.render_scenarios()
