"""`cvserve serve` as a child process: started on free ports, watched, signalled, measured (the
reliability scenarios and the serving tests drive the real command this way)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cvserve.errors import TimeLimitError, TritonError
from cvserve.server.process import PORT_IN_USE, SHM_DIR, free_port, group_members, serving

PORT_TRIES = 3


class _PortTaken(Exception):
    """cvserve serve refused a port that was free when it was picked."""


class ServeProcess:
    """``python -m cvserve serve`` on free ports, with what the scenarios ask of it."""

    def __init__(self, repository: Path, *, args: list[str] = (), exit_timeout_s: int = 30) -> None:
        self.repository = Path(repository)
        self.extra_args = [*("--exit-timeout", str(exit_timeout_s)), *args]
        self._pick_ports()
        self.log_dir = Path(tempfile.mkdtemp(prefix="cvserve-reliability-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def _pick_ports(self) -> None:
        self.grpc_port, self.http_port, self.metrics_port, self.supervisor_port = (
            free_port() for _ in range(4)
        )

    @property
    def args(self) -> list[str]:
        """The arguments of ``cvserve serve``: the repository, the ports, then the caller's."""
        return [
            *("--repository", str(self.repository)),
            *("--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)),
            *("--metrics-port", str(self.metrics_port), "--supervisor-port", str(self.supervisor_port)),
            *self.extra_args,
        ]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 300.0) -> float:
        """Start and wait for readiness; seconds it took. A port that another process took since it was
        found free (the ports are picked from the ephemeral range, which outgoing connections on the
        machine also draw from) is picked again, up to ``PORT_TRIES`` times."""
        began = time.monotonic()
        for attempt in range(1, PORT_TRIES + 1):
            try:
                self._start(began + timeout_s)
                return time.monotonic() - began
            except _PortTaken:
                if attempt == PORT_TRIES:
                    raise TritonError(
                        f"cvserve serve found its ports taken {PORT_TRIES} times: {self.stderr()[-500:]}"
                    ) from None
                self._pick_ports()
        raise AssertionError("unreachable")

    def _start(self, deadline: float) -> None:
        with open(self.log_dir / "serve.out", "ab") as out, open(self.log_dir / "serve.err", "ab") as err:
            err_from = err.tell()  # what this start writes comes after it
            self.proc = subprocess.Popen(  # the child keeps its own copies of the two files
                [
                    sys.executable,
                    "-m",
                    "cvserve",
                    "serve",
                    *self.args,
                    "--log-file",
                    str(self.log_dir / "triton.log"),
                ],
                stdout=out,
                stderr=err,
            )
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = (self.log_dir / "serve.err").read_bytes()[err_from:].decode(errors="replace")
                if PORT_IN_USE in said:
                    raise _PortTaken
                raise TritonError(
                    f"cvserve serve exited with status {self.proc.returncode}: {self.stderr()[-500:]}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.kill()
        raise TimeLimitError(f"cvserve serve was not ready in time ({self.log_dir})")

    def ready(self) -> bool:
        return serving(self.http_url, f"http://127.0.0.1:{self.metrics_port}/metrics")

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        began = time.monotonic()
        while not self.ready():
            if time.monotonic() - began > timeout_s:
                raise TimeLimitError(f"the server was not ready again after {timeout_s:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - began

    def stderr(self) -> str:
        return (self.log_dir / "serve.err").read_text(errors="replace")

    # -- the processes ---------------------------------------------------------------------------
    def triton_pid(self) -> int | None:
        """The tritonserver process the supervisor runs now."""
        if self.proc is None:
            return None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = stat.read_text()
                fields = text[text.rfind(")") + 2 :].split()
                if int(fields[1]) == self.proc.pid and "(tritonserver)" in text and fields[0] != "Z":
                    return int(stat.parent.name)
        return None

    def rss_mb(self) -> float:
        """Memory of Triton and its python stubs (its process group), MB: the sum of their proportional
        set sizes (PSS), so that the shared-memory regions both map are counted once, not twice."""
        pid = self.triton_pid()
        if pid is None:
            return float("nan")
        total = 0
        for member in group_members(pid):
            with contextlib.suppress(OSError):
                m = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{member}/smaps_rollup").read_text(), re.M)
                total += int(m.group(1)) if m else 0
        return total / 1024

    def shm_regions(self) -> list[str]:
        """This supervisor's python-backend regions in /dev/shm (cvserve_<supervisor pid>_...)."""
        return sorted(p.name for p in SHM_DIR.glob(f"cvserve_{self.proc.pid}_*")) if self.proc else []

    def restarts(self) -> dict[str, int]:
        """The supervisor's restart counters, scraped from its /metrics."""
        url = f"http://127.0.0.1:{self.supervisor_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        return {m[0]: int(float(m[1])) for m in re.findall(r'restarts_total\{reason="(\w+)"\} (\S+)', text)}

    def load(self, model: str, timeout_s: float = 120.0) -> None:
        load_model(self.http_url, model, timeout_s)

    def ready_versions(self, model: str) -> list[str]:
        return ready_versions(self.http_url, model)

    # -- ending it ------------------------------------------------------------------------------
    def sigterm(self, timeout_s: float = 120.0) -> int:
        """SIGTERM the supervisor (as an orchestrator would) and wait: its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """Kill the supervisor and its server (test clean-up)."""
        pid = self.triton_pid()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for region in self.shm_regions():
            with contextlib.suppress(FileNotFoundError):
                (SHM_DIR / region).unlink()


def load_model(http_url: str, model: str, timeout_s: float = 120.0) -> None:
    """Explicit model control: (re)load ``model`` from the repository (returns when it is loaded)."""
    request = urllib.request.Request(
        f"{http_url}/v2/repository/models/{model}/load", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as r:
        r.read()


def ready_versions(http_url: str, model: str) -> list[str]:
    """The versions of ``model`` that are READY, from the repository index."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        index = json.loads(r.read())
    return sorted(e.get("version", "") for e in index if e.get("name") == model and e.get("state") == "READY")
