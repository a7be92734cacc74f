"""The repository writer (versions, atomic commits, rollback) and its reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvserve.builders import repository as rp
from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.admission import resolve
from cvserve.errors import NotFoundError, UserInputError
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
    for model in ENSEMBLE.roles.model_names("m").values():
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


# -- the reader -----------------------------------------------------------------------------------------
def _version(repo: Path, version: int, *, report: dict | None = None, policy=(1,)) -> None:
    """Version ``version`` of ``thumb`` (a classifier config with labels), pinned by NAME's config."""
    cfg = tc.pipeline_configs(
        "thumb", rt.decide(), SHAPE, resolve(tc.Batching(), rt.LAYOUT["single"], None), tc.VersionPolicy()
    )["classifier"]
    d = repo / "thumb" / str(version)
    d.mkdir(parents=True)
    (d / rp.SNAPSHOT).write_text(tc.to_text(cfg))
    if report is not None:
        (d / rp.BUILD_REPORT).write_text(json.dumps(report))
    cfg.version_policy.CopyFrom(tc.VersionPolicy(kind="specific", values=policy).proto())
    (repo / "thumb" / rp.CONFIG).write_text(tc.to_text(cfg))


def test_versions_are_the_numeric_folders_ascending(tmp_path):
    repo = rp.Repository(tmp_path)
    assert repo.versions("thumb") == []
    for v in (10, 2, 1):
        _version(tmp_path, v)
    (tmp_path / "thumb" / "old").mkdir()
    (tmp_path / "thumb" / "3").write_text("a file, not a version")
    assert repo.versions("thumb") == [1, 2, 10]
    assert repo.newest("thumb").version == 10


def test_a_version_reads_its_snapshot_report_reference_and_labels(tmp_path):
    _version(tmp_path, 1, report={"schema": 3, "engine_profile": {"max_batch": 8}})
    (tmp_path / "thumb" / "1" / rp.REFERENCE).write_text(json.dumps({"schema": 1}))
    v = rp.Repository(tmp_path).version("thumb", 1)
    assert v.directory == tmp_path / "thumb" / "1" and v.name == "thumb" and v.version == 1
    assert v.build_report == v.require_report() == {"schema": 3, "engine_profile": {"max_batch": 8}}
    assert v.reference == {"schema": 1}
    assert v.labels == ["a", "b", "c"]
    assert v.config.version_policy.WhichOneof("policy_choice") != "specific"  # the snapshot, not NAME's


def test_a_version_without_snapshot_uses_the_current_config(tmp_path):
    _version(tmp_path, 1)
    (tmp_path / "thumb" / "2").mkdir()
    v = rp.Repository(tmp_path).version("thumb", 2)
    assert list(v.config.version_policy.specific.versions) == [1]


def test_missing_and_broken_files_are_clear_errors(tmp_path):
    repo = rp.Repository(tmp_path)
    with pytest.raises(NotFoundError, match=r"thumb has no version in .*cvserve build"):
        repo.newest("thumb")
    with pytest.raises(NotFoundError, match=r"no thumb/config.pbtxt.*--repository"):
        repo.config("thumb")
    _version(tmp_path, 1)
    v = repo.version("thumb", 1)
    assert v.build_report is None and v.reference is None
    with pytest.raises(NotFoundError, match=r"1/build_report.json does not exist: .*build it again"):
        v.require_report()
    with pytest.raises(NotFoundError, match=r"version 7 of thumb is not in .*versions present: \[1\]"):
        repo.version("thumb", 7)
    (tmp_path / "thumb" / "1" / rp.BUILD_REPORT).write_text("{not json")
    with pytest.raises(UserInputError, match=r"build_report.json is not readable JSON .*rebuild"):
        repo.version("thumb", 1)
    (tmp_path / "thumb" / "1" / rp.BUILD_REPORT).unlink()
    (tmp_path / "thumb" / "1" / rp.SNAPSHOT).write_text("max_batch_size: [")
    with pytest.raises(UserInputError, match=r"config.pbtxt.build is not a valid Triton model configuration"):
        repo.version("thumb", 1)


def test_the_served_version_is_the_highest_ready_one_else_the_configs_choice(tmp_path):
    for v in (1, 2, 3):
        _version(tmp_path, v, report={"version": v}, policy=(2,))
    repo = rp.Repository(tmp_path)
    assert repo.served_version("thumb") == 2  # pinned by NAME/config.pbtxt
    assert repo.served_version("thumb", ready=[]) == 2  # the server serves nothing yet: the config decides
    assert repo.served("thumb", ready=[1]).build_report == {"version": 1}  # not the newest on disk
    assert repo.served_version("thumb", ready=[1, 3]) == 3
    cfg = repo.config("thumb")
    cfg.version_policy.CopyFrom(tc.VersionPolicy(kind="latest", values=(1,)).proto())
    (tmp_path / "thumb" / rp.CONFIG).write_text(tc.to_text(cfg))
    assert repo.served_version("thumb") == 3
    with pytest.raises(NotFoundError, match=r"version 9 of thumb is not in"):
        repo.served("thumb", ready=[9])  # the server serves a version this repository lacks


def test_the_reader_reads_what_the_writer_wrote(tmp_path):
    _build(tmp_path, max_batch_size=8)
    _build(tmp_path, max_batch_size=4)
    repo = rp.Repository(tmp_path)
    for model in ENSEMBLE.roles.model_names("m").values():
        assert repo.versions(model) == [1, 2]
        assert repo.version(model, 1).config.max_batch_size == 8
        assert repo.newest(model).config.max_batch_size == repo.config(model).max_batch_size == 4
