"""Simplify an ONNX source's graph once its sizes are fixed: constants folded, shape arithmetic gone.

Exporters leave shape arithmetic in the graph (Shape -> Gather -> Concat -> Reshape): an Ultralytics YOLOv8
head's DFL, Magika's one-hot dense layer, the attention in PP-OCRv4's recognizer. onnx2tf evaluates those
chains on tensors it has already made channel-last and fails ("Cannot reshape a tensor with 5248 elements to
shape [1,4,16,64]"); ONNX Runtime's quantizer sees ops it cannot place. With the input sizes fixed, onnxslim
(what Ultralytics runs before onnx2tf) folds them into constants, and all three of those models convert.

The simplified graph replaces the source's only where it computes the same outputs on trial inputs; it
keeps the graph's input and output names, and its nodes keep the names they had (a Conv with its batch norm
folded in keeps the Conv's), so everything downstream, and every node name a user gives, sees the model given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesdk.util import captured_output, first_line

TRIAL_SAMPLES = 2
RTOL = 1e-3  # of each output's largest magnitude: fusions reorder float sums, nothing more


def simplify(source) -> str | None:
    """Point source.float_onnx at the simplified graph when it computes the same; returns a note for the
    source, or None when there was nothing to simplify."""
    import onnx
    try:
        import onnxslim
    except ImportError:
        return "graph left as exported: onnxslim is not installed (pip install 'edgesdk[onnx]')"
    from edgesdk.sources.inputs import synthetic
    exported = source.float_onnx
    model = onnx.load(exported)
    x = synthetic(source, TRIAL_SAMPLES)
    try:
        expected = source.predict(x)
        with captured_output():
            slim = onnxslim.slim(model)
    except Exception as exc:  # onnxslim refused: the graph as exported goes on, and the routes judge it
        return f"graph left as exported: simplifying it failed ({first_line(exc)[:160]})"
    if slim is None or (len(slim.graph.node) >= len(model.graph.node) and not _removes_shape_ops(model, slim)):
        return None
    if ([i.name for i in slim.graph.input] != [i.name for i in model.graph.input]
            or [o.name for o in slim.graph.output] != [o.name for o in model.graph.output]):
        return "graph left as exported: simplifying it renamed its inputs or outputs"
    _keep_node_names(model, slim)
    simplified = str(Path(exported).with_suffix(".slim.onnx"))
    try:
        onnx.save(slim, simplified)  # a graph past protobuf's 2 GB cannot be written in one piece: left as it is
        source.float_onnx = simplified
        source.derived.pop("onnx_runner", None)
        same = all(_close(a, b) for a, b in zip(expected, source.predict(x)))
    except Exception as exc:
        same, why = False, f"it does not run ({first_line(exc)[:160]})"
    else:
        why = "it computed different outputs"
    if not same:
        source.float_onnx = exported
        source.derived.pop("onnx_runner", None)
        Path(simplified).unlink(missing_ok=True)
        return f"graph left as exported: simplified, {why}"
    Path(exported).unlink()
    source.simplified = True
    return f"graph simplified with onnxslim {onnxslim.__version__}: {len(model.graph.node)} -> {len(slim.graph.node)} nodes"


def _keep_node_names(model, slim) -> None:
    """Nodes under the names they had in the user's graph (what --exclude-nodes and the diagnosis speak in):
    onnxslim names a Conv with its BatchNormalization folded in after the Conv's output tensor."""
    by_output = {o: n for n in model.graph.node for o in n.output}
    names = {n.name for n in model.graph.node}
    used = {n.name for n in slim.graph.node if n.name in names}
    for node in slim.graph.node:
        if node.name in names:
            continue
        for tensor in (node.name, *node.output):
            original = by_output.get(tensor)
            if original is not None and original.op_type == node.op_type and original.name not in used:
                node.name = original.name
                used.add(original.name)
                break


def _removes_shape_ops(model, slim) -> bool:
    def count(m):
        return sum(n.op_type in ("Shape", "Gather", "Concat", "Unsqueeze") for n in m.graph.node)
    return count(slim) < count(model)


def _close(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if not np.issubdtype(a.dtype, np.floating):
        return bool(np.array_equal(a, b))
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    return bool(np.allclose(a, b, rtol=0, atol=RTOL * max(scale, 1e-6), equal_nan=True))
