"""Calibration ranges: --calibration-method mse on the TFLite routes (each inner tensor's range narrowed to its least
int8 error), and the ONNX route measuring them once per graph, data and method."""

from pathlib import Path

import numpy as np
import pytest

from edgesdk.converters.tflite_int8 import _least_error_range


def int8_error(v, lo, hi):
    step = (hi - lo) / 255
    return float(np.mean((np.clip(np.round((v - lo) / step), 0, 255) * step + lo - v) ** 2))


def test_a_few_large_values_no_longer_spend_the_steps():
    """A heavy-tailed tensor (Student's t, 3 degrees of freedom): its min/max range spends most of int8's steps
    on a few values."""
    v = np.random.default_rng(0).standard_t(3, 100_000)
    lo, hi = float(v.min()), float(v.max())
    a, b = _least_error_range(v, lo, hi)
    assert lo < a < 0 < b < hi
    assert int8_error(v, a, b) < 0.85 * int8_error(v, lo, hi)


def test_a_range_the_values_fill_is_kept_and_a_relu_floor_stays_at_zero():
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 6, 100_000)  # ReLU6-like: every step used
    a, b = _least_error_range(v, 0.0, float(v.max()))
    assert a == 0.0 and b == pytest.approx(v.max(), rel=0.03)


def test_ranges_are_measured_once_per_float_graph_and_serve_every_recipe(monkeypatch):
    """The recovery ladder re-quantizes one float graph with layers kept in float: the ranges come from the first
    calibration, by TFLite's calibration profiler, and the artifact is byte for byte the one the library's
    default calibrator makes for its own recipe."""
    from dataclasses import dataclass

    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    from edgesdk.converters import tflite_int8
    from edgesdk.converters.keras_model import import_tf
    from edgesdk.converters.tflite_io import inline_buffers
    tf = import_tf()
    import tf_keras as keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    x = np.random.default_rng(0).random((20, 16, 16, 3), np.float32)

    @dataclass
    class Recipe:
        exclude_nodes: tuple = ()
        calibration_method: str = "minmax"
        activations: str = "int8"
        exclude_op_types: tuple = ()

    # the second convolution's TFLite layer, by its output tensor (Keras numbers a model's name by how many
    # were built before it in this process)
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    prefix = f"{model.name}/{model.layers[1].name}/"
    second = next(names[op["outputs"][0]] for op in interpreter._get_ops_details()
                  if op["op_name"] == "CONV_2D" and names[op["outputs"][0]].startswith(prefix))
    plain, one_float = Recipe(), Recipe(exclude_nodes=(second,))
    q, data = tflite_int8.quantizer_for(flatbuffer, x, one_float)  # the old way: its own recipe's calibration
    own = calibrator.Calibrator(q._float_model_buffer, qsv_update_func=qsv_utils.min_max_update)
    own.calibrate(data, q._recipe_manager)
    alone = inline_buffers(bytes(q.quantize(own.get_model_qsvs()).quantized_model))

    calls = []
    real = calibrator.Calibrator.calibrate
    monkeypatch.setattr(calibrator.Calibrator, "calibrate",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    tflite_int8._ranges.clear()
    tflite_int8.quantize(flatbuffer, x, recipe=plain)
    first = len(calls)
    assert first == 5  # 20 samples, 4 at a time, by TFLite's profiler (a fall-back to the default would be 10)
    assert tflite_int8.quantize(flatbuffer, x, recipe=one_float) == alone
    assert len(calls) == first  # nothing calibrated again
    tflite_int8.quantize(flatbuffer, x[:8], recipe=one_float)
    assert len(calls) == first + 2  # other data: measured again


def test_onnx_ranges_are_measured_once_per_graph_data_and_method(monkeypatch):
    """The ONNX route: a rung that keeps a layer in float, or places Q/DQ otherwise, reuses the ranges ONNX
    Runtime measured for the plain one; the artifact is byte for byte what a fresh calibration makes. New
    data, another method or corrected weight rounding calibrates again."""
    from types import SimpleNamespace

    import importlib

    from edgesdk import fixtures
    from edgesdk.converters import onnx_int8
    from edgesdk.profiles import load_profile
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not its function
    made = []
    real = ort_quantize.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator", lambda *a, **k: made.append(1) or real(*a, **k))
    model = fixtures.fetch("yolov8n_faces")
    x = fixtures.face_mosaics()[:8]

    def recipe(**changes):
        return SimpleNamespace(**{"calibration_samples": 8, "per_channel": True, "exclude_nodes": (),
                                  "exclude_op_types": (), "weight_rounding": "nearest", "calibration_method": "minmax",
                                  "activations": "int8", **changes})

    def quantize(r, data=x, target="rpi4"):
        return onnx_int8.quantize(model, r, load_profile(target), SimpleNamespace(x=data))[0]

    quantize(recipe())
    assert len(made) == 1
    stem = recipe(exclude_nodes=("/model.0/conv/Conv", "/model.1/conv/Conv"))
    reused = quantize(stem)
    assert len(made) == 1  # no calibration: the plain rung's ranges
    for old in Path(onnx_int8._RANGES.name).glob("*.json"):
        old.unlink()
    assert quantize(stem) == reused and len(made) == 2  # a fresh calibration makes the same artifact
    quantize(stem, data=fixtures.face_mosaics()[8:16])
    assert len(made) == 3
    quantize(recipe(calibration_method="percentile"))
    assert len(made) == 4
    # corrected weight rounding's graph is calibrated on its own (its bias corrections move the activations)
    quantize(recipe(weight_rounding="corrected"))
    assert len(made) == 5
