"""How often the drift tests alarm on unshifted images, and how soon they catch real shifts. Offline.

A measurement script, not a test (no server: the built version's network runs here, through the
served decode and :mod:`cvserve.monitor.signals`, the code the served model counts with)::

    python -m cvserve.monitor.calibrate --repository models --name mobilenet_v2

Streams, each a pool of real photos (the bundled sample photos, augmented as the build's reference):

* ``unshifted``: the reference's own source photos, other crops, flips and scales (another seed);
* ``darkened`` (x0.4), ``blurred`` (Gaussian, radius 3), ``rotated`` (30 degrees), ``resized``
  (to a third), ``jpeg-q10`` (recompressed at quality 10): the unshifted pool, transformed;
* ``other-source``: the other half of the sample photos (what the reference never saw).

Windows of n requests are drawn from a pool with replacement; a window alarms when any signal's
p-value is below alpha (:func:`cvserve.monitor.drift.compare`). The table (stdout, and ``--out`` as
Markdown) gives, per window size, the share of unshifted windows that alarm (the false-alarm rate,
target <= 1 %) and the share of shifted windows that alarm (detection); docs/benchmarks.md keeps it.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve.client import contract
from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.monitor import drift
from cvserve.monitor import signals as sg

STREAM_SEED = 7  # the unshifted stream: other augmentations of the reference's source photos
WINDOWS = (25, 50, 100, 200, 400)


@dataclass(frozen=True, kw_only=True)
class Pool:
    """Per-image signals of a stream: bin indices and feature rows, to draw windows from."""

    classes: np.ndarray
    confidence: np.ndarray
    top1: np.ndarray
    inputs: dict[str, np.ndarray]
    features: np.ndarray | None

    def window(self, rows: np.ndarray, num_classes: int, feature_dims: int) -> sg.Counts:
        """The counts of the images ``rows`` (indices into the pool), as the served model would count them."""
        c = sg.Counts(num_classes=num_classes, feature_dims=feature_dims, images=len(rows))
        c.classes = np.bincount(self.classes[rows], minlength=len(c.classes)).astype(float)
        c.confidence = np.bincount(self.confidence[rows], minlength=len(c.confidence)).astype(float)
        c.confidence_sum = float(self.top1[rows].sum())
        for stat, bins in self.inputs.items():
            c.inputs[stat] = np.bincount(bins[rows], minlength=len(c.inputs[stat])).astype(float)
        if self.features is not None and feature_dims:
            f = self.features[rows]
            c.feature_pos, c.feature_neg = np.maximum(f, 0).sum(0), np.maximum(-f, 0).sum(0)
            c.feature_squares = (f * f).sum(0)
        return c


def _pil_shift(fn: Callable) -> Callable[[bytes], bytes]:
    def shift(data: bytes) -> bytes:
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        out = fn(img)
        buf = io.BytesIO()
        if isinstance(out, tuple):  # (image, JPEG quality)
            out[0].save(buf, format="JPEG", quality=out[1])
        else:
            out.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    return shift


def shifts() -> dict[str, Callable[[bytes], bytes]]:
    """Name -> the transformation of an encoded image that makes the shifted stream."""
    from PIL import ImageEnhance, ImageFilter

    return {
        "darkened": _pil_shift(lambda im: ImageEnhance.Brightness(im).enhance(0.4)),
        "blurred": _pil_shift(lambda im: im.filter(ImageFilter.GaussianBlur(3))),
        "rotated": _pil_shift(lambda im: im.rotate(30, expand=True)),
        "resized": _pil_shift(lambda im: im.resize((max(16, im.width // 3), max(16, im.height // 3)))),
        "jpeg-q10": _pil_shift(lambda im: (im, 10)),
    }


def pool(runner, images: Sequence[bytes], spec, num_classes: int) -> Pool:
    """Run ``images`` through the served decode and network; keep each image's signals."""
    from cvserve.builders.preprocessing import decode_requests

    parts: list[sg.Observation] = []
    for start in range(0, len(images), 16):
        sizes: list[tuple[int, int]] = []
        batch, _ = decode_requests([[d] for d in images[start : start + 16]], spec, sizes=sizes)
        if batch is not None:
            parts.append(sg.observe(batch, sizes, runner.run(batch), num_classes))
    features = [p.features for p in parts if p.features is not None]
    return Pool(
        classes=np.concatenate([p.classes for p in parts]).astype(int),
        confidence=np.concatenate([p.confidence for p in parts]).astype(int),
        top1=np.concatenate([p.top1 for p in parts]),
        inputs={s: np.concatenate([p.inputs[s] for p in parts]).astype(int) for s in sg.INPUT_STATS},
        features=np.concatenate(features) if features else None,
    )


def alarm_rate(
    stream: Pool, reference: sg.Counts, n: int, trials: int, alpha: float, rng: np.random.Generator
) -> tuple[float, dict[str, int]]:
    """(share of windows of ``n`` images that alarm, how often each signal alarmed)."""
    fired: dict[str, int] = {}
    alarms = 0
    size = len(stream.top1)
    for _ in range(trials):
        window = stream.window(rng.integers(0, size, n), reference.num_classes, reference.feature_dims)
        report = drift.compare(window, reference, alpha=alpha)
        alarms += report.drifted
        for s in report.signals:
            fired[s.signal] = fired.get(s.signal, 0) + s.drifted
    return alarms / trials, fired


def main(argv: list[str] | None = None) -> int:
    from cvserve.builders import calibration
    from cvserve.builders.preprocessing import PreprocessSpec
    from cvserve.builders.repository import Repository
    from cvserve.builders.runners import open_runner
    from cvserve.monitor.reference import Reference
    from cvserve.reporting import render

    p = argparse.ArgumentParser(
        prog="python -m cvserve.monitor.calibrate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--name", default="mobilenet_v2")
    p.add_argument("--version", type=int, default=None, help="default: the highest on disk")
    p.add_argument("--pool", type=int, default=400, help="images per stream")
    p.add_argument("--trials", type=int, default=1000, help="windows per stream and window size")
    p.add_argument("--windows", default=",".join(map(str, WINDOWS)), help="window sizes (requests)")
    p.add_argument("--alpha", type=float, default=drift.DEFAULT_ALPHA)
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    a = p.parse_args(argv)

    repository = Repository(a.repository)
    model = repository.newest(a.name) if a.version is None else repository.version(a.name, a.version)
    version = model.version
    reference = Reference.of(model).counts
    params = {k: v.string_value for k, v in model.config.parameters.items()}
    runner = open_runner(
        model.directory / params["network_file"],
        params["runtime"],
        precision=params.get(contract.PRECISION_PARAMETER, "f32"),
    )
    spec = PreprocessSpec.load(model.directory)
    cal_sources, val_sources = calibration.split_sources(sorted(calibration.source_photos()))
    base = list(calibration.sample_set(val_sources, a.pool, STREAM_SEED).data)
    streams: dict[str, list[bytes]] = {"unshifted": base}
    for name, fn in shifts().items():
        streams[name] = [fn(d) for d in base]
    streams["other-source"] = list(calibration.sample_set(cal_sources, a.pool, STREAM_SEED).data)
    pools = {name: pool(runner, data, spec, reference.num_classes) for name, data in streams.items()}
    rng = np.random.default_rng(0)
    sizes = [int(w) for w in a.windows.split(",")]
    rows = []
    for name, stream in pools.items():
        rates, signals_fired = [], {}
        for n in sizes:
            rate, fired = alarm_rate(stream, reference, n, a.trials, a.alpha, rng)
            rates.append(rate)
            signals_fired = fired
        first = next((n for n, r in zip(sizes, rates, strict=True) if r >= 0.95), None)
        top = sorted(signals_fired.items(), key=lambda kv: -kv[1])[:3] if name != "unshifted" else []
        rows.append({"stream": name, "rates": rates, "within": first, "signals": [k for k, v in top if v]})
    text = render(
        "monitor_calibration.md.j2",
        name=a.name,
        version=version,
        reference=reference.images,
        pool=a.pool,
        trials=a.trials,
        alpha=a.alpha,
        sizes=sizes,
        rows=rows,
    )
    print(text, end="")
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
