"""The repository writer: versions, atomic commits, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvserve.builders import repository as rp
from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.admission import resolve
from cvserve.errors import NotFoundError
from tests.helpers import tree_digest

SHAPE = tc.PipelineShape(pixels_shape=(8, 8, 3), top_k=2, labels=["a", "b", "c"])
ENSEMBLE = rt.decide(layout="ensemble")


def _build(repo: Path, name: str = "m", max_batch_size: int = 8, fail: bool = False) -> int:
    configs = tc.pipeline_configs(
        name,
        ENSEMBLE,
        SHAPE,
        resolve(tc.Batching(max_batch_size=max_batch_size), ENSEMBLE.roles, None),
        tc.VersionPolicy(),
    )
    with rp.staged_build(repo, name) as staged:
        for role, cfg in configs.items():
            (staged.version_dir(role) / "marker").write_text(f"{role} v{staged.version}")
            staged.write_config(role, cfg)
        if fail:
            raise RuntimeError("a later stage failed")
        return staged.version


def test_each_build_adds_a_version_and_keeps_the_earlier_ones(tmp_path):
    repo = tmp_path / "repo"
    assert _build(repo) == 1
    assert _build(repo, max_batch_size=4) == 2
    for model in tc.model_names("m").values():
        assert sorted(p.name for p in (repo / model).iterdir() if p.is_dir()) == ["1", "2"]
        assert "max_batch_size: 4" in (repo / model / "config.pbtxt").read_text()
        assert "max_batch_size: 8" in (repo / model / "1" / rp.SNAPSHOT).read_text()
    assert not list(tmp_path.glob(".repo.staging-*")), "staging directories are cleaned up"


def test_a_failed_build_leaves_the_repository_byte_identical(tmp_path):
    repo = tmp_path / "repo"
    _build(repo)
    before = tree_digest(repo)
    with pytest.raises(RuntimeError):
        _build(repo, max_batch_size=2, fail=True)
    assert tree_digest(repo) == before
    assert not list(tmp_path.glob(".repo.staging-*"))


def test_a_failed_first_build_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _build(tmp_path / "repo", fail=True)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_rollback_restores_that_versions_configs_pinned(tmp_path):
    repo = tmp_path / "repo"
    _build(repo, max_batch_size=8)
    _build(repo, max_batch_size=4)
    written = rp.rollback(repo, "m", 1)
    assert len(written) == 3
    for path in written:
        cfg = tc.parse(path.read_text())
        assert cfg.max_batch_size == 8
        assert list(cfg.version_policy.specific.versions) == [1]


def test_rollback_to_a_missing_version_lists_what_exists(tmp_path):
    repo = tmp_path / "repo"
    _build(repo)
    with pytest.raises(NotFoundError, match=r"versions present: \[1\]"):
        rp.rollback(repo, "m", 7)
