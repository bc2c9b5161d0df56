"""Route: Keras (Keras 3, tf-keras or SavedModel) -> TFLite, full-integer by default.

Full int8 means int8 weights *and* activations (TFLITE_BUILTINS_INT8 only), so
an op without an int8 kernel fails the conversion here instead of silently
staying float. The batch axis is fixed to 1: edge runtimes and the Edge TPU
want static shapes.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings

import numpy as np

from edgesdk.errors import ConversionError
from edgesdk.util import captured_output, first_line

from .keras_model import import_tf
from .route import Route


def _batch1_model(source, model=None):
    """Wrap the model (the source's, or one cut from it) in a functional model whose inputs have batch size 1."""
    K = _keras_module(source)
    inputs = [K.Input(shape=s.shape[1:], batch_size=1, name=_safe_name(s.name), dtype=s.dtype)
              for s in source.inputs]
    out = (model or source.model)(inputs if source.multi_input else inputs[0])
    return K.Model(inputs if source.multi_input else inputs[0], out, name=f"{source.name}_batch1")


def samples(source, x):
    """Calibration samples one at a time: a list of arrays in the model's input order (a SavedModel's
    signature: a dict by input name)."""
    from edgesdk.sources.inputs import Inputs, match_names
    names = match_names([s.name for s in source.inputs], x.names) if isinstance(x, Inputs) else {}
    for i in range(len(x)):
        if isinstance(x, Inputs):
            feed = x[i:i + 1].feed()
            yield ({s.name: feed[names[s.name]] for s in source.inputs} if source.flavor == "saved_model"
                   else [feed[names[s.name]] for s in source.inputs])
        else:
            yield [x[i:i + 1]]


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0]) or "input"
    return name if name[0].isalpha() else f"input_{name}"


def _keras_module(source):
    """The Keras the live model is built with (a Keras 3 source trained quantization-aware is tf-keras now)."""
    if source.flavor == "tf-keras" or type(source.model).__module__.split(".")[0] == "tf_keras":
        import tf_keras as K
    else:
        import keras as K
    return K


def _rounds_weights(source, recipe) -> bool:
    """Whether the live model's weights get the corrected rounding (weight_rounding.py) before converting.
    Not with exclusions: a layer kept in float must keep its exact weights."""
    return recipe.quantization == "int8" and recipe.weight_rounding == "corrected" \
        and source.flavor != "saved_model" and not (recipe.exclude_nodes or recipe.exclude_op_types)


def _converter(tf, source, recipe, calibration):
    if source.flavor == "saved_model":
        return tf.lite.TFLiteConverter.from_saved_model(source.path, signature_keys=["serving_default"])
    model = cut(source, recipe.host_tail, calibration) if recipe.host_tail else None
    return tf.lite.TFLiteConverter.from_keras_model(_batch1_model(source, model))


def cut(source, outputs: tuple, calibration):
    """The model stopped where its ONNX export is cut before the head's post-processing, matched by value on
    one calibration sample; it shares the source's layers, so weight rounding reaches it (made once per source
    and cut)."""
    key = ("cut", tuple(outputs))
    if key not in source.derived:
        from edgesdk.conversion.host_tail import cut_points
        from .keras_model import cut as cut_model
        x = calibration.x[:1]
        source.derived[key] = cut_model(source, _keras_module(source), next(samples(source, x)),
                                        cut_points(source, outputs, x))
    return source.derived[key]


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
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32, "int16": tf.int16}
    x = calibration.x[: recipe.calibration_samples] if calibration is not None else None

    def representative_dataset():
        for i, sample in enumerate(samples(source, x)):
            if progress:
                progress(i + 1, len(x))
            yield sample

    with captured_output() as log, warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the representative dataset provides them.
        warnings.simplefilter("ignore", UserWarning)
        before, source.weight_rounding = None, None
        try:
            if _rounds_weights(source, recipe):  # the caller's model gets its weights back below
                from .keras_prune import snapshot
                from .weight_rounding import round_keras
                before = snapshot(source.model)
                source.weight_rounding = round_keras(source.model, _keras_module(source), recipe.per_channel, x)
            conv = _converter(tf, source, recipe, calibration)
            if recipe.quantization == "int8":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative_dataset
                conv.target_spec.supported_ops = [_integer_ops(tf, recipe)]
                conv.inference_input_type = dtypes[recipe.input_dtype]
                conv.inference_output_type = dtypes[recipe.output_dtype]
                conv._experimental_disable_per_channel = not recipe.per_channel
            elif recipe.quantization == "fp16":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.target_spec.supported_types = [tf.float16]
            if recipe.quantization == "int8" and (recipe.exclude_nodes or recipe.exclude_op_types):
                flatbuffer = _with_exclusions(tf, conv, recipe, x, source)
            else:
                flatbuffer = conv.convert()
        except ConversionError:
            raise
        except Exception as exc:
            text = f"{exc}\n{log()}"
            ops = failing_ops(str(exc)) or failing_ops(text)
            first = first_line(exc)
            kind = "16x8 (int16 activations)" if recipe.activations == "int16" else recipe.quantization
            if ops:
                raise ConversionError(
                    f"The model cannot be converted to full-integer {kind} TFLite: no {kind} kernel for "
                    f"op(s) {', '.join(ops)}. Replace those layers with {kind}-friendly ones, or choose a "
                    f"profile that allows float fallback. Converter said: {first[:300]}") from None
            raise ConversionError(f"The TFLite converter failed: {first[:500]}") from None
        finally:
            if before is not None:
                from .keras_prune import restore
                restore(source.model, before)
    return flatbuffer


def _integer_ops(tf, recipe):
    """Full int8, or TFLite's 16x8 mode (int8 weights, int16 activations) under --activations int16."""
    if recipe.activations == "int16":
        return tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    return tf.lite.OpsSet.TFLITE_BUILTINS_INT8


def _rmse_per_scale(float_values, quant_values, scale, zero_point):
    dequantized = (quant_values.astype(np.float32) - zero_point) * scale
    return float(np.sqrt(np.mean((float_values - dequantized) ** 2)) / scale) if scale else float("nan")


def _debugger(tf, conv, x, denylisted_nodes=(), denylisted_ops=(), source=None):
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"rmse_per_scale": _rmse_per_scale},
        denylisted_nodes=list(denylisted_nodes) or None, denylisted_ops=list(denylisted_ops) or None)
    return tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=lambda: samples(source, x), debug_options=options)


def _with_exclusions(tf, conv, recipe, x, source) -> bytes:
    """Selective quantization: the named nodes / op types stay float (TFLite's QuantizationDebugger)."""
    from tensorflow.lite.python.util import modify_model_io_type
    if recipe.activations == "int16":  # its debugger quantizes int8 whatever the ops set says
        raise ConversionError("The TFLite converter keeps layers in float beside int8 activations only; drop "
                              "--activations int16 or the exclusions.")
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.inference_input_type = conv.inference_output_type = tf.float32
    model = _debugger(tf, conv, x[:8], recipe.exclude_nodes, [t.upper() for t in recipe.exclude_op_types],
                      source).get_nondebug_quantized_model()
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    try:
        return modify_model_io_type(model, dtypes[recipe.input_dtype], dtypes[recipe.output_dtype])
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"With those layers excluded the artifact cannot take {recipe.input_dtype} "
                              f"input/output ({exc}); pass --input-dtype float32 --output-dtype float32.") from None


PLAIN_ROUNDING_STEPS = 0.35  # uniform rounding error is 1/sqrt(12) ~ 0.29 of a step
DEGENERATE_STEPS = 1e6       # beyond this the step itself is ~0: a constant tensor, not a lossy layer


def diagnose(source, recipe, calibration, artifact_path, val_x, worst: int = 5) -> list:
    """Layers whose int8 outputs stray furthest from float, worst first (TFLite's QuantizationDebugger).

    `rmse_per_scale` is each layer's output RMS error in units of its
    quantization step: about 0.29 is plain rounding; far above it the range
    or the layer itself is the problem.
    """
    tf = import_tf()
    x = calibration.x[: recipe.calibration_samples]

    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = _converter(tf, source, recipe, calibration)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: samples(source, x)
        debugger = _debugger(tf, conv, val_x[:32], source=source)
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
    rows = []
    excluded = set(recipe.exclude_nodes)
    for rec in csv.DictReader(io.StringIO(dump.getvalue())):
        steps = float(rec["rmse_per_scale"])
        scale = float(rec.get("scale") or 0)
        # a zero range (scale ~ 0) makes the ratio meaningless; plain rounding is no culprit; an
        # excluded layer is already float
        if not math.isfinite(steps) or scale < 1e-12 or not PLAIN_ROUNDING_STEPS < steps < DEGENERATE_STEPS \
                or rec["tensor_name"] in excluded:
            continue
        rows.append({"node": rec["tensor_name"], "op": rec["op_name"], "rmse_per_scale": round(steps, 3),
                     "max_abs_error": round(float(rec["max_abs_error"]), 5),
                     "detail": f"RMS error {steps:.3g} quantization steps (0.29 is plain rounding)"})
    rows.sort(key=lambda r: -r["rmse_per_scale"])
    return rows[:worst]


ROUTE = Route(
    format="tflite", sources={"keras": {"tensorflow": "keras", "tf_keras": "keras"}},
    convert=convert, debug=diagnose, cut=cut,
    calibration_methods=("minmax",),  # the TFLite converter's calibrator has no other
    multi_input=True,  # Keras models and SavedModel signatures with several inputs
    int16_activations=True,  # the converter's 16x8 mode: int8 weights, int16 activations and I/O
    int16_keeps_float=False,  # ... but its selective quantization (the debugger) makes int8 activations
    # the live model's Conv2D/DepthwiseConv2D weights (not a SavedModel, not with exclusions)
    corrected_rounding=True,
    cuts_tails=True,  # a detector head's post-processing can be left to the host (edgesdk.conversion.host_tail)
    excludes_layers=True,  # --exclude-nodes/--exclude-op-types work here (with --allow-float-fallback)
    diagnosis_hint="Keep those in float with --exclude-nodes NAME[,NAME] or --exclude-op-types TYPE plus "
                   "--allow-float-fallback (not on the Edge TPU).",
    measured_hint="Each was kept in float in turn and the failing figures measured again; keep the one that "
                  "repairs them with --exclude-nodes NAME plus --allow-float-fallback (not on the Edge TPU).",
    trainer="keras_qat")
