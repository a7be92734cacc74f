"""Client behaviour against a real Triton server running small python-backend models (_client_fixtures).

``toy_classifier`` has max batch size 4 and returns 3 classes, so splitting and ``top_k`` limits are
exercised on every call; ``slow_classifier`` sleeps 0.3 s per batch for deadlines; ``add_sub`` serves
the generic ``infer``.
"""

from __future__ import annotations

import asyncio
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cvserve.client import (
    AsyncClient,
    Classification,
    Client,
    ClientMetrics,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
)
from tests.integration import _client_fixtures as fx
from tests.integration._stats import requests_served

TOY = "toy_classifier"
COLOURS, TOY_K, TOY_MAX_BATCH = fx.COLOURS, fx.TOY_K, fx.TOY_MAX_BATCH
toy_server, colour_pngs = fx.toy_server, fx.colour_pngs  # the module's fixtures


@pytest.fixture(scope="module")
def client(toy_server):
    with Client(toy_server.grpc_url, model=TOY, timeout=10) as c:
        yield c


def test_ready_and_metadata(client):
    client.wait_until_ready(timeout=5, model=TOY)
    assert client.is_ready() and client.is_ready(TOY) and not client.is_ready("no_such_model")
    info = client.model_info(TOY)
    assert info.max_batch_size == TOY_MAX_BATCH
    assert info.input("IMAGE").datatype == "BYTES"
    assert info.output("SCORE").shape == (-1, TOY_K)


def test_every_image_kind_in_one_call_split_in_order(client, colour_pngs, tmp_path):
    path = tmp_path / "green.png"
    path.write_bytes(colour_pngs["green"])
    images = [
        colour_pngs["red"],
        str(path),
        np.full((6, 6, 3), COLOURS["blue"], np.uint8),
        Image.new("RGB", (5, 5), COLOURS["red"]),
        path,
    ] * 3  # 15 images: four requests of at most 4
    expected = ["red", "green", "blue", "red", "green"] * 3
    results = client.classify(images, top_k=2)
    assert [r[0].label for r in results] == expected
    assert all(len(r) == 2 and isinstance(r[0], Classification) for r in results)
    assert all(r[0].score > r[1].score for r in results)
    assert [c.label for c in client.classify([colour_pngs["blue"]])[0]] == ["blue", "red", "green"]


def test_bad_image_among_good_ones_is_invalid_input_with_the_servers_message(client, colour_pngs):
    with pytest.raises(InvalidInput, match="image 2 of 3: not a decodable image") as info:
        client.classify([colour_pngs["red"], b"not an image", colour_pngs["blue"]])
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(InvalidInput, match="image 1 of 2 is empty"):
        client.classify([b"", colour_pngs["red"]])


def test_top_k_too_large_unknown_model_and_not_a_classifier(client, colour_pngs):
    with pytest.raises(InvalidInput, match=f"only the top {TOY_K}.*--top-k"):
        client.classify([colour_pngs["red"]], top_k=TOY_K + 1)
    with pytest.raises(ModelNotFound, match="no_such_model"):
        client.classify([colour_pngs["red"]], model="no_such_model")
    with pytest.raises(InvalidInput, match="not a cvserve classifier"):
        client.classify([colour_pngs["red"]], model="add_sub")


def test_no_model_named_with_several_classifiers_served(toy_server, colour_pngs):
    with Client(toy_server.grpc_url) as c, pytest.raises(InvalidInput, match="serves 4 classifiers"):
        c.classify([colour_pngs["red"]])


def test_labels_come_from_the_config_or_a_legacy_label_output(client, colour_pngs):
    images = [colour_pngs[n] for n in ("blue", "red")]
    v2 = client.classify(images)
    assert client.model_info().labels == tuple(COLOURS)
    assert [[(c.label, c.index) for c in top] for top in v2] == [
        [("blue", 2), ("red", 0), ("green", 1)],
        [("red", 0), ("green", 1), ("blue", 2)],
    ]
    assert "LABEL" not in [o.name for o in client.model_info().outputs]
    legacy = client.classify(images, model="legacy_classifier")
    assert client.model_info("legacy_classifier").labels == ()
    assert legacy == v2  # same labels, indices and scores from the LABEL output
    unlabelled = client.classify(images, model="slow_classifier", top_k=1)
    assert [(top[0].label, top[0].index) for top in unlabelled] == [("2", 2), ("0", 0)]


def test_two_versions_served_side_by_side(client, colour_pngs):
    red = [colour_pngs["red"]]
    assert client.classify(red, model="versioned_classifier", model_version="1")[0][0].label == "red"
    assert client.classify(red, model="versioned_classifier", model_version="2")[0][0].label == "green"
    assert client.classify(red, model="versioned_classifier")[0][0].label == "green"  # the highest
    assert client.model_info("versioned_classifier", model_version="1").version == "1"
    assert client.model_info("versioned_classifier").version == "2"
    with pytest.raises(ModelNotFound, match="version 3"):
        client.classify(red, model="versioned_classifier", model_version="3")
    with pytest.raises(ModelNotFound, match="version 3"):
        client.model_info("versioned_classifier", model_version="3")
    a = np.ones((2, 4), np.float32)
    with pytest.raises(ModelNotFound, match="version 7"):
        client.infer("add_sub", {"INPUT0": a, "INPUT1": a}, model_version="7")
    np.testing.assert_array_equal(
        client.infer("add_sub", {"INPUT0": a, "INPUT1": a}, model_version="1")["OUTPUT0"], 2 * a
    )


def test_async_client_calls_a_version(toy_server, colour_pngs):
    async def main() -> list[str]:
        async with AsyncClient(toy_server.grpc_url, model="versioned_classifier") as ac:
            info = await ac.model_info(model_version="1")
            one, two = await asyncio.gather(
                ac.classify([colour_pngs["red"]], model_version="1"),
                ac.classify([colour_pngs["red"]], model_version="2"),
            )
            return [info.version, one[0][0].label, two[0][0].label]

    assert asyncio.run(main()) == ["1", "red", "green"]


def test_deadline_exceeded_is_raised_and_not_retried(client, colour_pngs):
    client.model_info("slow_classifier")
    with pytest.raises(DeadlineExceeded, match=r"0\.001 s") as info:
        client.classify([colour_pngs["red"]], model="slow_classifier", timeout=0.001)
    assert info.value.code == "DEADLINE_EXCEEDED"
    with pytest.raises(DeadlineExceeded) as info:  # the 0.3 s model cannot answer within 0.1 s
        client.classify([colour_pngs["red"]], model="slow_classifier", timeout=0.1)
    assert info.value.attempts == 1  # the request may have run: never retried


def test_oversized_images_are_refused_before_sending(toy_server, colour_pngs, tmp_path):
    big = png_of_size(5000)
    before = requests_served(toy_server.grpc_url, TOY)
    with Client(toy_server.grpc_url, model=TOY, max_image_bytes=4096) as c:
        with pytest.raises(
            InvalidInput, match=r"image 2 of 2 is \d+ bytes.*max_image_bytes \(4096 bytes"
        ) as info:
            c.classify([colour_pngs["red"], big])
        assert info.value.code is None and info.value.attempts == 0
        path = tmp_path / "big.png"
        path.write_bytes(big)
        with pytest.raises(InvalidInput, match="max_image_bytes"):
            c.classify([path])
        assert c.classify([colour_pngs["red"]])[0][0].label == "red"
    assert (
        requests_served(toy_server.grpc_url, TOY, at_least=before + 1) == before + 1
    )  # only the small image reached the server


def test_requests_are_split_under_the_request_byte_limit(toy_server, colour_pngs):
    images = [colour_pngs[n] for n in ("red", "green", "blue", "red", "green")]
    per_image = max(len(i) for i in images) + 4
    before = requests_served(toy_server.grpc_url, TOY)
    with Client(toy_server.grpc_url, model=TOY, max_request_bytes=2 * per_image) as c:
        results = c.classify(images, top_k=1)  # 5 images, 2 per request: 3 requests
        assert [r[0].label for r in results] == ["red", "green", "blue", "red", "green"]
        assert requests_served(toy_server.grpc_url, TOY, at_least=before + 3) == before + 3
        with pytest.raises(InvalidInput, match="max_request_bytes"):
            c.classify([png_of_size(3 * per_image)])
    with pytest.raises(InvalidInput, match="max_request_bytes must be a positive number"):
        Client(toy_server.grpc_url, max_request_bytes=0)


def test_infer_is_split_under_the_request_byte_limit(toy_server):
    a = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)  # a row of both inputs is 32 bytes
    before = requests_served(toy_server.grpc_url, "add_sub")
    with Client(toy_server.grpc_url, max_request_bytes=100) as c:
        out = c.infer("add_sub", {"INPUT0": a, "INPUT1": a})
    np.testing.assert_array_equal(out["OUTPUT0"], 2 * a)
    assert (
        requests_served(toy_server.grpc_url, "add_sub", at_least=before + 7) == before + 7
    )  # 3 rows a request


def png_of_size(at_least: int) -> bytes:
    """A valid PNG of at least ``at_least`` bytes (random pixels do not compress)."""
    side = int((at_least / 3) ** 0.5) + 8
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert len(buf.getvalue()) >= at_least
    return buf.getvalue()


def test_infer_raw_tensors_split_and_checked(client):
    a = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)  # 20 rows > max batch 8
    b = np.ones((20, 4), np.float32)
    out = client.infer("add_sub", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    assert list(client.infer("add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])) == ["OUTPUT1"]
    with pytest.raises(InvalidInput, match="must be FP32, got FP64"):
        client.infer("add_sub", {"INPUT0": a.astype(np.float64), "INPUT1": b})
    with pytest.raises(InvalidInput, match="shape"):
        client.infer("add_sub", {"INPUT0": a[:, :3], "INPUT1": b[:, :3]})
    with pytest.raises(InvalidInput, match="needs input INPUT1"):
        client.infer("add_sub", {"INPUT0": a})
    with pytest.raises(InvalidInput, match="no output NOPE"):
        client.infer("add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["NOPE"])
    with pytest.raises(ModelNotFound):
        client.infer("no_such_model", {"X": a})


def test_threads_share_one_client(client, colour_pngs):
    names = list(COLOURS) * 20

    def one(name: str) -> str:
        return client.classify([colour_pngs[name]], top_k=1)[0][0].label

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, names)) == names


def test_options_compression_token_and_metrics(toy_server, colour_pngs):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    options = {"compression": "gzip", "token": "t0ken", "headers": {"x-request-source": "tests"}}
    with Client(toy_server.grpc_url, model=TOY, metrics=ClientMetrics(registry=registry), **options) as c:
        assert c.classify([colour_pngs["green"]] * 6)[5][0].label == "green"
        with pytest.raises(InvalidInput):
            c.classify([b"junk"])
    get = registry.get_sample_value
    assert get("cvserve_client_request_duration_seconds_count", {"model": TOY, "method": "classify"}) == 2
    assert (
        get("cvserve_client_errors_total", {"model": TOY, "method": "classify", "code": "INVALID_ARGUMENT"})
        == 1
    )


def test_async_client(toy_server, colour_pngs):
    async def main() -> None:
        async with AsyncClient(toy_server.grpc_url, model=TOY, timeout=10) as ac:
            await ac.wait_until_ready(timeout=5, model=TOY)
            assert await ac.is_ready(TOY)
            images = [
                colour_pngs[n] for n in ("red", "green", "blue")
            ] * 3  # 9: three requests, sent together
            results = await ac.classify(images, top_k=1)
            assert [r[0].label for r in results] == ["red", "green", "blue"] * 3
            many = await asyncio.gather(*(ac.classify([colour_pngs["blue"]]) for _ in range(50)))
            assert all(r[0][0].label == "blue" for r in many)
            with pytest.raises(InvalidInput, match="image 3 of 3"):
                await ac.classify([colour_pngs["red"], colour_pngs["red"], b"junk"])
            with pytest.raises(ModelNotFound):
                await ac.classify([colour_pngs["red"]], model="no_such_model")
            with pytest.raises(DeadlineExceeded):
                await ac.classify([colour_pngs["red"]], model="slow_classifier", timeout=0.001)
            a = np.ones((10, 4), np.float32)
            out = await ac.infer("add_sub", {"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(out["OUTPUT0"], 2 * a)

    asyncio.run(main())


def test_predict_cli(toy_server, colour_pngs, tmp_path, capsys):
    from cvserve.cli import main

    paths = []
    for name in ("red", "blue"):
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(colour_pngs[name])
    argv = ["predict", TOY, *map(str, paths), "--url", toy_server.grpc_url, "--top-k", "2"]
    assert main([*argv, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [p["classes"][0]["label"] for p in payload] == ["red", "blue"]
    assert set(payload[0]["classes"][0]) == {"label", "index", "score"}
    assert main(argv) == 0
    assert "red (0)" in capsys.readouterr().out
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    assert main(["predict", TOY, str(bad), "--url", toy_server.grpc_url]) == 1
    assert "not a decodable image" in capsys.readouterr().err
