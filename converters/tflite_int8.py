"""Full int8 for a float TFLite graph, with ai-edge-quantizer: the back half of every route whose front
end makes a float TFLite (PyTorch through litert-torch, ONNX through onnx2tf).

ai-edge-quantizer's static recipe makes weights and activations int8 from the calibration data, with
activation ranges as the true min/max over it (or the library's own moving average); named layers and
op types can stay float; input and output become int8 (or uint8). Measured on the PP-OCR direction
classifier from ONNX: 97.1 % top-1 agreement / 24.0 dB against 94.2 % / 20.4 dB for the TFLite
converter's own quantizer on the same SavedModel and data.
"""

from __future__ import annotations

import os

import numpy as np

from edgesdk.errors import ConversionError, OptionError

# minmax: the true range over the data. mse: min/max, then each inner tensor's range narrowed where that
# lowers its own int8 error (narrowed_to_least_error). Neither wins everywhere, because a tensor's own error
# is not the output's; measured min/max -> mse, same data and weights: PP-OCR's direction classifier from ONNX
# 23.8 -> 25.4 dB, 97.0 -> 98.5 % top-1 agreement (132 real crops); EfficientNet-Lite0 from PyTorch
# 22.6 -> 23.2 dB, 97.5 % both (360 crops); the YOLOv8-style detector for the Coral: scores 15.0 -> 15.9 dB,
# recall 0.94 both, precision 0.970 -> 0.964; but the PyTorch digit CNN 39.7 -> 37.2 dB, and a two-input
# test model's weakest output from above 15 to 13.3 dB. So the default, auto, makes min/max and, where int8
# costs something, mse too, and keeps the one that measures better (conversion._choose_calibration).
# moving-average: ai-edge-quantizer's own default (0.95 per sample), which clips more the more data it
# sees: EfficientNet-Lite0 16.4 dB against 17.5 dB with min/max.
# what the TFLite routes from ONNX and PyTorch share: this int8 back end's capabilities (converters/route.py)
TFLITE_INT8 = dict(
    calibration_methods=("minmax", "mse", "moving-average"),  # the recovery ladder tries them in this order
    auto_calibration=("minmax", "mse"),  # what auto makes: the first always, the second where int8 costs something
    excludes_layers=True,  # ai-edge-quantizer's recipe keeps named layers / op types float
    int16_activations=True,  # --activations int16: its 16x8 recipe (int8 weights, int16 activations)
    corrected_rounding=True,  # --weight-rounding corrected: the float flatbuffer's weights rounded first
    measured_hint="Each was kept in float in turn and the failing figures measured again; keep the one that "
                  "repairs them with --exclude-nodes NAME plus --allow-float-fallback (not on the Edge TPU).",
    diagnosis_hint="Keep those in float with --exclude-nodes NAME[,NAME] or --exclude-op-types TYPE plus "
                   "--allow-float-fallback (not on the Edge TPU), or give more calibration data.")


def require() -> None:
    """ai-edge-quantizer present, or an error that says which extra brings it."""
    import importlib.util
    if importlib.util.find_spec("ai_edge_quantizer") is None:
        raise ConversionError("Full-int8 TFLite from this source needs ai-edge-quantizer: pip install "
                              "'edgesdk[tflite]' (or use --format onnx).")


def io_types(flatbuffer: bytes, recipe) -> bytes:
    """Drop the QUANTIZE/DEQUANTIZE at the graph boundary so the artifact takes and returns integers."""
    if recipe.activations == "int16":
        return flatbuffer  # ai-edge-quantizer's 16x8 graph takes and returns int16 (recipe.INT16_IO)
    from edgesdk.converters.keras_model import import_tf
    tf = import_tf()
    from tensorflow.lite.python.util import modify_model_io_type
    from edgesdk.artifacts.tflite_artifact import interpreter_module
    interp = interpreter_module().Interpreter(model_content=flatbuffer)
    # integer inputs (ids) stay as they are; the float ones decide
    have_in = "float32" if any(d["dtype"] == np.float32 for d in interp.get_input_details()) else "int8"
    have_out = "float32" if any(d["dtype"] == np.float32 for d in interp.get_output_details()) else "int8"
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    # int8 first: the boundary ops that litert-torch left float go away
    want_in = "int8" if have_in == "float32" and recipe.input_dtype != "float32" else "float32"
    want_out = "int8" if have_out == "float32" and recipe.output_dtype != "float32" else "float32"
    try:
        flatbuffer = modify_model_io_type(flatbuffer, dtypes[want_in], dtypes[want_out])
        if recipe.input_dtype == "uint8" or recipe.output_dtype == "uint8":
            if recipe.input_dtype != recipe.output_dtype:
                raise ValueError("mixed int8/uint8 input and output")
            from .tflite_io import int8_io_to_uint8
            flatbuffer = int8_io_to_uint8(flatbuffer)
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"Could not make the artifact's input/output {recipe.input_dtype}/"
                              f"{recipe.output_dtype}: {exc}") from None
    return flatbuffer


def quantize(flatbuffer: bytes, x: np.ndarray, progress=None, recipe=None) -> bytes:
    """ai-edge-quantizer's static recipe on a float TFLite: int8 weights, int8 activations (or int16 ones
    under recipe.activations, TFLite's 16x8 mode, int16 at the boundary too)."""
    require()
    q, data = quantizer_for(flatbuffer, x, recipe)
    method = recipe.calibration_method if recipe is not None else "minmax"
    sixteen = recipe is not None and recipe.activations == "int16"
    calibration = calibrate_min_max(q, data, progress, sixteen, moving=method == "moving-average")
    # int16's 65,536 steps: the full range costs nothing there
    if method == "mse" and (recipe is None or recipe.activations == "int8"):
        calibration = narrowed_to_least_error(calibration, flatbuffer, x)
    if progress:
        progress(len(x), len(x))
    from .tflite_io import inline_buffers
    return inline_buffers(bytes(q.quantize(calibration).quantized_model))


def full_int8(source, flatbuffer: bytes, recipe, x, progress=None) -> bytes:
    """The float graph made int8 (quantize), with --weight-rounding corrected its weights rounded first
    (weight_rounding.py) and the int8 graph's biases then corrected against the float graph's channel means
    (int8_bias.py; int8 activations only: int16 ones have little rounding to take back)."""
    flatbuffer = rounded(source, flatbuffer, recipe, x)
    try:
        int8 = quantize(flatbuffer, x, progress, recipe)
    except (ConversionError, OptionError):
        raise
    except Exception as exc:
        recurrent = _recurrent_ops(flatbuffer)
        if not recurrent:
            raise
        raise ConversionError(  # its own words ("Tensor data is null") name nothing a user can act on
            f"ai-edge-quantizer cannot make this model int8: it computes a recurrence ({', '.join(recurrent)}: "
            f"an LSTM or GRU as TFLite holds it), whose inner tensors it cannot calibrate "
            f"({str(exc).splitlines()[0][:120]}). Targets that take ONNX artifacts make one instead "
            f"(--format onnx), where the recurrence stays float between int8 layers.") from None
    if recipe.weight_rounding == "corrected" and recipe.activations == "int8":
        from .int8_bias import corrected
        int8, stats = corrected(int8, flatbuffer, x, progress=progress)
        source.weight_rounding = {**(source.weight_rounding or {}), "int8_biases": stats["layers"],
                                  "int8_bias_samples": stats["samples"],
                                  "int8_bias_layers_measured": f"{stats['measured']} of {stats['of']}"}
    return int8


# a recurrence as TFLite holds it: its sequence ops, or a WHILE loop over subgraphs (what onnx2tf makes of
# ddddocr's bidirectional LSTM)
RECURRENT_OPS = {"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "RNN",
                 "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "WHILE"}


def _recurrent_ops(flatbuffer: bytes) -> list:
    """The op types of a float TFLite graph that hold a recurrence."""
    return sorted({op["op_name"] for op in structure(flatbuffer).ops()} & RECURRENT_OPS)


def structure(flatbuffer: bytes):
    """A flatbuffer in memory read as a TFLiteArtifact, for its structure (ops, tensors, coverage): the reader
    takes a file, and keeps the bytes it read."""
    import tempfile
    from pathlib import Path

    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    with tempfile.TemporaryDirectory(prefix="edgesdk-tflite-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(flatbuffer)
        return TFLiteArtifact(path)


def rounded(source, flatbuffer: bytes, recipe, x) -> bytes:
    """The float graph's weights on their int8 grid, kernel sums kept, biases corrected (weight_rounding.py)."""
    source.weight_rounding = None
    if recipe.weight_rounding != "corrected":
        return flatbuffer
    from .weight_rounding import round_tflite
    flatbuffer, source.weight_rounding = round_tflite(flatbuffer, recipe.per_channel, recipe.exclude_nodes,
                                                      recipe.exclude_op_types, x)
    return flatbuffer


CALIBRATION_CHUNK = 4  # samples per Calibrator.calibrate call: progress (and the budget) between them


RANGES_KEPT = 4  # float graphs whose calibrated ranges are kept for the recipes tried after the first
_ranges: dict = {}


def calibrate_min_max(q, data, progress=None, sixteen: bool = False, moving: bool = False) -> dict:
    """Activation ranges as the true min/max over the calibration data (moving: the library's own moving
    average of each sample's min and max, `--calibration-method moving-average`).

    Quantizer.calibrate updates ranges as a moving average (0.95) of per-sample
    min/max, so more data clips more: on a pretrained ImageNet CNN, 271 of 300
    photos hit the int8 ceiling of the logits. The library's Calibrator takes
    the min/max update instead (measured 65 -> 95 % top-1 agreement).

    Fed a few samples at a time (the ranges accumulate across calls): a graph with thousands of tensors (an
    unrolled LSTM) takes seconds a sample, and the progress line says so.

    A tensor's range is the float graph's, whatever else the recipe keeps in float: the ranges are measured
    once per float graph, data and activation width, with every op the width applies to, and kept for the
    recipes tried after (the recovery ladder's rungs, the diagnosis's candidates). Each used to calibrate
    again: 3.5 minutes a rung on resemblyzer's unrolled LSTM.
    """
    from ai_edge_quantizer import calibrator, recipe as aeq_recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils
    (key, samples), = data.items()
    digest = _digest(q._float_model_buffer, samples, sixteen, moving)
    if digest in _ranges:
        if progress:
            progress(len(samples), len(samples))
        return {name: dict(qsv) for name, qsv in _ranges[digest].items()}
    every_op = recipe_manager.RecipeManager()
    every_op.load_quantization_recipe(aeq_recipe.static_wi8_ai16() if sixteen else aeq_recipe.static_wi8_ai8())
    ranges = None
    for mode in (calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
                 calibrator.CalibrationMode.CALIBRATION_PRESERVE_ALL_TENSORS):
        calib = calibrator.Calibrator(q._float_model_buffer, num_threads=os.cpu_count() or 1, mode=mode,
                                      qsv_update_func=qsv_utils.moving_average_update if moving
                                      else qsv_utils.min_max_update)
        for start in range(0, len(samples), CALIBRATION_CHUNK):
            if progress:
                progress(start, len(samples))
            calib.calibrate({key: samples[start:start + CALIBRATION_CHUNK]}, every_op)
        ranges = calib.get_model_qsvs()
        if mode != calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED:
            break
        ranges = _as_preserved(ranges, q._float_model_buffer)
        if ranges is not None:
            break
    while len(_ranges) >= RANGES_KEPT:
        _ranges.pop(next(iter(_ranges)))
    _ranges[digest] = ranges
    return {name: dict(qsv) for name, qsv in ranges.items()}


VALID_RANGE = (-3e38, 3e38)  # the library's calibrator ignores values beyond these (naive_min_max_quantize)


def _as_preserved(ranges: dict, flatbuffer: bytes) -> dict | None:
    """TFLite's calibration profiler (C++, every tensor's min and max as the graph runs) gives the ranges the
    library's default calibrator computes in Python op by op, in seconds where that takes minutes on a graph
    of thousands of ops: as float32 of the tensor's rank (what that calibrator keeps), the quantized graph is
    byte for byte the same (tested). None when it missed a float tensor an op reads or writes, or saw a value
    the library's calibrator would have left out (onnx2tf's max-pool padding of -3.4e38): then that runs."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils
    model = tfl_flatbuffer_utils.read_model(flatbuffer)
    shaped = {}
    for graph in model.subgraphs:
        used = {i for op in graph.operators for i in [*(op.inputs if op.inputs is not None else []),
                                                       *(op.outputs if op.outputs is not None else [])] if i >= 0}
        for i in used:
            tensor = graph.tensors[i]
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            buffer = model.buffers[tensor.buffer] if tensor.buffer else None
            constant = buffer is not None and (buffer.data is not None or (getattr(buffer, "offset", 0) or 0) > 1)
            if tensor.type != 0 or constant:  # float32 activations only: weights are ranged when quantized
                continue
            if name not in ranges or not all(VALID_RANGE[0] < float(np.min(v)) and float(np.max(v)) < VALID_RANGE[1]
                                             for v in ranges[name].values()):
                return None  # the library leaves such values out (PADV2's -inf padding); the profiler cannot
            rank = len(tensor.shape) if tensor.shape is not None else 0
            shaped[name] = {k: np.asarray(v, np.float32).reshape((1,) * rank) for k, v in ranges[name].items()}
    return shaped


def _digest(flatbuffer: bytes, samples: list, sixteen: bool, moving: bool) -> str:
    import hashlib
    h = hashlib.blake2b(flatbuffer, digest_size=16)
    h.update((b"16" if sixteen else b"8") + (b"moving" if moving else b""))
    for sample in samples:
        for name, value in sorted(sample.items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


MSE_SAMPLES = 64         # calibration samples the tensors' values are drawn from
MSE_VALUES = 4096        # values drawn per tensor and sample
MSE_SHRINK = np.linspace(0.2, 1.0, 33)  # each end of the range, as a share of its min/max value


def narrowed_to_least_error(qsvs: dict, flatbuffer: bytes, x) -> dict:
    """Min/max ranges (`qsvs`, the Calibrator's) with each inner activation tensor's range narrowed to the one
    with the least int8 error (rounding plus clipping) on its own float values over the calibration data.

    A wide range from a few large values spends int8's 256 steps on them: on EfficientNet-Lite0 the linear
    bottlenecks' outputs span about +-50 while most values sit within +-5. Both ends are narrowed alike, then
    the high one and the low one on their own (each as a share of its min/max value). Graph inputs and
    outputs keep their true range: a classifier's top logits are its few large values (a clipped top logit
    turns argmax into ties).
    """
    from edgesdk.artifacts.tflite_artifact import interpreter_module, sample_runs
    interp = interpreter_module().Interpreter(model_content=flatbuffer)
    interp.allocate_tensors()
    ends = {d["name"] for d in interp.get_input_details()} | {d["name"] for d in interp.get_output_details()}
    index = {t["name"]: t["index"] for t in interp.get_tensor_details()}
    names = [n for n, q in qsvs.items() if n in index and n not in ends and "min" in q and np.size(q["min"]) == 1]
    rng = np.random.default_rng(0)
    values = {n: [] for n in names}
    for run in sample_runs(flatbuffer, x, rng.permutation(len(x))[:MSE_SAMPLES], keep_tensors=True):
        for n in names:
            v = run.get_tensor(index[n]).reshape(-1)
            values[n].append(v[rng.integers(0, v.size, min(v.size, MSE_VALUES))])
    out = dict(qsvs)
    for n in names:
        lo, hi = float(np.ravel(qsvs[n]["min"])[0]), float(np.ravel(qsvs[n]["max"])[0])
        best = _least_error_range(np.concatenate(values[n]).astype(np.float64), lo, hi)
        if best != (lo, hi):
            out[n] = {**qsvs[n], "min": np.full_like(np.asarray(qsvs[n]["min"]), best[0]),
                      "max": np.full_like(np.asarray(qsvs[n]["max"]), best[1])}
    return out


def _least_error_range(v: np.ndarray, lo: float, hi: float) -> tuple:
    def error(a, b):
        step = (b - a) / 255 or 1.0
        return float(np.mean((np.clip(np.round((v - a) / step), 0, 255) * step + a - v) ** 2))
    best = min(((lo * f, hi * f) for f in MSE_SHRINK), key=lambda ab: error(*ab))  # both ends alike, then each
    for end in (1, 0):  # an end at zero (ReLU) stays there
        tries = [(best[0], hi * f) if end else (lo * f, best[1]) for f in MSE_SHRINK]
        best = min(tries + [best], key=lambda ab: error(*ab))
    return best


def quantizer_for(flatbuffer: bytes, x: np.ndarray, recipe=None):
    from ai_edge_quantizer import quantizer, recipe as aeq_recipe
    from edgesdk.artifacts.tflite_artifact import interpreter_module
    signatures = interpreter_module().Interpreter(model_content=flatbuffer).get_signature_list()
    (key, sig), = signatures.items()
    q = quantizer.Quantizer(flatbuffer)
    # 16x8: int16 activations beside the int8 weights (LiteRT's int16 kernels), else full int8
    sixteen = recipe is not None and recipe.activations == "int16"
    q.load_quantization_recipe(aeq_recipe.static_wi8_ai16() if sixteen else aeq_recipe.static_wi8_ai8())
    if recipe is not None:
        keep_float(q, flatbuffer, recipe)
    from edgesdk.sources.inputs import feed_rows
    names = list(sig["inputs"])  # several inputs are matched to the data's by name, else by order
    data = {key: [feed_rows(x, i, i + 1, names) for i in range(len(x))]}
    return q, data


def keep_float(q, flatbuffer: bytes, recipe) -> None:
    """The recipe's excluded layers (TFLite output tensor names) and op types stay float."""
    import difflib
    import re

    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName
    art = structure(flatbuffer)
    names = [art.tensor_name(op["outputs"][0]) for op in art.ops() if op["outputs"]]
    types = sorted({op["op_name"] for op in art.ops()})
    known_names = set(names)
    for name in recipe.exclude_nodes:
        if name not in known_names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
            raise OptionError(f"--exclude-nodes: the graph has no layer '{name}'."
                              + (f" Close names: {', '.join(close)}." if close else "")
                              + " Layers are named by their TFLite output tensors, as the validation error lists them.")
    if recipe.exclude_nodes:
        # the library matches "scopes": the op's output tensor names, each followed by ";". One pattern for all
        # of them: the library searches every entry for every op, and a region of hundreds of layers as hundreds
        # of entries took minutes a quantization on an unrolled LSTM
        scopes = "|".join(re.escape(name) for name in recipe.exclude_nodes)
        q.update_quantization_recipe(regex=f"^(?:{scopes});", operation_name=TFLOperationName.ALL_SUPPORTED,
                                     algorithm_key=AlgorithmName.NO_QUANTIZE)
    known = {o.value for o in TFLOperationName}
    for op_type in recipe.exclude_op_types:
        if op_type.upper() not in types or op_type.upper() not in known:
            raise OptionError(f"--exclude-op-types: the graph has no {op_type} ops that int8 applies to "
                              f"(it has {', '.join(t for t in types if t in known)}).")
        q.update_quantization_recipe(regex=".*", operation_name=TFLOperationName(op_type.upper()),
                                     algorithm_key=AlgorithmName.NO_QUANTIZE)


def _tensor_bytes(flatbuffer: bytes) -> int:
    """Bytes of all of one sample's tensors in a TFLite graph (weights included: an upper bound)."""
    from ai_edge_litert.interpreter import Interpreter
    return sum(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
               for d in Interpreter(model_content=flatbuffer).get_tensor_details())


def diagnose(flatbuffer: bytes, recipe, x: np.ndarray, val_x: np.ndarray, worst: int = 5) -> list:
    """Tensors whose int8 values drift furthest from float (ai-edge-quantizer's validation), worst first.
    `x` and `val_x` are in the float graph's layout."""
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    from edgesdk.memory import samples_within
    # the validator keeps every tensor of every sample, float and int8: as many samples as fit the budget
    val_x = val_x[:samples_within(2 * _tensor_bytes(flatbuffer), len(val_x))]
    q, data = quantizer_for(flatbuffer, x)
    q.quantize(calibrate_min_max(q, data))
    key = next(iter(data))
    result = q.validate({key: quantizer_for(flatbuffer, val_x)[1][key]},
                        error_metrics=[ValidationErrorMetric.SNR], use_xnnpack=True)
    rows = []
    for sig in result.available_signature_keys():
        r = result.get_signature_comparison_result(sig)
        for name, metrics in {**r.intermediate_tensors, **r.output_tensors}.items():
            snr = float(metrics.get("snr", float("nan")))
            rows.append({"node": name, "op": "", "snr_db": round(snr, 2), "detail": f"SNR {snr:.1f} dB"})
    rows.sort(key=lambda r: r["snr_db"] if r["snr_db"] == r["snr_db"] else float("inf"))
    return rows[:worst]
