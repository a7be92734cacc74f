"""The core install (no extras) is enough for the thin client, and pulls in nothing heavy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a source distribution of cvserve holds; the copy keeps the build out of the shared tree.
SOURCES = ("pyproject.toml", "README.md", "cvserve", "builders", "client", "loadtests", "model_repository")

CHECK = """
import importlib.util, sys
import cvserve.client
from cvserve.client import AsyncClient, Client
Client("127.0.0.1:1").close()
heavy = [m for m in ("torch", "onnx", "onnxruntime", "locust", "PIL", "prometheus_client") if importlib.util.find_spec(m)]
assert not heavy, f"installed by the core install: {heavy}"
print("core install ok", cvserve.client.__file__)
"""


@pytest.mark.slow
def test_core_install_imports_the_client_without_heavy_dependencies(tmp_path):
    start = time.monotonic()
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if name == "model_repository":  # its sub-folders are built models, not sources
            (src / name).mkdir()
            for f in path.iterdir():
                if f.is_file():
                    shutil.copy(f, src / name / f.name)
        elif path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.exists():
            shutil.copy(path, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("cvserve\n")  # pyproject names it; not every checkout has it yet
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # no system site-packages
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(src)],
        check=True,
        timeout=240,
    )
    out = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "core install ok" in out.stdout and str(venv) in out.stdout
    print(f"\ncore install + import check: {time.monotonic() - start:.0f} s")
