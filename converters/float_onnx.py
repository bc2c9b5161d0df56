"""The source as a float ONNX graph with fixed shapes: ONNX sources have it; Keras and PyTorch sources get it
from their ONNX route's float export, made once per source as it is now (the .rknn route builds from it, and
a detector's host tail is found and cut in it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgesdk.errors import ConversionError


def float_onnx(source) -> Path:
    if source.float_onnx:
        return Path(source.float_onnx)
    if "float_onnx" not in source.derived:  # derived: dropped with the rest when training changes the model
        if source.framework == "keras":
            from .keras_onnx import export_float
        elif source.framework == "torch":
            from .torch_onnx import export_float
        else:
            raise ConversionError(f"No ONNX form of a {source.framework} source.")
        work = tempfile.TemporaryDirectory(prefix="edgesdk-float-onnx-")
        path = Path(work.name) / "float.onnx"
        export_float(source, path)
        name_outputs(path, list(source.output_names))
        source.derived["float_onnx"] = (path, work)
    return source.derived["float_onnx"][0]


def name_outputs(path: Path, names: list) -> None:
    """The graph's outputs under the source's names, in order (tf2onnx names a Keras model's after the model),
    so what is found in the graph by output name is found for the source's outputs."""
    import onnx
    model = onnx.load(str(path))
    outputs = [o.name for o in model.graph.output]
    if outputs == names or len(outputs) != len(names):
        return
    taken = {t for n in model.graph.node for t in list(n.input) + list(n.output)} - set(outputs)
    if taken & set(names):
        return  # a source name is some inner tensor's here: left as exported
    renamed = dict(zip(outputs, names))
    for node in model.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for out in model.graph.output:
        out.name = renamed[out.name]
    onnx.save(model, str(path))
