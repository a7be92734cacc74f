"""A real Prometheus server for the monitoring tests: Debian's ``prometheus`` binary on a free port.

It scrapes the targets it is given every second, keeps its data in a temporary folder, and is polled on
``/-/ready`` (no fixed sleeps). ``make test`` installs the binary (the Makefile's prometheus stamp).
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from cvserve.server.process import free_port

from ._stats import wait_for

SCRAPE_INTERVAL_S = 1


@contextmanager
def prometheus(targets: dict[str, tuple[str, dict[str, str]]], folder: Path) -> Iterator[str]:
    """Run Prometheus scraping ``targets`` (job -> (host:port, labels)); yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise AssertionError("prometheus is not installed: run `make test`, which installs Debian's package")
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [address], "labels": labels}]}
            for job, (address, labels) in targets.items()
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(folder / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 60, "Prometheus to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
