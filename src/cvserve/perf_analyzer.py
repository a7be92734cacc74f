"""Triton's own load generator, ``perf_analyzer``, assembled without root and run against a served model.

``perf_analyzer`` ships in the ``tritonclient`` 2.40 wheel (``tritonclient-2.40.0.data/data/bin``). It
needs two shared libraries the wheel does not carry: ``libb64.so.0d`` (Debian's ``libb64-0d``) and
``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12`` wheel; no GPU is needed). :func:`ensure` assembles
the three into a cache folder on first use, with the ordinary clients (``pip download``, ``apt-get
download``, ``dpkg -x``), and checks that the binary starts; :class:`PerfAnalyzerUnavailable` says what
was missing when it cannot. :func:`run` measures one model at one concurrency and parses the CSV.

BYTES input: ``--input-data`` JSON holds each element base64-encoded as Triton's wire format,
a 4-byte little-endian length followed by the bytes (:func:`write_input_data`).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cvserve.client import contract
from cvserve.errors import CvserveError

VERSION = "2.40.0"
_WHEEL_BINARY = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
_CUDART = "nvidia/cuda_runtime/lib/libcudart.so.12"
_B64 = "usr/lib/x86_64-linux-gnu/libb64.so.0d"
DIR_ENV = "CVSERVE_PERF_ANALYZER_DIR"


class PerfAnalyzerUnavailable(CvserveError):
    """perf_analyzer could not be assembled or does not start here; the message says why."""


def cache_dir() -> Path:
    """``$CVSERVE_PERF_ANALYZER_DIR``, else ``perf_analyzer-2.40.0`` in cvserve's cache folder."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    from cvserve.server.runtime import cache_dir as cvserve_cache

    return cvserve_cache() / f"perf_analyzer-{VERSION}"


@dataclass(frozen=True)
class PerfAnalyzer:
    """An assembled perf_analyzer: the binary and the folders of the libraries it loads."""

    binary: Path
    lib_dirs: tuple[Path, ...]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*map(str, self.lib_dirs), *([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])]
        )
        return env


def _layout(root: Path) -> PerfAnalyzer:
    return PerfAnalyzer(
        binary=root / _WHEEL_BINARY,
        lib_dirs=((root / _CUDART).parent, (root / "b64" / _B64).parent),
    )


def _run(cmd: Sequence[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerUnavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PerfAnalyzerUnavailable(f"{what} failed: {last[0]}")


def _extract(wheel_glob: str, downloads: Path, member: str, root: Path) -> None:
    wheels = sorted(downloads.glob(wheel_glob))
    if not wheels:
        raise PerfAnalyzerUnavailable(f"pip downloaded no {wheel_glob} into {downloads}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extract(member, root)
    (root / member).chmod(0o755)


def _assemble(root: Path, log: Callable[[str], None]) -> None:
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(downloads)]
    log(f"perf_analyzer: pip download tritonclient=={VERSION} (the wheel that ships perf_analyzer) ...")
    _run([*pip, f"tritonclient=={VERSION}"], root, f"pip download tritonclient=={VERSION}")
    _extract(f"tritonclient-{VERSION}-*.whl", downloads, _WHEEL_BINARY, root)
    log("perf_analyzer: pip download nvidia-cuda-runtime-cu12 (libcudart.so.12; no GPU is used) ...")
    _run([*pip, "nvidia-cuda-runtime-cu12"], root, "pip download nvidia-cuda-runtime-cu12")
    _extract("nvidia_cuda_runtime_cu12-*.whl", downloads, _CUDART, root)
    log("perf_analyzer: apt-get download libb64-0d + dpkg -x (libb64.so.0d, no root) ...")
    _run(["apt-get", "download", "libb64-0d"], downloads, "apt-get download libb64-0d")
    debs = sorted(downloads.glob("libb64-0d_*.deb"))
    if not debs:
        raise PerfAnalyzerUnavailable("apt-get download libb64-0d wrote no .deb")
    _run(["dpkg", "-x", str(debs[-1]), str(root / "b64")], root, "dpkg -x libb64-0d")
    shutil.rmtree(downloads, ignore_errors=True)


def ensure(log: Callable[[str], None] = print) -> PerfAnalyzer:
    """The assembled perf_analyzer, assembling it into :func:`cache_dir` on first use.

    Raises:
        PerfAnalyzerUnavailable: not Linux x86-64, a download or extraction failed (offline, no apt),
            or the binary does not start (its error is in the message).
    """
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise PerfAnalyzerUnavailable(
            f"perf_analyzer {VERSION} from the tritonclient wheel runs on Linux x86-64, not "
            f"{platform.system()} {platform.machine()}"
        )
    root = cache_dir()
    pa = _layout(root)
    if not (root / ".complete").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".perf_analyzer-", dir=root.parent))
        try:
            _assemble(tmp, log)
            (tmp / ".complete").write_text(f"perf_analyzer {VERSION}\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"perf_analyzer: assembled in {root}")
    try:
        check = subprocess.run(
            [str(pa.binary), "--version"], env=pa.environment(), capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerUnavailable(f"{pa.binary} does not start: {exc}") from None
    if "error while loading shared libraries" in check.stderr:
        raise PerfAnalyzerUnavailable(f"{pa.binary} does not start: {check.stderr.strip()}")
    return pa


def write_input_data(images: Sequence[bytes], path: Path, input_name: str = contract.IMAGE) -> Path:
    """perf_analyzer's ``--input-data`` JSON: one step per image, BYTES in Triton's wire format."""
    steps = [
        {input_name: {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode(), "shape": [1]}}
        for data in images
    ]
    path.write_text(json.dumps({"data": steps}))
    return path


@dataclass(frozen=True, kw_only=True)
class PerfResult:
    """One perf_analyzer measurement, or its error."""

    img_s: float | None
    p50_ms: float | None
    p95_ms: float | None
    requests: int | None
    wall_s: float
    cpu_s: float  # perf_analyzer's own user + system CPU time
    command: str
    error: str | None = None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or ["no output"])[-1]


def run(
    pa: PerfAnalyzer,
    *,
    url: str,
    model: str,
    concurrency: int,
    input_data: Path,
    seconds: float,
    workdir: Path,
) -> PerfResult:
    """Measure ``model`` at ``concurrency`` with synchronous gRPC requests over three windows.

    The windows are ``seconds / 3`` long and the stability check is made loose on purpose
    (``-s 1000``): on a shared machine perf_analyzer's default (three windows within 10 %) often never
    settles; the bench wants the average of three windows, as perf_analyzer reports it.
    """
    out_csv = workdir / f"pa-{model}-c{concurrency}.csv"
    out_csv.unlink(missing_ok=True)
    window_ms = max(1000, round(seconds * 1000 / 3))
    cmd = [
        str(pa.binary),
        *("-m", model, "-u", url, "-i", "grpc", "--input-data", str(input_data)),
        *("--concurrency-range", str(concurrency), "-p", str(window_ms), "-s", "1000", "-r", "5"),
        *("-f", str(out_csv)),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, env=pa.environment(), capture_output=True, text=True, timeout=seconds * 4 + 120
        )
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = -1, f"timed out after {exc.timeout:.0f} s"
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shown = " ".join(["perf_analyzer", *cmd[1:]])
    row = None
    if rc == 0 and out_csv.exists():
        with out_csv.open() as f:
            row = next(csv.DictReader(f), None)
    if row is None:
        return PerfResult(
            img_s=None, p50_ms=None, p95_ms=None, requests=None, wall_s=wall, cpu_s=cpu, command=shown,
            error=_last_line(output),
        )  # fmt: skip
    count = next((ln.split(":")[1] for ln in output.splitlines() if "Request count:" in ln), None)
    return PerfResult(
        img_s=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000,
        p95_ms=float(row["p95 latency"]) / 1000,
        requests=int(count) if count and count.strip().isdigit() else None,
        wall_s=wall,
        cpu_s=cpu,
        command=shown,
    )
