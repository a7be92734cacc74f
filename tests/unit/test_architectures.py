"""The plain-torch reference architectures match torchvision's parameter layout."""

from __future__ import annotations

import pytest
import torch

from cvserve.builders import architectures as arch

# Parameter counts of torchvision's models (torchvision.models docs, "Params" column).
TORCHVISION_PARAMS = {"mobilenet_v2": 3_504_872, "resnet18": 11_689_512, "resnet50": 25_557_032}
# A few state-dict keys and shapes from torchvision's checkpoints.
TORCHVISION_KEYS = {
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.2.conv.0.1.running_var": (96,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.num_batches_tracked": (),
        "fc.weight": (1000, 512),
    },
    "resnet50": {
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256,),
        "layer3.5.conv2.weight": (256, 256, 3, 3),
        "fc.weight": (1000, 2048),
    },
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_and_keys_match_torchvision(name):
    model = getattr(arch, name)()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    state = model.state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_forward_gives_logits(name):
    model = getattr(arch, name)(num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 10)


def test_published_mobilenet_v2_weights_load_strictly():
    from cvserve.builders.samples import demo_weights

    state = torch.load(demo_weights(), map_location="cpu", weights_only=True)
    arch.mobilenet_v2().load_state_dict(state, strict=True)
