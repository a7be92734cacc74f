"""Graph clean-up with onnx-graphsurgeon: fold constants, remove dead nodes, sort topologically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvserve._extras import require
from cvserve.builders.torch2onnx import check


@dataclass(kw_only=True)
class CleanupResult:
    path: Path
    nodes_before: int
    nodes_after: int


def cleanup(src: Path, dst: Path) -> CleanupResult:
    """Read ``src``, clean it, write ``dst`` (which may be ``src``), and re-check it."""
    onnx = require("onnx", purpose="to build models")
    gs = require("onnx_graphsurgeon", purpose="to build models")
    model = onnx.load(str(src))
    before = len(model.graph.node)
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup(remove_unused_graph_inputs=False).toposort()
    cleaned = gs.export_onnx(graph)
    cleaned.ir_version = model.ir_version
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(model.opset_import)
    onnx.save(cleaned, str(dst))
    check(dst)
    return CleanupResult(path=dst, nodes_before=before, nodes_after=len(cleaned.graph.node))
