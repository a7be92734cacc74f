"""Run the embedded Triton Inference Server as a child process: start, wait for readiness, stop."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cvserve.errors import NotFoundError, TimeLimitError, TritonError, UserInputError
from cvserve.server.runtime import ensure_runtime

CONTROL_MODES = ("none", "explicit", "poll")


@dataclass(kw_only=True)
class ServerSettings:
    """How to run the server. Ports of 0 pick free ones."""

    repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    log_verbose: int = 0
    exit_timeout_s: int = 30
    extra_args: list[str] = field(default_factory=list)


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


_LOAD_ERROR = re.compile(r"failed to load '([^']+)'.*?: (.*)$")


class TritonServer:
    """The embedded Triton server as a managed child process.

    Example:
        >>> with TritonServer(ServerSettings(repository=Path("model_repository"), grpc_port=0)) as srv:
        ...     print(srv.grpc_url)
    """

    def __init__(self, settings: ServerSettings, *, log_path: Path | None = None) -> None:
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
        self._proc: subprocess.Popen[bytes] | None = None
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
        ]
        if shutil.which("nvidia-smi") is None:
            args.append("--allow-gpu-metrics=false")
        args += [f"--load-model={m}" for m in s.load_models]
        return args + list(s.extra_args)

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
                    f"port {port} ({name}) is already in use: pass --{name}-port with a free port"
                )
        cmd = self.command()
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._runtime.environment(),
            start_new_session=True,  # Ctrl-C in a terminal reaches us; we forward it deliberately
        )
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll ``/v2/health/ready`` until ready; return seconds from start. Raise with Triton's reason."""
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
        """Ask Triton to shut down gracefully (SIGTERM: in-flight requests finish), then wait."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout if timeout is not None else self.settings.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()
        self._proc = None
        if self._own_log and proc.returncode == 0:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
        return proc.returncode

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def send_signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

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
        tail = [ln for ln in text.splitlines() if ln.startswith(("E", "error"))][-3:]
        return f"{head}: {' | '.join(tail) or 'see the log'} (full log: {self.log_path})"
