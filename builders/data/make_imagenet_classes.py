"""Regenerate imagenet_classes.txt: the 1000 ImageNet-1k class names, in torchvision's wording and order.

torchvision's compiled ops do not load with the CPU torch on our machines, so the names are read from
the wheel's source (``torchvision/models/_meta.py``) without importing it:

    pip download --no-deps -d /tmp/tv torchvision
    python builders/data/make_imagenet_classes.py /tmp/tv/torchvision-*.whl
"""

import ast
import sys
import zipfile
from pathlib import Path

with zipfile.ZipFile(sys.argv[1]) as whl:
    tree = ast.parse(whl.read("torchvision/models/_meta.py").decode())
names = next(
    ast.literal_eval(node.value)
    for node in tree.body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES"
)
assert len(names) == 1000, len(names)
(Path(__file__).parent / "imagenet_classes.txt").write_text("\n".join(names) + "\n")
