"""Fixtures of the release tests: the example golden set and a repository of a tiny real classifier.

``thumb`` is a python-backend model following the served classifier contract (v2, labels in the
config), whose versions differ only by the files in their version folder (see
``release_repo/thumbnail_classifier.py``): version 1 is the baseline, version 2 is damaged on dark
images (it answers class 0 for them), version 3 is a copy of version 1. Configs come from Triton's
protobuf; NAME/config.pbtxt pins version 1, as a build followed by ``cvserve rollback`` would leave it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import triton_config as tc
from cvserve.builders.repository import BUILD_REPORT, SNAPSHOT

SOURCE = Path(__file__).parent / "release_repo" / "thumbnail_classifier.py"
NAME = "thumb"
K = 3
DAMAGED_ON_DARK = {"dark_below": 0.2, "dark_class": 0}


def golden_classes(golden: Path) -> list[str]:
    """The class names of the golden set, in order of first appearance (class index order)."""
    rows = [line.split(",") for line in (golden / "labels.csv").read_text().splitlines()[1:]]
    return list(dict.fromkeys(row[1] for row in rows))


def config(name: str, labels: list[str], versions: tuple[int, ...]) -> mc.ModelConfig:
    cfg = mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=8,
        input=[mc.ModelInput(name="IMAGE", data_type=mc.TYPE_STRING, dims=[1])],
        output=[
            mc.ModelOutput(name="CLASS_INDEX", data_type=mc.TYPE_INT64, dims=[K]),
            mc.ModelOutput(name="SCORE", data_type=mc.TYPE_FP32, dims=[K]),
        ],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
        version_policy=tc.VersionPolicy(kind="specific", values=versions).proto(),
    )
    cfg.parameters["labels"].string_value = json.dumps(labels)
    return cfg


def write_version(repo: Path, golden: Path, version: int, behaviour: dict | None = None) -> Path:
    """Version ``version`` of ``thumb``: references are the golden set's normal-lighting images."""
    from PIL import Image

    labels = golden_classes(golden)
    d = repo / NAME / str(version)
    (d / "references").mkdir(parents=True)
    shutil.copy(SOURCE, d / "model.py")
    rows = [line.split(",") for line in (golden / "labels.csv").read_text().splitlines()[1:]]
    for path, label, _source, lighting in rows:
        if lighting == "normal":
            with Image.open(golden / path) as img:
                img.convert("RGB").save(d / "references" / f"{labels.index(label)}.png")
    if behaviour:
        (d / "behaviour.json").write_text(json.dumps(behaviour))
    (d / SNAPSHOT).write_text(tc.to_text(config(NAME, labels, (version,))))
    (d / BUILD_REPORT).write_text(
        json.dumps({"schema": 2, "name": NAME, "version": version, "network": {"precision": "fp32"}})
    )
    return d


def write_repository(repo: Path, golden: Path) -> Path:
    """Versions 1 (baseline), 2 (worse on dark images), 3 (same as 1); version 1 served."""
    write_version(repo, golden, 1)
    write_version(repo, golden, 2, DAMAGED_ON_DARK)
    write_version(repo, golden, 3)
    (repo / NAME / "config.pbtxt").write_text(tc.to_text(config(NAME, golden_classes(golden), (1,))))
    return repo
