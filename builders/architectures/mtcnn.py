"""MTCNN's three networks (Zhang et al., 2016) in plain torch, state-dict compatible with facenet-pytorch.

The weights are the ``pnet.pt``, ``rnet.pt`` and ``onet.pt`` state dicts inside the facenet-pytorch
wheel (MIT licence, Timothy Esler), read from its ``data`` folder without importing the package (its
``__init__`` imports torchvision, whose compiled ops do not load with the CPU torch here). Install it
with ``pip install --no-deps facenet-pytorch`` (its torch pins do not fit; the ``faces`` extra says so).

Each network returns one tensor (ONNX- and runner-friendly), concatenating what facenet-pytorch
returns as a tuple:

* ``PNet``: [N, 3, H, W] -> [N, 6, H', W']: box regression (4), face probability (2: not face, face);
  fully convolutional (any H, W >= 12), stride 2, a 12x12 window per output cell.
* ``RNet``: [N, 3, 24, 24] -> [N, 6]: regression (4), probabilities (2).
* ``ONet``: [N, 3, 48, 48] -> [N, 16]: regression (4), five landmarks (10: x1..x5, y1..y5), probabilities (2).

Inputs are RGB, (pixel - 127.5) / 128.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cvserve._extras import require

torch = require("torch", purpose="for the MTCNN networks")
nn = torch.nn


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.cat([self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)], dim=1)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return torch.cat([self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)], dim=1)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return torch.cat([self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)], dim=1)


NETWORKS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def weights_folder() -> Path:
    """facenet-pytorch's ``data`` folder (found, not imported)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        from cvserve.errors import MissingDependencyError

        raise MissingDependencyError(
            "MTCNN's weights come from facenet-pytorch, which is not installed: "
            "pip install --no-deps 'facenet-pytorch>=2.5' (see the 'faces' extra)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def mtcnn(name: str):
    """The pretrained network ``name`` (pnet, rnet or onet), in eval mode."""
    net = NETWORKS[name]()
    state = torch.load(weights_folder() / f"{name}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def pnet():
    return mtcnn("pnet")


def rnet():
    return mtcnn("rnet")


def onet():
    return mtcnn("onet")
