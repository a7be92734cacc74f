"""The chart's rendered objects, from a child process: Helm's Go runtime (helm-python-sdk) must not be
loaded into the integration tests' process (the Makefile says why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "cvserve"
_RENDER = """
import json, sys
import helm_python as helm
values, name, namespace = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with helm.Chart.load(sys.argv[4]) as chart:
    print(json.dumps(chart.render(values, name=name, namespace=namespace, is_install=True)))
"""


def render(values: dict[str, Any], name: str, namespace: str) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values`` for release ``name`` in ``namespace``."""
    out = subprocess.run(
        [sys.executable, "-c", _RENDER, json.dumps(values), name, namespace, str(CHART)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    manifests = json.loads(out.stdout)
    return [
        o
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for o in yaml.safe_load_all(text)
        if o
    ]
