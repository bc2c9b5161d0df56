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
        source.derived["float_onnx"] = (path, work)
    return source.derived["float_onnx"][0]
