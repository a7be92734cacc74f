"""Run the embedded Triton Inference Server as a child process: start, wait for readiness, stop, clean up.

Every server gets its own process group (Triton and its python-backend stubs) and its own prefix for
the python backend's shared-memory regions in ``/dev/shm``. Whatever way it ends (a graceful stop, a
kill, a crash), :meth:`TritonServer.cleanup` kills what is left of the group and removes the regions
with that prefix, so a stub or a region never outlives its server. Linux only (``/proc``, ``/dev/shm``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import NotFoundError, TimeLimitError, TritonError, UserInputError
from cvserve.hardware import CPUS_ENV  # read by the served models (cvserve.hardware.available_cpus)
from cvserve.server.restricted import MODES as RESTRICT_MODES
from cvserve.server.restricted import RestrictedApi, restricted_api
from cvserve.server.runtime import ensure_runtime
from cvserve.settings import model_names_setting, setting

CONTROL_MODES = ("none", "explicit", "poll")
SHM_DIR = Path("/dev/shm")
# glibc's malloc, for tritonserver and its stubs (TritonServer.environment; it helps the stubs, see
# there): allocations above the mmap
# threshold are mmap()ed and returned when freed; the heap is trimmed above the trim threshold (twice the
# mmap threshold, glibc's own rule when it moves the threshold itself).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 4 << 20, "MALLOC_TRIM_THRESHOLD_": 8 << 20}


@dataclass(kw_only=True)
class ServerSettings:
    """How to run the server. Ports of 0 pick free ones."""

    repository: Path = setting(DEFAULT_REPOSITORY, short="-r", help="the model repository")
    grpc_port: int = setting(8001, help="gRPC port (0 picks a free one)", at_least=0)
    http_port: int = setting(8000, help="HTTP port (0 picks a free one)", at_least=0)
    metrics_port: int = setting(8002, help="Prometheus metrics port (0 picks a free one)", at_least=0)
    host: str = setting(
        "127.0.0.1", help="address to bind; anything but loopback applies the restricted API groups"
    )
    model_control_mode: str = setting(
        "none",
        choices=CONTROL_MODES,
        help="none: load every model at start; explicit: load/unload through the API (see --load-model)",
    )
    load_models: list[str] = model_names_setting("--load-model", "explicit mode: load at start")
    log_verbose: int = setting(0, help="Triton's log verbosity (0-3)", at_least=0, at_most=3)
    exit_timeout_s: int = setting(
        30, flag="--exit-timeout", help="seconds in-flight requests get to finish at shutdown", at_least=0
    )
    cpus: int | None = setting(
        None,
        help=f"cores the served models may use (sets ${CPUS_ENV}; default: the CPU affinity and cgroup quota)",
        at_least=1,
    )
    restrict_api: str = setting(
        "auto",
        choices=RESTRICT_MODES,
        help="require a key for model control, shared memory, statistics, trace and logging; "
        "auto: unless --host is a loopback address",
    )
    extra_args: list[str] = setting(default_factory=list, cli=False)  # more tritonserver flags

    @classmethod
    def embedded(
        cls, repository: Path, *, load_models: list[str] | None = None, **settings
    ) -> ServerSettings:
        """A server a tool starts for itself on ``repository``: free ports, on loopback; with
        ``load_models``, explicit model control loading those at start."""
        if load_models is not None:
            settings = {"model_control_mode": "explicit", "load_models": list(load_models), **settings}
        return cls(repository=Path(repository), grpc_port=0, http_port=0, metrics_port=0, **settings)


def _answers(url: str, timeout_s: float) -> bool:
    """Whether ``url`` answers 200 (unreachable: no)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def http_ready(http_url: str, timeout_s: float = 1.0) -> bool:
    """Whether the server at ``http_url`` answers ``/v2/health/ready`` with 200 (unreachable: not ready)."""
    return _answers(f"{http_url}/v2/health/ready", timeout_s)


def serving(http_url: str, metrics_url: str, timeout_s: float = 1.0) -> bool:
    """Ready on every endpoint: Triton starts its metrics service after HTTP answers ready, so a
    scrape straight after ``/v2/health/ready`` can be refused; ready means both answer."""
    return http_ready(http_url, timeout_s) and _answers(metrics_url, timeout_s)


PORT_IN_USE = "is already in use"  # what start() says of a port it cannot bind (ServeProcess picks again)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0" if host in ("0.0.0.0", "") else host, port))
        except OSError:
            return True
    return False


def check_repository(repository: Path, mode: str) -> list[str]:
    """Validate the repository layout before Triton sees it; return the model names found.

    Triton treats every sub-directory as a model, so a stray folder (``__pycache__``, an editor's
    backup) makes a ``none``-mode server refuse to start. Say so up front, naming it.
    """
    if not repository.is_dir():
        raise NotFoundError(
            f"model repository {repository} does not exist: build a model first (cvserve build)"
        )
    models, stray = [], []
    for entry in sorted(repository.iterdir()):
        if not entry.is_dir():
            continue
        (models if (entry / "config.pbtxt").exists() else stray).append(entry.name)
    if stray and mode != "explicit":
        raise UserInputError(
            f"{repository} has folders that are not models (no config.pbtxt): {', '.join(stray)}; "
            "remove them, or serve with --model-control-mode explicit"
        )
    return models


# Error lines every CPU-only start logs: never the reason for anything.
_LOG_NOISE = ("CudaDriverHelper has not been initialized",)
_LOAD_ERROR = re.compile(r"failed to load '([^']+)'.*?: (.*)$")


class TritonServer:
    """The embedded Triton server as a managed child process.

    Example:
        >>> with TritonServer(ServerSettings(repository=Path("model_repository"), grpc_port=0)) as srv:
        ...     print(srv.grpc_url)
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        log_path: Path | None = None,
        restricted: RestrictedApi | str | None = "auto",
    ) -> None:
        self.settings = settings
        if settings.model_control_mode not in CONTROL_MODES:
            raise UserInputError(
                f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, "
                f"not {settings.model_control_mode!r}"
            )
        s = settings
        self.grpc_port = s.grpc_port or free_port(s.host)
        self.http_port = s.http_port or free_port(s.host)
        self.metrics_port = s.metrics_port or free_port(s.host)
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="cvserve-triton-", suffix=".log")[1])
        # "auto": decided from the settings; a supervisor passes the one it made, so restarts keep the key.
        self.restricted = restricted_api(s.restrict_api, s.host) if restricted == "auto" else restricted
        # The python backend names its regions PREFIX + uuid: this prefix is this server's alone.
        self.shm_prefix = f"cvserve_{os.getpid()}_{secrets.token_hex(4)}_"
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.ready_after_s: float | None = None

    # -- addresses -----------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle -----------------------------------------------------------------------------
    def command(self) -> list[str]:
        s = self.settings
        rt = ensure_runtime()
        self._runtime = rt
        args = [
            str(rt.binary),
            f"--model-repository={Path(s.repository).resolve()}",
            f"--backend-directory={rt.backend_dir}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-address={s.host}",
            f"--http-address={s.host}",
            f"--metrics-address={s.host}",
            f"--model-control-mode={s.model_control_mode}",
            f"--log-verbose={s.log_verbose}",
            f"--exit-timeout-secs={s.exit_timeout_s}",
            "--allow-metrics=true",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if shutil.which("nvidia-smi") is None:
            args.append("--allow-gpu-metrics=false")
        if self.restricted is not None:
            args += self.restricted.flags()
        args += [f"--load-model={m}" for m in s.load_models]
        return args + list(s.extra_args)

    def environment(self) -> dict[str, str]:
        env = self._runtime.environment()
        # glibc keeps freed large buffers in the heap once it has raised its mmap threshold, so every
        # 20 MiB request (the largest image the models accept, or a hostile one) left the server's
        # processes bigger: R1 (make reliability, tritonserver and its stubs) grew by 141 MB. A fixed
        # 4 MiB threshold returns such buffers when freed: +48-52 MB. The gain is the python stubs':
        # each gives its anonymous memory back (tests/integration/test_serving.py fails without it),
        # while tritonserver's own process grew about 250 MB over 24 such requests with or without it
        # (measured 2026-12-06). Ordinary requests (150 KB photos, batch tensors up to 2.4 MB) stay
        # below it. The caller's own settings win. docs/benchmarks.md, "Reliability".
        for key, value in MALLOC_ENV.items():
            env.setdefault(key, str(value))
        if self.settings.cpus:
            env[CPUS_ENV] = str(self.settings.cpus)
        return env

    def start(self) -> TritonServer:
        s = self.settings
        check_repository(Path(s.repository), s.model_control_mode)
        for name, port in (
            ("grpc", self.grpc_port),
            ("http", self.http_port),
            ("metrics", self.metrics_port),
        ):
            if _port_in_use(s.host, port):
                raise UserInputError(
                    f"port {port} ({name}) {PORT_IN_USE}: pass --{name}-port with a free port"
                )
        cmd = self.command()
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.returncode = None
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            # Its own session and process group (Triton and its stubs): Ctrl-C in a terminal reaches us
            # only, we forward it deliberately, and cleanup() can end the whole group.
            start_new_session=True,
        )
        self._pgid = self._proc.pid
        return self

    def is_ready(self) -> bool:
        return serving(self.http_url, self.metrics_url)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll until ready (:func:`serving`); return seconds from start. Raise with Triton's reason."""
        assert self._proc is not None and self.started_at is not None, "start() first"
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TritonError(self._failure_message(f"Triton exited with status {self._proc.returncode}"))
            if self.is_ready():
                self.ready_after_s = time.monotonic() - self.started_at
                return self.ready_after_s
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        self.stop()
        raise TimeLimitError(self._failure_message(f"Triton was not ready after {timeout:.0f} s"))

    def stop(self, timeout: float | None = None) -> int | None:
        """Ask Triton to shut down gracefully (SIGTERM: in-flight requests finish), wait, clean up.

        Triton exits 1 when requests were still in flight after ``exit_timeout_s`` (see
        :meth:`drain_failure`). It is killed if it has not exited ``timeout`` seconds after the signal
        (default: the exit timeout plus 10 s). Returns its exit status.
        """
        proc = self._proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout if timeout is not None else self.settings.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return self._finish()

    def kill(self) -> int | None:
        """Kill Triton at once (SIGKILL), then clean up what it leaves; its exit status."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait()
        return self._finish()

    def _finish(self) -> int | None:
        proc = self._proc
        if proc is None:
            return self.returncode
        self.returncode = proc.returncode
        self._proc = None
        self.cleanup()
        self._log.close()
        if self._own_log and proc.returncode == 0:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
        return proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for Triton to exit (it keeps its exit status for :meth:`stop`)."""
        assert self._proc is not None
        return self._proc.wait(timeout)

    def poll(self) -> int | None:
        """Triton's exit status, or None while it runs."""
        return self._proc.poll() if self._proc is not None else self.returncode

    def send_signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    # -- what a server leaves behind ---------------------------------------------------------------
    def leftovers(self) -> tuple[list[int], list[Path]]:
        """Processes still in this server's process group, and its shared-memory regions."""
        pids = group_members(self._pgid) if self._pgid is not None else []
        return pids, sorted(SHM_DIR.glob(self.shm_prefix + "*"))

    def cleanup(self) -> tuple[int, int]:
        """Kill what is left of the process group (stubs a killed server orphaned) and remove this
        server's shared-memory regions. Safe to call any time after Triton exited; returns how many
        processes and regions it removed."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("cleanup() while Triton runs: stop() or kill() it first")
        pids, regions = self.leftovers()
        if pids and self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while group_members(self._pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for region in regions:
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
        return len(pids), len(regions)

    def drain_failure(self) -> str | None:
        """Why the last graceful stop did not drain (Triton's exit timeout expired), or None."""
        text = self.log_text()
        if "Exit timeout expired" not in text:
            return None
        waiting = re.findall(
            r"Timeout 0: Found (\d+) (model versions that have in-flight inferences|live models)", text
        )
        detail = f": {waiting[-1][0]} {waiting[-1][1]} left" if waiting else ""
        return (
            f"requests or models were still busy after --exit-timeout {self.settings.exit_timeout_s} s"
            f"{detail} (full log: {self.log_path})"
        )

    def __enter__(self) -> TritonServer:
        if self._proc is None:
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- diagnostics ---------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def load_errors(self) -> dict[str, str]:
        """Model name -> Triton's own reason, for every model that failed to load so far."""
        errors: dict[str, str] = {}
        for line in self.log_text().splitlines():
            m = _LOAD_ERROR.search(line)
            if m:
                errors[m.group(1)] = m.group(2).rstrip('"')
        return errors

    def _failure_message(self, head: str) -> str:
        errors = self.load_errors()
        if errors:
            reasons = "; ".join(f"model '{k}' failed to load: {v}" for k, v in errors.items())
            return f"{head}: {reasons} (full log: {self.log_path})"
        text = self.log_text()
        for pattern, hint in (
            (r"address already in use|Address already in use|failed to start .* service", "a port is in use"),
            (
                r"terminate called after throwing an instance of 'boost::interprocess::lock_exception'",
                "Triton's python backend aborted (boost::interprocess::lock_exception, a known intermittent "
                "upstream crash, triton-inference-server/server#8882, seen here under heavy CPU load); "
                "start the server again",
            ),
        ):
            if re.search(pattern, text):
                return f"{head}: {hint} (full log: {self.log_path})"
        tail = [
            ln
            for ln in text.splitlines()
            if ln.startswith(("E", "error")) and not any(noise in ln for noise in _LOG_NOISE)
        ][-3:]
        return f"{head}: {' | '.join(tail) or 'see the log'} (full log: {self.log_path})"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (from /proc; zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members
