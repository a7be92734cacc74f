"""``cvserve serve``'s supervisor: keep the embedded Triton alive and honest, stop it cleanly.

* **Liveness that tells the truth.** Every ``canary_interval_s`` each ready classifier model gets a
  canary inference (:mod:`cvserve.server.canary`). ``canary_failures`` failures in a row of any model
  (a dead or wedged python stub: Triton 2.51 keeps such a model "ready") restart the server; so does
  Triton exiting on its own (an abort such as the python backend's ``lock_exception``). Each restart is
  a line on stderr and a count in the supervisor's metrics. More than ``max_restarts`` restarts within
  ten minutes is a crash loop: the supervisor gives up and exits 1.
* **Metrics.** ``http://HOST:SUPERVISOR_PORT/metrics`` (Prometheus text format):
  ``cvserve_serve_restarts_total{reason}`` (``canary`` or ``exit``), ``cvserve_serve_canary_total{model,
  outcome}`` (``ok``, ``shed``, ``fail``), ``cvserve_serve_triton_up`` and
  ``cvserve_serve_triton_start_time_seconds``.
* **Graceful stop.** On SIGTERM or SIGINT, in explicit model control, the loaded ensembles are unloaded
  first and their in-flight requests finish (:meth:`Supervisor._unload_ensembles`). Then Triton gets
  SIGTERM once: it answers new requests with a retryable ``UNAVAILABLE`` ("Server is stopping") or
  ``NOT_FOUND`` once a model is unloaded, waits up to ``--exit-timeout`` for those in flight, and exits. The supervisor then removes whatever the server left (stubs, ``/dev/shm`` regions) and
  exits 0 if the drain finished, 1 if requests were still in flight (Triton's exit status 1). A second
  signal kills the server at once (exit 1).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cvserve.errors import UserInputError
from cvserve.server import canary
from cvserve.server.process import ServerSettings, TritonServer
from cvserve.server.restricted import HEADER
from cvserve.settings import duration, model_names_setting, setting

RESTART_WINDOW_S = 600.0


@dataclass(kw_only=True)
class SupervisorSettings:
    """How ``cvserve serve`` watches the server."""

    canary_interval_s: float = duration(
        10.0, help="how often every classifier gets a canary inference (0: never)"
    )
    canary_timeout_s: float = duration(10.0, help="how long a canary may take before it counts as failed")
    canary_failures: int = setting(3, help="canary failures in a row that restart the server", at_least=1)
    canary_models: list[str] = model_names_setting(
        "--canary-model", "check only these models (default: every model with the classifier contract)"
    )
    max_restarts: int = setting(5, help="restarts allowed within ten minutes before giving up", at_least=0)
    supervisor_port: int = setting(
        8003, help="port of the supervisor's /metrics (restarts, canaries; 0 picks a free one)", at_least=0
    )
    ready_timeout_s: float = duration(300.0, help="how long the server may take to become ready")


@dataclass
class Metrics:
    """What the supervisor counts, rendered in Prometheus' text format."""

    restarts: Counter = field(default_factory=Counter)  # reason -> count
    canaries: Counter = field(default_factory=Counter)  # (model, outcome) -> count
    up: int = 0
    start_time: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP cvserve_serve_restarts_total Restarts of the Triton server by the supervisor.",
                "# TYPE cvserve_serve_restarts_total counter",
                *(
                    f'cvserve_serve_restarts_total{{reason="{r}"}} {self.restarts[r]}'
                    for r in ("canary", "exit")
                ),
                "# HELP cvserve_serve_canary_total Canary inferences by model and outcome (ok, shed, fail).",
                "# TYPE cvserve_serve_canary_total counter",
                *(
                    f'cvserve_serve_canary_total{{model="{m}",outcome="{o}"}} {n}'
                    for (m, o), n in sorted(self.canaries.items())
                ),
                "# HELP cvserve_serve_triton_up 1 while the Triton server is running and ready.",
                "# TYPE cvserve_serve_triton_up gauge",
                f"cvserve_serve_triton_up {self.up}",
                "# HELP cvserve_serve_triton_start_time_seconds When the running Triton server started (Unix time).",
                "# TYPE cvserve_serve_triton_start_time_seconds gauge",
                f"cvserve_serve_triton_start_time_seconds {self.start_time:.3f}",
            ]
        return "\n".join(lines) + "\n"

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes are not news
                pass

        httpd = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=httpd.serve_forever, name="cvserve-supervisor-metrics", daemon=True).start()
        return httpd


class Supervisor:
    """Runs a :class:`TritonServer`, restarts it when it dies or its canaries fail, stops it on a signal."""

    def __init__(
        self,
        server: ServerSettings,
        settings: SupervisorSettings,
        *,
        log_path: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.server_settings = server
        self.settings = settings
        self.metrics = Metrics()
        self._log = log or (lambda m: print(f"cvserve serve: {m}", file=sys.stderr, flush=True))
        self._log_path = log_path
        self.server = TritonServer(server, log_path=log_path)
        # Restarts reuse the ports and the restricted-API key the first server got.
        self._fixed = ServerSettings(
            **{
                **vars(server),
                "grpc_port": self.server.grpc_port,
                "http_port": self.server.http_port,
                "metrics_port": self.server.metrics_port,
            }
        )
        self._stop = threading.Event()
        self._signals = 0
        self._restart_times: deque[float] = deque()
        self._failures: Counter = Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self._running = False
        self.supervisor_port: int | None = None

    # -- signals -------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Never block here: the main thread may be inside a wait on the same process.
        self._signals += 1
        if self._signals == 1:
            self._log(
                f"{signal.Signals(signum).name}: draining (up to --exit-timeout {self.server_settings.exit_timeout_s} s)"
            )
            self._stop.set()  # the main loop drains (_drain), ensembles first
            if not self._running:  # still starting: nothing in flight, stop the start-up now
                self.server.send_signal(signal.SIGTERM)
        else:
            self._log(f"{signal.Signals(signum).name} again: killing the server now")
            self.server.send_signal(signal.SIGKILL)

    def request_stop(self) -> None:
        """Drain and stop, as SIGTERM does (for callers that run the supervisor in a thread)."""
        self._on_signal(signal.SIGTERM, None)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> float:
        """Start the server and wait until it is ready; seconds it took. Starts the metrics endpoint."""
        if self._httpd is None:
            s = self.settings
            try:
                self._httpd = self.metrics.serve(self.server_settings.host, s.supervisor_port)
            except OSError as exc:
                raise UserInputError(
                    f"port {s.supervisor_port} (supervisor) is not free ({exc.strerror}): "
                    "pass --supervisor-port with a free port, or 0"
                ) from None
            self.supervisor_port = self._httpd.server_address[1]
        self.server.start()
        try:
            took = self.server.wait_ready(self.settings.ready_timeout_s)
        except BaseException:
            self.server.kill()
            raise
        with self.metrics.lock:
            self.metrics.up, self.metrics.start_time = 1, time.time()
        return took

    @property
    def metrics_url(self) -> str:
        return f"http://{self.server._client_host}:{self.supervisor_port}/metrics"

    def canary_models(self) -> list[str]:
        """The models canaries go to (in explicit mode, those not loaded are skipped as not ready)."""
        return canary.classifier_models(self.server_settings.repository, self.settings.canary_models or None)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> int:
        """Watch until a signal; then drain. The exit status: 0 drained, 1 otherwise."""
        self._running = True
        models = self.canary_models()
        next_canary = time.monotonic() + self.settings.canary_interval_s
        while not self._stop.is_set():
            code = self.server.poll()
            if code is not None and not self._stop.is_set():
                if not self._restart("exit", self._why_exited(code)):
                    return 1
                next_canary = time.monotonic() + self.settings.canary_interval_s
                continue
            if self.settings.canary_interval_s and time.monotonic() >= next_canary:
                failed = self._canaries(models)
                if failed and not self._stop.is_set():
                    if not self._restart("canary", failed):
                        return 1
                next_canary = time.monotonic() + self.settings.canary_interval_s
            self._stop.wait(0.2)
        return self._drain()

    def _why_exited(self, code: int) -> str:
        if code < 0:
            return f"Triton was killed by {signal.Signals(-code).name} (log: {self.server.log_path})"
        return self.server._failure_message(f"Triton exited with status {code}")

    def _canaries(self, models: list[str]) -> str | None:
        """Check every ready model; the reason to restart, or None."""
        headers = {HEADER: self.server.restricted.key} if self.server.restricted else None
        for model in models:
            if self._stop.is_set() or not self._model_ready(model):
                continue
            verdict = canary.check(
                self.server.http_url, model, timeout=self.settings.canary_timeout_s, headers=headers
            )
            with self.metrics.lock:
                self.metrics.canaries[(model, verdict.outcome)] += 1
            if verdict.alive:
                self._failures[model] = 0
                continue
            self._failures[model] += 1
            n = self._failures[model]
            self._log(f"{verdict} (failure {n} of {self.settings.canary_failures})")
            if n >= self.settings.canary_failures:
                return f"{verdict}, {n} times in a row"
        return None

    def _model_ready(self, model: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.server.http_url}/v2/models/{model}/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _unload_ensembles(self, deadline: float) -> None:
        """Unload the loaded ensembles and wait until their in-flight requests are done.

        On SIGTERM Triton 2.51 stops every model's scheduler at once, so a request part-way through an
        ensemble fails at its next step ("Server is stopping"). Unloading the ensemble first lets the
        requests it holds finish through steps that still run; new ones get NOT_FOUND ("has no
        available versions"), which cvserve's client waits out like a restart. Needs explicit model
        control (the repository API); in ``none`` mode Triton refuses unloads.
        """
        ensembles = [
            name
            for name in canary.ensemble_models(self.server_settings.repository)
            if self._model_ready(name)
        ]
        if not ensembles:
            return
        headers = {HEADER: self.server.restricted.key} if self.server.restricted else {}
        self._log(
            f"unloading ensemble(s) {', '.join(ensembles)} first, so that their in-flight requests finish"
        )
        for name in ensembles:
            request = urllib.request.Request(
                f"{self.server.http_url}/v2/repository/models/{name}/unload",
                data=b"{}",
                method="POST",
                headers=headers,
            )
            try:
                urllib.request.urlopen(request, timeout=10).read()
            except (urllib.error.URLError, OSError) as exc:
                self._log(f"could not unload {name} ({exc}): its in-flight requests may fail")
        while time.monotonic() < deadline and self._signals < 2:
            states = self._repository_states(headers)
            if not any(states.get(name) in ("READY", "UNLOADING") for name in ensembles):
                return
            time.sleep(0.05)

    def _repository_states(self, headers: dict[str, str]) -> dict[str, str]:
        request = urllib.request.Request(
            f"{self.server.http_url}/v2/repository/index", data=b"{}", method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return {e["name"]: e.get("state", "") for e in json.loads(r.read())}
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return {}

    def _restart(self, reason: str, why: str) -> bool:
        """Replace the server with a fresh one on the same ports; False when the restart budget is spent."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > RESTART_WINDOW_S:
            self._restart_times.popleft()
        with self.metrics.lock:
            self.metrics.up = 0
        if len(self._restart_times) >= self.settings.max_restarts:
            self._log(
                f"{why}; not restarting: {len(self._restart_times)} restarts within "
                f"{RESTART_WINDOW_S / 60:.0f} minutes already (--max-restarts {self.settings.max_restarts})"
            )
            self.server.kill()
            return False
        self._restart_times.append(now)
        with self.metrics.lock:
            self.metrics.restarts[reason] += 1
        count = sum(self.metrics.restarts.values())
        self._log(f"{why}; restarting Triton (restart {count}, reason {reason})")
        # A dead stub can hang a graceful unload: give it a few seconds, then kill.
        self.server.stop(timeout=min(5.0, self.server_settings.exit_timeout_s + 1.0))
        self._failures.clear()
        self.server = TritonServer(
            self._fixed, log_path=self.server.log_path, restricted=self.server.restricted
        )
        took = self.start()
        self._log(f"Triton ready again in {took:.1f} s (pid {self.server.pid})")
        return True

    def _drain(self) -> int:
        """After the first signal: ensembles first (explicit mode), then Triton's own drain; clean up.
        0 when every in-flight request finished."""
        started = time.monotonic()
        if self.server_settings.model_control_mode == "explicit" and self._signals < 2:
            self._unload_ensembles(deadline=started + self.server_settings.exit_timeout_s)
        self.server.send_signal(signal.SIGTERM)
        limit = self.server_settings.exit_timeout_s + 15.0
        while self.server.poll() is None and time.monotonic() - started < limit:
            time.sleep(0.1)
        forced = self._signals > 1
        code = self.server.stop(timeout=1.0)  # Triton has exited (or gets killed now); then cleanup
        with self.metrics.lock:
            self.metrics.up = 0
        if self._httpd is not None:
            self._httpd.shutdown()
        took = time.monotonic() - started
        if code == 0 and not forced:
            self._log(f"stopped: every in-flight request finished ({took:.1f} s)")
            return 0
        reason = self.server.drain_failure() or (
            "killed by a second signal" if forced else f"Triton exited with status {code}"
        )
        self._log(f"drain failed after {took:.1f} s: {reason}")
        return 1
