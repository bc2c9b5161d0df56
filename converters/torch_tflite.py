"""Route: PyTorch -> full-int8 TFLite: litert-torch for the float graph, ai-edge-quantizer for int8.

The model is wrapped to take channels-last input when the recipe's layout is
NHWC (ARM CPU and Edge TPU) and converted to a float TFLite graph by
litert-torch; ai-edge-quantizer's static recipe then makes weights and
activations int8 from the calibration data. (litert-torch's PT2E quantizer
leaves ops it does not annotate, such as PReLU, in float.) Input and output
become int8 (or uint8). What stays float is caught afterwards by the coverage
check, not assumed away.
"""

from __future__ import annotations

import warnings

from edgesdk.errors import ConversionError, OptionError
from edgesdk.util import captured_output, first_line

from . import tflite_int8
from .route import Route
from .torch_model import import_torch


def _channels_last(model, torch, turned: set):
    """The model taking its 4-D image arguments (positions in `turned`) channels-last."""
    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*[a.permute(0, 3, 1, 2) if i in turned else a for i, a in enumerate(args)])
    wrapper = ChannelsLast(model)
    wrapper.training = False  # not .eval(): it would recurse into a module that may refuse train()
    return wrapper


def _x(source, recipe, calibration):
    """Calibration samples in the artifact's layout."""
    from edgesdk.sources.inputs import to_artifact_layout
    return to_artifact_layout(calibration.x[: recipe.calibration_samples], source, recipe.layout)


def _float_model(source, recipe, torch, calibration):
    """The float flatbuffer for the source as it is now (cut before its host tail, if any), in the artifact's
    layout (made once per source and cut: recovery and diagnosis re-quantize it many times, and pruning
    happens before the first)."""
    import litert_torch
    key = ("float_tflite", recipe.layout, recipe.host_tail)
    if key not in source.derived:
        model, args = source.model, tuple(source.example_input)
        if recipe.host_tail:
            model = cut(source, recipe.host_tail, calibration)
        turned = {i for i, s in enumerate(source.inputs) if s.layout == "NCHW"} if recipe.layout == "NHWC" else set()
        if turned:
            model = _channels_last(model, torch, turned)
            args = tuple(a.permute(0, 2, 3, 1).contiguous() if i in turned else a for i, a in enumerate(args))
        source.derived[key] = bytes(litert_torch.convert(model, args).model_content())
    return source.derived[key]


def cut(source, outputs: tuple, calibration):
    """The source module stopped where its ONNX export is cut before the head's post-processing: matched by
    value on one calibration sample, batched as the example input (made once per source and cut)."""
    key = ("cut", tuple(outputs))
    if key not in source.derived:
        source.derived[key] = _cut(source, outputs, calibration)
    return source.derived[key]


def _cut(source, outputs: tuple, calibration):
    import numpy as np
    from edgesdk.conversion.host_tail import cut_points
    from .torch_model import cut as cut_module
    batch = int(source.example_input[0].shape[0]) if source.inputs[0].batch_axis == 0 else 1
    x = calibration.x[np.zeros(batch, int)]  # the first sample, as many times as the module's batch
    feed = x.feed() if hasattr(x, "feed") else {source.input_name: x}
    torch = import_torch()
    args = tuple(torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in source.inputs)
    return cut_module(source.model, args, cut_points(source, outputs, x))


def diagnose(source, recipe, calibration, artifact_path, val_x, worst: int = 5) -> list:
    torch = import_torch()
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flatbuffer = _float_model(source, recipe, torch, calibration)
        return tflite_int8.diagnose(flatbuffer, recipe, _x(source, recipe, calibration), val_x, worst)


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    torch = import_torch()
    if source.flavor == "torchscript":
        raise ConversionError("TorchScript cannot be converted to TFLite (litert-torch needs torch.export). "
                              "Save an ExportedProgram with torch.export.save, or use --format onnx.")
    if recipe.quantization == "fp16":
        raise OptionError("fp16 TFLite from PyTorch is not supported yet; use int8 or float.")
    try:
        with captured_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = _float_model(source, recipe, torch, calibration)
            if recipe.quantization == "int8":
                x = _x(source, recipe, calibration)
                flatbuffer = tflite_int8.full_int8(source, flatbuffer, recipe, x, progress)
    except (ConversionError, OptionError):
        raise
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(f"litert-torch could not convert the model: {first[:400]}") from None
    if recipe.quantization == "int8":
        flatbuffer = tflite_int8.io_types(flatbuffer, recipe)
    return flatbuffer


ROUTE = Route(
    format="tflite", sources={"torch": {"torch": "torch", "litert_torch": "torch", "ai_edge_quantizer": "torch",
                                        "tensorflow": "torch"}},
    convert=convert, debug=diagnose, cut=cut,
    multi_input=True,  # one TFLite input per forward() argument, in order
    cuts_tails=True,  # a detector head's post-processing can be left to the host (edgesdk.conversion.host_tail)
    trainer="torch_qat",
    **tflite_int8.TFLITE_INT8)  # the float flatbuffer quantized by the shared int8 back end
