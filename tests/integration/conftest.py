"""Integration fixtures: the demo model built once, served once by the real embedded Triton server.

The server binds free ports and is polled on /v2/health/ready (no fixed ports, no fixed sleeps).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ._demo import build_demo

# The trained detector, built and served once per session for every module that uses it.
from ._detection_fixtures import detector_build, detector_server, held_out, scenes  # noqa: F401

LENIENT_QUEUE_TIMEOUT_MS = 60_000.0
LENIENT_QUEUE_SIZE = 1024


@pytest.fixture(scope="session")
def sample_images() -> dict[str, Path]:
    """Real photos bundled with scikit-image: name -> path (PNG/JPEG as shipped)."""
    from cvserve.builders.samples import sample_images as _samples

    return _samples()


@pytest.fixture(scope="session")
def expected_labels() -> dict[str, str]:
    from cvserve.builders.samples import expected_labels as _expected

    return _expected()


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory):
    """The demo MobileNetV2 built into a fresh repository.

    Built as ``make demo`` builds it, except for admission control: the defaults (a queue sized from
    the SLO and the throughput measured at build, 2 x the SLO) reject what a busy 2-core CI machine,
    slower than the build measured, or several callers at once put beyond them. These tests check outcomes; admission control has tests of its
    own (test_reliability.py, test_client_overload.py).
    """
    from cvserve.builders import triton_config as tc
    from cvserve.builders.pipeline import ServingOptions

    lenient = tc.Batching(queue_timeout_ms=LENIENT_QUEUE_TIMEOUT_MS, max_queue_size=LENIENT_QUEUE_SIZE)
    return build_demo(tmp_path_factory.mktemp("repo") / "models", ServingOptions(batching=lenient))


@pytest.fixture(scope="session")
def demo_repository(demo_build) -> Path:
    return Path(demo_build.repository)


@pytest.fixture(scope="session")
def triton(demo_repository: Path):
    """A real Triton server (embedded binary) serving the demo repository on free ports."""
    from cvserve.server import ServerSettings, TritonServer

    server = TritonServer(
        ServerSettings(repository=demo_repository, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    )
    with server:
        yield server


@pytest.fixture()
def repo_copy(demo_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the demo repository that a test may change."""
    dst = tmp_path / "models"
    shutil.copytree(demo_repository, dst)
    return dst
