"""Loading checkpoints: state dicts with --arch, TorchScript, torch.export, and clear errors."""

from __future__ import annotations

import pytest
import torch

from cvserve.builders.checkpoint import load_model, resolve_factory
from cvserve.errors import NotFoundError, UserInputError

ARCH = "cvserve.builders.architectures:resnet18"


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    from cvserve.builders.architectures import resnet18

    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    return path


def test_state_dict_with_arch(resnet18_state):
    loaded = load_model(resnet18_state, ARCH)
    assert loaded.kind == "state_dict" and not loaded.module.training


def test_wrapped_and_data_parallel_state_dicts(tmp_path, resnet18_state):
    state = torch.load(resnet18_state, weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    assert load_model(path, ARCH).kind == "state_dict"


def test_mismatching_architecture_says_so(resnet18_state):
    with pytest.raises(
        UserInputError, match=r"does not match --arch cvserve\.builders\.architectures:mobilenet_v2"
    ):
        load_model(resnet18_state, "cvserve.builders.architectures:mobilenet_v2")


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("cvserve.builders.architectures:nope", "has no attribute 'nope'"),
        ("justamodule", "must look like module:callable"),
    ],
)
def test_bad_arch(resnet18_state, arch, needle):
    with pytest.raises(UserInputError, match=needle):
        resolve_factory(arch) if arch == "justamodule" else load_model(resnet18_state, arch)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pth", ARCH)


def test_state_dict_without_arch_asks_for_it(resnet18_state):
    with pytest.raises(UserInputError, match="pass --arch"):
        load_model(resnet18_state)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(UserInputError, match="cannot read"):
        load_model(path, ARCH)


@pytest.mark.slow  # scripts and exports a model: about 4 s
def test_torchscript_and_exported_program(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )
    ts = tmp_path / "model.pt"
    torch.jit.script(net).save(str(ts))
    assert load_model(ts).kind == "torchscript"
    ep = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(
        torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)), str(ep)
    )
    assert load_model(ep).kind == "exported_program"
