"""Route: PyTorch -> ONNX (torch.onnx.export) -> static int8 QDQ ONNX.

One self-contained .onnx (no external .data file), batch fixed to the example
input's, source layout kept. TorchScript modules go through the TorchScript
exporter; everything else through the torch.export-based one.
"""

from __future__ import annotations

from pathlib import Path

from edgesdk.errors import ConversionError
from edgesdk.util import captured_output, first_line

from . import onnx_int8
from .route import Route
from .torch_model import import_torch

OPSET = 17


def export_float(source, path: Path) -> None:
    torch = import_torch()
    dynamo = source.flavor != "torchscript"
    try:
        with captured_output(), torch.no_grad():
            torch.onnx.export(source.model, tuple(source.example_input), str(path), dynamo=dynamo,
                              external_data=False, opset_version=OPSET,
                              input_names=[s.name for s in source.inputs],
                              output_names=list(source.output_names))
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(f"torch.onnx.export failed: {first[:400]}") from None
    stray = [p.name for p in path.parent.iterdir() if p != path]
    if stray:
        raise ConversionError(f"torch.onnx.export wrote external data ({', '.join(stray)}); models over 2 GB "
                              f"are not supported yet.")


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    return onnx_int8.from_export(source, export_float, recipe, calibration, progress, profile)


# one ONNX input per forward() argument, named as the source's inputs; the float export quantized as ONNX
# sources are
ROUTE = Route(format="onnx", sources={"torch": {"torch": "torch", "onnxscript": "torch", "onnx": "onnx",
                                                "onnxruntime": "onnx"}},
              convert=convert, trainer="torch_qat", **onnx_int8.ONNX_INT8)
