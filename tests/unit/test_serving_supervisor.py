"""``cvserve serve``'s parts that need no server: the canary request (the same as the Helm chart's probe),
the restricted API groups, the thread budget display, the supervisor's metrics, the flags, the
queue-policy defaults, and the reliability script's request kinds."""

from __future__ import annotations

import argparse
import importlib.util
import os
import stat
from pathlib import Path

import pytest

from cvserve.builders.triton_config import MIN_DERIVED_QUEUE_TIMEOUT_MS, Batching
from cvserve.errors import UserInputError
from cvserve.reliability import payloads as pl
from cvserve.server import canary
from cvserve.server.budget import model_threads
from cvserve.server.cli import ServeSettings, _append_flags
from cvserve.server.restricted import GROUPS, KEY_ENV, is_loopback, restricted_api
from cvserve.server.supervisor import Metrics
from cvserve.settings import add_arguments, from_args
from tests.integration import _reliability_fixtures as fx

PROBE = Path(__file__).resolve().parents[2] / "helm" / "cvserve" / "files" / "triton_probe.py"


def _helm_probe():
    spec = importlib.util.spec_from_file_location("triton_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_canary_sends_what_the_helm_probe_sends():
    # The chart ships the canary's own module (a link), in the wire names of the contract.
    assert PROBE.resolve() == Path(canary.__file__).with_name("triton_probe.py").resolve()
    probe = _helm_probe()
    assert (probe.INPUT, "SCORE") == (canary.INPUT, canary.OUTPUT)
    assert canary.canary_png() == probe.canary_png()
    assert canary.SHOTS == probe.SHOTS  # a dead stub among the instances is found the same way


def test_the_canary_png_is_a_valid_image():
    import io

    from PIL import Image

    with Image.open(io.BytesIO(canary.canary_png())) as img:
        assert img.format == "PNG" and img.size == (32, 32)


def test_classifiers_and_ensembles_are_found_from_the_configs(tmp_path):
    repo = fx.write_repository(tmp_path / "models")
    assert canary.classifier_models(repo) == ["toy_ensemble", "toy_single"]  # not the ensemble's steps
    assert canary.classifier_models(repo, ["toy_single"]) == ["toy_single"]
    assert canary.ensemble_models(repo) == ["toy_ensemble"]


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_restricted_api_off_loopback_with_a_generated_key(tmp_path):
    assert restricted_api("auto", "127.0.0.1", environ={}) is None
    assert restricted_api("off", "0.0.0.0", environ={}) is None
    api = restricted_api("auto", "0.0.0.0", environ={})
    try:
        assert api is not None and api.key_file is not None
        assert stat.S_IMODE(os.stat(api.key_file).st_mode) == 0o600
        assert api.key_file.read_text().strip() == api.key
        http, grpc = api.flags()
        assert http == f"--http-restricted-api={','.join(GROUPS)}:admin-key={api.key}"
        assert grpc.startswith("--grpc-restricted-protocol=model-repository,")
        assert api.key not in api.describe()  # the key itself is never printed
    finally:
        api.key_file.unlink()


def test_restricted_api_key_from_the_environment():
    key = "k" * 32
    api = restricted_api("on", "127.0.0.1", environ={KEY_ENV: key})
    assert api.key == key and api.key_file is None
    with pytest.raises(UserInputError, match="letters, digits"):
        restricted_api("on", "127.0.0.1", environ={KEY_ENV: "short:key=x"})


def test_thread_budget_of_each_model_from_its_config(tmp_path):
    repo = fx.write_repository(tmp_path / "models", ensemble=False)
    config = repo / "toy_single" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("instance_group {\n  count: 1", "instance_group {\n  count: 2")
        + 'parameters {\n  key: "intra_op_threads"\n  value {\n    string_value: "0"\n  }\n}\n'
    )
    (found,) = model_threads(repo, cpus=8)
    assert found.model == "toy_single" and not found.oversubscribed
    assert found.text.startswith("2 instance(s) x 4 intra-op thread(s) on 8 core(s)")
    (turns,) = model_threads(repo, cpus=1)  # two single-threaded instances take turns on one core
    assert not turns.oversubscribed and turns.text.startswith(
        "2 instance(s) x 1 intra-op thread(s) on 1 core(s)"
    )
    config.write_text(config.read_text().replace('string_value: "0"', 'string_value: "3"'))
    (tight,) = model_threads(repo, cpus=4)  # 2 x 3 threads in pools on 4 cores
    assert tight.oversubscribed and "OVERSUBSCRIBED" in tight.text


def test_models_without_thread_parameters_are_left_out(tmp_path):
    assert model_threads(fx.write_repository(tmp_path / "models"), cpus=2) == []


def test_supervisor_metrics_are_prometheus_text():
    m = Metrics()
    m.restarts["canary"] += 1
    m.canaries[("resnet", "ok")] += 3
    text = m.render()
    assert 'cvserve_serve_restarts_total{reason="canary"} 1' in text
    assert 'cvserve_serve_restarts_total{reason="exit"} 0' in text
    assert 'cvserve_serve_canary_total{model="resnet",outcome="ok"} 3' in text
    assert "# TYPE cvserve_serve_triton_up gauge" in text


def test_serve_flags_come_from_the_settings():
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServeSettings, argument_kwargs=_append_flags)
    server = ["-r", "repo", "--load-model", "a", "--load-model", "b", "--cpus", "4", "--exit-timeout", "12"]
    watch = ["--canary-model", "a", "--canary-interval", "30s", "--host", "0.0.0.0", "--restrict-api", "on"]
    args = parser.parse_args([*server, *watch])
    s = from_args(ServeSettings, args)
    assert s.server.repository == Path("repo") and s.server.load_models == ["a", "b"]
    assert (s.server.cpus, s.server.exit_timeout_s, s.server.restrict_api) == (4, 12, "on")
    assert s.supervisor.canary_models == ["a"] and s.supervisor.canary_interval_s == 30.0
    assert from_args(ServeSettings, parser.parse_args([])).server.load_models == []


def test_queue_policy_defaults_stay_above_the_batchers_recheck():
    b = Batching(max_batch_size=16, max_queue_size=40)
    assert b.queue_timeout_us == 1_000_000  # 2 x the 500 ms SLO
    assert Batching(slo_p95_ms=50).queue_timeout_us == MIN_DERIVED_QUEUE_TIMEOUT_MS * 1000
    assert Batching(queue_timeout_ms=40).queue_timeout_us == 40_000  # an explicit value is taken as is
    assert Batching(queue_timeout_ms=0).queue_timeout_us == 0  # 0: no timeout, as in Triton's config


def test_the_reliability_script_sends_at_least_twelve_kinds_of_bad_request():
    kinds = pl.kinds()
    reject = [k for k in kinds if not k.accept]
    assert len(reject) >= 12 and len({k.name for k in kinds}) == len(kinds)
    assert {"empty-image", "random-bytes", "truncated-jpeg", "png-bomb-12000x12000", "wrong-dtype"} <= {
        k.name for k in reject
    }


@pytest.mark.parametrize(
    ("message", "leaks"),
    [
        ("image 1 of 1 in the request: not a JPEG or PNG image (23 bytes)", False),
        ("cannot identify image file <_io.BytesIO object at 0x7f1a2b0602c0>", True),
        ('Traceback (most recent call last):\n  File "model.py"', True),
    ],
)
def test_leaked_internals_are_recognised(message, leaks):
    assert pl.leaks_internals(message) is leaks


def test_png_header_bomb_declares_its_size():
    import struct

    data = pl.png_header_bomb(12000, 12000)
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (12000, 12000)
    assert len(data) < 100_000
