"""Assemble a runnable Triton Inference Server from the binary shipped in the nvidia-pytriton wheel.

The wheel carries ``pytriton/tritonserver/`` (tritonserver 2.51 with the python backend), one
python-backend stub per Python version, and the shared libraries in ``nvidia_pytriton.libs``. Triton
needs the stub that matches the running Python inside ``backends/python/``; site-packages is read-only
by policy, so the runtime is copied once into a writable cache directory and reused.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cvserve.errors import MissingDependencyError, NotFoundError

_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True, kw_only=True)
class TritonRuntime:
    """Paths of an assembled embedded Triton."""

    binary: Path
    backend_dir: Path
    lib_dir: Path
    version: str

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment the server runs in.

        The python-backend stub embeds Python and finds packages through the first ``python3`` on
        ``PATH``; putting this interpreter's ``bin/`` first makes the stub import the same virtual
        environment (numpy, onnxruntime, Pillow) as cvserve itself.
        """
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libs = [str(self.lib_dir)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        # Keep the stubs from writing bytecode into model directories (Triton would see __pycache__).
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env


def cache_dir() -> Path:
    """Writable home of assembled runtimes: ``$CVSERVE_CACHE_DIR`` or ``~/.cache/cvserve``."""
    root = os.environ.get("CVSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cvserve"
    )
    return Path(root)


def _wheel_dirs() -> tuple[Path, Path, str]:
    try:
        import pytriton
    except ImportError:
        raise MissingDependencyError(
            "the embedded Triton server ships in nvidia-pytriton, which is not installed: "
            "pip install 'cvserve[serve]'"
        ) from None
    pkg = Path(pytriton.__file__).resolve().parent
    src = pkg / "tritonserver"
    libs = pkg.parent / "nvidia_pytriton.libs"
    try:
        from importlib.metadata import version

        ver = version("nvidia-pytriton")
    except Exception:
        ver = "unknown"
    if not (src / "bin" / "tritonserver").exists():
        raise NotFoundError(f"no tritonserver binary in {src}: reinstall with pip install 'cvserve[serve]'")
    return src, libs, ver


def ensure_runtime(target: Path | None = None) -> TritonRuntime:
    """Return an assembled runtime, copying it into the cache on first use (atomically)."""
    src, libs, ver = _wheel_dirs()
    stub = src / "python_backend_stubs" / _PY / "triton_python_backend_stub"
    if not stub.exists():
        have = sorted(p.name for p in (src / "python_backend_stubs").iterdir())
        raise NotFoundError(
            f"nvidia-pytriton {ver} has no python-backend stub for Python {_PY} (it has {', '.join(have)}): "
            "run cvserve with one of those Python versions"
        )
    dest = target or cache_dir() / f"tritonserver-pytriton{ver}-py{_PY}"
    marker = dest / ".complete"
    if not marker.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".assembling-", dir=dest.parent))
        try:
            shutil.copytree(src / "bin", tmp / "bin")
            shutil.copytree(src / "backends", tmp / "backends", ignore=shutil.ignore_patterns("__pycache__"))
            if (src / "caches").exists():
                shutil.copytree(src / "caches", tmp / "caches")
            shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
            (tmp / ".complete").write_text(f"{ver} py{_PY}\n")
            if dest.exists():  # a half-assembled leftover from an interrupted run
                shutil.rmtree(dest)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not marker.exists():  # someone else won the race only if they completed it
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return TritonRuntime(
        binary=dest / "bin" / "tritonserver", backend_dir=dest / "backends", lib_dir=libs, version=ver
    )
