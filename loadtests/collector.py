"""Per-request samples and load-generator CPU, collected inside the Locust processes.

Locust's own statistics are cumulative; the release gates need the measured window only (warm-up left
out) and the plots need latency over time, so every request is also recorded here as
``(end time, response ms, ok, inferences)``. In distributed mode the workers ship their samples to the
master with their regular reports (Locust's ``report_to_master``/``worker_report`` events), so remote
workers work too. The master (or the single local process) writes them to ``--samples-file`` on exit.

Imported only by the locustfile: it imports Locust, which monkey-patches the process with gevent.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from cvserve.loadtests._locust import MasterRunner, WorkerRunner, events, gevent

Sample = tuple[float, float, int, int]


class Collector:
    """Collects samples in this process; see the module docstring."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._outbox: list[Sample] = []
        self.role = "local"
        self.meta: dict[str, Any] = {}
        self.cpu: list[tuple[float, float, str]] = []
        self._cpu_outbox: list[tuple[float, float, str]] = []
        self.node = "local"
        self._monitor: Any = None
        self.environment: Any = None

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, environment: Any) -> None:
        self.environment = environment
        if isinstance(environment.runner, WorkerRunner):
            self.role = "worker"
        elif isinstance(environment.runner, MasterRunner):
            self.role = "master"
        self.node = f"{self.role}-{os.getpid()}@{socket.gethostname()}"
        ev = environment.events
        if self.role != "master":
            ev.request.add_listener(self.on_request)
        if self.role == "worker":
            ev.report_to_master.add_listener(self.on_report_to_master)
            ev.test_start.add_listener(self._start_monitor)
        else:
            ev.worker_report.add_listener(self.on_worker_report)
            ev.test_start.add_listener(self.on_test_start)
            ev.test_stop.add_listener(self.on_test_stop)
            ev.quitting.add_listener(self.on_quitting)

    # -- events ---------------------------------------------------------------------------------
    def on_request(
        self, response_time: float, exception: BaseException | None = None, context: Any = None, **_: Any
    ) -> None:
        inferences = int((context or {}).get("inferences", 1))
        sample = (round(time.time(), 4), round(float(response_time), 3), 0 if exception else 1, inferences)
        (self._outbox if self.role == "worker" else self.samples).append(sample)

    def on_report_to_master(self, client_id: str, data: dict[str, Any]) -> None:
        data["cvserve_samples"], self._outbox = self._outbox, []
        data["cvserve_cpu"], self._cpu_outbox = self._cpu_outbox, []

    def on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        self.samples.extend(tuple(s) for s in data.get("cvserve_samples", ()))
        self.cpu.extend(tuple(c) for c in data.get("cvserve_cpu", ()))

    def on_test_start(self, environment: Any, **_: Any) -> None:
        self.meta.setdefault("test_start", time.time())
        if self.role == "local":
            self._start_monitor()

    def _start_monitor(self, **_: Any) -> None:
        if self._monitor is None:
            self._monitor = gevent.spawn(self._watch_cpu)

    def on_test_stop(self, environment: Any, **_: Any) -> None:
        self.meta["test_stop"] = time.time()

    def on_quitting(self, environment: Any, **_: Any) -> None:
        if self._monitor is not None:
            self._monitor.kill(block=False)
        path = getattr(environment.parsed_options, "samples_file", None)
        if path:
            self.write(Path(path))

    # -- CPU of the load generator -------------------------------------------------------------------
    def _watch_cpu(self) -> None:
        """This process's CPU use (% of one core) every second; a worker ships it to the master."""
        import psutil  # a dependency of Locust

        proc = psutil.Process()
        proc.cpu_percent(None)
        while True:
            gevent.sleep(1.0)
            sample = (round(time.time(), 3), float(proc.cpu_percent(None)), self.node)
            (self._cpu_outbox if self.role == "worker" else self.cpu).append(sample)

    def write(self, path: Path) -> None:
        runner = self.environment.runner if self.environment else None
        workers = len(runner.clients) if self.role == "master" and runner else 0
        meta = {**self.meta, "role": self.role, "workers": workers, "cpu": self.cpu}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "samples": sorted(self.samples)}))
        tmp.replace(path)

    def window(self, start: float, end: float) -> list[Sample]:
        """Samples that ended in ``[start, end)`` (epoch seconds)."""
        return [s for s in self.samples if start <= s[0] < end]


COLLECTOR = Collector()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    COLLECTOR.attach(environment)
