"""The client against the real demo ``mobilenet_v2`` ensemble built by ``cvserve build`` (integrator's fixtures)."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from cvserve.client import AsyncClient, Classification, Client, DeadlineExceeded, InvalidInput, ModelNotFound

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def client(triton):
    with Client(triton.grpc_url, model=MODEL) as c:
        yield c


def test_classify_real_photos_gives_the_expected_labels(client, sample_images, expected_labels):
    names = sorted(expected_labels)
    results = client.classify([sample_images[n] for n in names], top_k=3)
    assert len(results) == len(names)
    for name, top in zip(names, results, strict=True):
        assert len(top) == 3 and all(isinstance(c, Classification) for c in top)
        assert top[0].label == expected_labels[name], (name, top)
        assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)
        assert 0 < top[0].score <= 1


def test_model_is_discovered_and_all_input_kinds_agree(triton, sample_images):
    path = sample_images["chelsea"]
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    with Client(triton.grpc_url) as c:  # no model named: the one classifier served is found
        results = c.classify([path, str(path), data, np.asarray(pil), pil])
        assert c.model == MODEL
        k = c.model_info().output("SCORE").shape[-1]
    assert {r[0].label for r in results} == {"Egyptian cat"}
    assert all(len(r) == k for r in results)  # top_k omitted: all the classes the model returns


def test_split_at_max_batch_size_keeps_order(client, sample_images, expected_labels):
    max_batch = client.model_info().max_batch_size
    names = sorted(expected_labels) * (max_batch // len(expected_labels) + 2)
    results = client.classify([sample_images[n] for n in names], top_k=1)
    assert len(names) > max_batch
    assert [r[0].label for r in results] == [expected_labels[n] for n in names]


def test_corrupt_image_is_invalid_input_with_the_servers_message(client, sample_images):
    with pytest.raises(InvalidInput, match=r"image 2 of 3") as info:
        client.classify([sample_images["coffee"], b"definitely not a jpeg", sample_images["rocket"]])
    assert info.value.code in ("INVALID_ARGUMENT", "INTERNAL")
    print(f"\ncorrupt image through the ensemble: {info.value.code}: {info.value}")


def test_top_k_larger_than_built_names_the_rebuild(client, sample_images):
    k = client.model_info().output("SCORE").shape[-1]
    with pytest.raises(InvalidInput, match="--top-k"):
        client.classify([sample_images["coffee"]], top_k=k + 1)


def test_unknown_model(client, sample_images):
    with pytest.raises(ModelNotFound, match="no_such_model"):
        client.classify([sample_images["coffee"]], model="no_such_model")


def test_one_millisecond_deadline_raises_deadline_exceeded(client, sample_images):
    client.classify([sample_images["coffee"]])  # metadata cached: the deadline hits the inference itself
    start = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as info:
        client.classify([sample_images["coffee"]], timeout=0.001)
    elapsed = time.perf_counter() - start
    print(f"\n1 ms deadline on mobilenet_v2: DeadlineExceeded after {elapsed * 1000:.1f} ms")
    assert info.value.code == "DEADLINE_EXCEEDED" and info.value.attempts <= 1


def test_200_concurrent_async_classify_calls_are_all_correct(triton, sample_images, expected_labels):
    names = sorted(expected_labels)
    payloads = {n: sample_images[n].read_bytes() for n in names}

    async def main() -> tuple[list[list[list[Classification]]], float]:
        async with AsyncClient(triton.grpc_url, model=MODEL, timeout=60) as ac:
            start = time.perf_counter()
            results = await asyncio.gather(
                *(ac.classify([payloads[names[i % len(names)]]]) for i in range(200))
            )
            return results, time.perf_counter() - start

    results, wall = asyncio.run(main())
    wrong = [i for i, r in enumerate(results) if r[0][0].label != expected_labels[names[i % len(names)]]]
    print(f"\n200 concurrent AsyncClient.classify calls: {200 - len(wrong)}/200 correct in {wall:.2f} s")
    assert not wrong
