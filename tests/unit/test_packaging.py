"""Packaging: one import namespace, heavy dependencies optional, every module importable with the core install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ALL = """
import importlib, importlib.util, pkgutil, sys
import cvserve
names = ["cvserve"] + [m.name for m in pkgutil.walk_packages(cvserve.__path__, "cvserve.")]
# python-backend models run inside Triton (triton_python_backend_utils); they are data for the builder
names = [n for n in names if not n.startswith("cvserve.model_repository") and n != "cvserve.__main__"]
from cvserve.errors import MissingDependencyError
# Only modules that *are* torch code may need their extra at import time, and then they must say so.
NEEDS_EXTRA = {"cvserve.builders.architectures.mobilenet", "cvserve.builders.architectures.resnet",
               "cvserve.builders.architectures.mtcnn",
               "cvserve.loadtests._locust", "cvserve.loadtests.users", "cvserve.loadtests.locustfile",
               "cvserve.loadtests.scenarios", "cvserve.loadtests.collector"}
for name in names:
    try:
        importlib.import_module(name)
    except MissingDependencyError as exc:
        assert name in NEEDS_EXTRA and "pip install 'cvserve[" in str(exc), (name, exc)
heavy = [m for m in ("torch", "onnx", "onnxruntime", "locust", "kubernetes", "PIL", "matplotlib", "prometheus_client") if importlib.util.find_spec(m)]
assert not heavy, f"the core install pulled in {heavy}"
loaded = [m for m in ("torch", "onnx", "onnxruntime", "locust", "kubernetes", "matplotlib") if m in sys.modules]
assert not loaded, loaded
from cvserve.client import Client
Client("127.0.0.1:1").close()
print(len(names), "modules imported")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    return next(out.glob("cvserve-*.whl"))


def test_wheel_has_exactly_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"cvserve"}
    for part in ("builders", "client", "loadtests", "model_repository", "server", "tune", "k8s", "release"):
        assert any(n.startswith(f"cvserve/{part}/") for n in names), part
    # the builder copies these into every built repository
    for f in ("classifier.py", "detector.py", "mtcnn.py", "preprocess.py", "Dockerfile"):
        assert f"cvserve/model_repository/{f}" in names
    assert "cvserve/builders/data/imagenet_classes.txt" in names
    assert "cvserve/loadtests/prices.toml" in names


def test_the_source_tree_maps_folders_onto_the_namespace():
    import cvserve.builders
    import cvserve.client
    import cvserve.loadtests

    assert Path(cvserve.builders.__file__).parent == ROOT / "builders"
    assert Path(cvserve.client.__file__).parent == ROOT / "client"
    assert Path(cvserve.loadtests.__file__).parent == ROOT / "loadtests"


@pytest.mark.slow
def test_core_install_imports_every_module_without_heavy_dependencies(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=300,
    )
    # From an empty folder, and from the repository root: no folder there may shadow the installed package.
    for cwd in (tmp_path, ROOT):
        out = subprocess.run([python, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=cwd, timeout=120)
        assert out.returncode == 0, (cwd, out.stderr)
        assert "modules imported" in out.stdout
        assert (
            "site-packages"
            in subprocess.run(
                [python, "-c", "import cvserve.client, cvserve.server; print(cvserve.server.__file__)"],
                capture_output=True,
                text=True,
                cwd=cwd,
                check=True,
                timeout=60,
            ).stdout
        )


def test_missing_extra_names_the_pip_command(monkeypatch):
    from cvserve._extras import require
    from cvserve.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "locust", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'cvserve\[loadtest\]'"):
        require("locust", purpose="to run load tests")


def test_importing_cvserve_imports_nothing_heavy():
    code = "import sys, cvserve, cvserve.cli; cvserve.cli.build_parser(); print(sorted(m for m in ('torch','onnx','onnxruntime','locust','kubernetes','matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_subcommand_is_registered():
    from cvserve.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"build", "rollback", "serve", "predict", "loadtest", "tune", "k8s"} <= set(sub.choices)
