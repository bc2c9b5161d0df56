"""Route: Keras (Keras 3, tf-keras or SavedModel) -> TFLite, full-integer by default.

Full int8 means int8 weights *and* activations (TFLITE_BUILTINS_INT8 only), so
an op without an int8 kernel fails the conversion here instead of silently
staying float. The batch axis is fixed to 1: edge runtimes and the Edge TPU
want static shapes.
"""

from __future__ import annotations

import re
import warnings

from edgesdk.errors import ConversionError
from edgesdk.util import captured_output

from .keras_model import import_tf

FORMAT = "tflite"
FRAMEWORK = "keras"


def _batch1_model(source):
    """Wrap the model in a functional model whose input has batch size 1."""
    if source.flavor == "tf-keras":
        import tf_keras as K
    else:
        import keras as K
    inp = K.Input(shape=source.input_shape[1:], batch_size=1, name=_safe_name(source.input_name))
    out = source.model(inp)
    return K.Model(inp, out, name=f"{source.name}_batch1")


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0]) or "input"
    return name if name[0].isalpha() else f"input_{name}"


def _converter(tf, source):
    if source.flavor == "saved_model":
        return tf.lite.TFLiteConverter.from_saved_model(source.path, signature_keys=["serving_default"])
    return tf.lite.TFLiteConverter.from_keras_model(_batch1_model(source))


_OP_PATTERNS = (
    re.compile(r"'(?:tf|tfl)\.([A-Za-z0-9_]+)' op"),
    re.compile(r"op: '?([A-Za-z0-9_]+)'?"),
    re.compile(r"Quantization not yet supported for op: '?([A-Za-z0-9_.]+)'?"),
)


def failing_ops(log: str) -> list:
    names = []
    for pat in _OP_PATTERNS:
        for m in pat.finditer(log):
            if m.group(1) not in names:
                names.append(m.group(1))
    return names


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    """Return the .tflite flatbuffer for `source` under `recipe`."""
    tf = import_tf()
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    x = calibration.x[: recipe.calibration_samples] if calibration is not None else None

    def representative_dataset():
        for i in range(len(x)):
            if progress:
                progress(i + 1, len(x))
            yield [x[i:i + 1]]

    with captured_output() as log, warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the representative dataset provides them.
        warnings.simplefilter("ignore", UserWarning)
        try:
            conv = _converter(tf, source)
            if recipe.quantization == "int8":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative_dataset
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                conv.inference_input_type = dtypes[recipe.input_dtype]
                conv.inference_output_type = dtypes[recipe.output_dtype]
                conv._experimental_disable_per_channel = not recipe.per_channel
            elif recipe.quantization == "fp16":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.target_spec.supported_types = [tf.float16]
            flatbuffer = conv.convert()
        except Exception as exc:
            text = f"{exc}\n{log()}"
            ops = failing_ops(str(exc)) or failing_ops(text)
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            if ops:
                raise ConversionError(
                    f"The model cannot be converted to full-integer {recipe.quantization} TFLite: no int8 "
                    f"kernel for op(s) {', '.join(ops)}. Replace those layers with int8-friendly ones, or "
                    f"choose a profile that allows float fallback. Converter said: {first[:300]}") from None
            raise ConversionError(f"The TFLite converter failed: {first[:500]}") from None
    return flatbuffer
