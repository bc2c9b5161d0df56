"""Route: Keras -> ONNX (tf2onnx), then the static int8 QDQ step for Jetson and ONNX Runtime targets.

The batch axis is fixed to 1 and the input layout stays the Keras one (NHWC):
TensorRT and ONNX Runtime take it as it is.
"""

from __future__ import annotations

from pathlib import Path

from edgesdk.errors import ConversionError
from edgesdk.util import captured_output, first_line

from . import onnx_int8
from .keras_model import import_tf
from .keras_tflite import _batch1_model, _safe_name
from .route import Route

OPSET = 17


def export_float(source, path: Path) -> None:
    tf = import_tf()
    import tf2onnx
    spec = tuple(tf.TensorSpec((1,) + tuple(s.shape[1:]), tf.dtypes.as_dtype(s.dtype), name=_safe_name(s.name))
                 for s in source.inputs)
    names = [s.name for s in source.inputs]
    try:
        with captured_output():
            if source.flavor == "saved_model":
                from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
                fn = source.model.signatures["serving_default"]
                # frozen first: a function that captures variables exports them as extra graph inputs; the
                # outputs as a list in the source's order, so they can take the source's names (a dict's
                # become Identity:0..N in an order of tf2onnx's own); the signature called once (once per
                # output traced the whole network into the graph once per output: Basic Pitch three times)
                keys = list(source.output_names)

                def ordered(*t):
                    out = fn(**dict(zip(names, t)))
                    return [out[k] for k in keys]
                frozen = convert_variables_to_constants_v2(tf.function(ordered).get_concrete_function(*spec))
                model_proto, _ = tf2onnx.convert.from_function(
                    tf.function(lambda *t: frozen(*t)), input_signature=spec, opset=OPSET)
            else:
                model_proto, _ = tf2onnx.convert.from_keras(_batch1_model(source), input_signature=spec,
                                                           opset=OPSET)
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(f"tf2onnx could not export the Keras model to ONNX: {first[:400]}") from None
    import onnx
    onnx.save(model_proto, str(path))
    from .float_onnx import name_outputs
    name_outputs(path, list(source.output_names))  # an artifact's outputs under the source's names, in order


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    return onnx_int8.from_export(source, export_float, recipe, calibration, progress, profile)


# one ONNX input per model input, under its (TensorFlow-safe) name; the float export quantized as ONNX sources are
ROUTE = Route(format="onnx", sources={"keras": {"tensorflow": "keras", "tf2onnx": "onnx", "onnx": "onnx",
                                                "onnxruntime": "onnx"}},
              convert=convert, **onnx_int8.ONNX_INT8)
