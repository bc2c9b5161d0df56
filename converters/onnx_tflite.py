"""Route: ONNX -> TFLite (full int8, fp16 or float), for the Pi's XNNPACK and the Coral's Edge TPU.

onnx2tf turns the float ONNX into a TensorFlow SavedModel whose 4-D image inputs are NHWC. It runs in
a private environment the SDK manages (edgesdk.toolchains): it pins TensorFlow 2.19, numpy 1.26 and
onnx 1.19, which the main stack has moved past. The Keras route's TFLite converter then quantizes that
SavedModel with the same calibration data, so full-int8, exclusions, the debugger, the gate and the
Edge TPU compile step are the ones every TFLite artifact gets.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgesdk import toolchains
from edgesdk.data import Dataset, to_artifact_layout
from edgesdk.errors import OptionError

from . import keras_tflite

FORMAT = "tflite"
FRAMEWORK = "onnx"
CALIBRATION_METHODS = keras_tflite.CALIBRATION_METHODS
EXCLUDES_LAYERS = keras_tflite.EXCLUDES_LAYERS
MEASURED_HINT = keras_tflite.MEASURED_HINT
DIAGNOSIS_HINT = keras_tflite.DIAGNOSIS_HINT

ONNX2TF = toolchains.Toolchain("onnx2tf", ("onnx2tf==1.29.24",), "ONNX -> TFLite",
                               "about 2.6 GB and 2 minutes, once")
WORKER = Path(__file__).with_name("onnx2tf_worker.py")
SAMPLES = 20  # what onnx2tf compares ONNX and TF outputs on while it picks transposes


def prepare_source(source, recipe, calibration, step=None):
    """The TensorFlow form of the source, made by onnx2tf once per source and kept beside it."""
    if "onnx2tf" in source.derived:
        return source.derived["onnx2tf"]
    if recipe.weight_rounding == "corrected":
        raise OptionError("--weight-rounding corrected is not available from ONNX to TFLite yet (onnx2tf "
                          "refolds the weights after rounding); use --format onnx for it, or round to nearest.")
    work = tempfile.TemporaryDirectory(prefix="edgesdk-onnx2tf-")
    out = Path(work.name) / "saved_model"
    request = {"onnx": source.float_onnx, "out": str(out),
               # only 4-D image inputs become NHWC; audio (N, C, T) and feature inputs keep their layout
               "keep": [] if source.layout == "NCHW" else [source.input_name]}
    if calibration is not None and np.issubdtype(calibration.x.dtype, np.floating):
        samples = Path(work.name) / "samples.npy"
        np.save(samples, _tf_layout(calibration.x[:SAMPLES], source))
        request["samples"] = {source.input_name: str(samples)}
    try:
        reply = toolchains.run(ONNX2TF, WORKER, request, step=step)
    except toolchains.ToolchainError as exc:
        raise toolchains.ToolchainError(f"{exc}\nOr make an ONNX artifact of it instead: --format onnx.") from None
    from .keras_model import load_path
    tf_source = load_path(out, unsafe=False)
    tf_source.keepalive = work
    source.notes.append(f"TensorFlow graph made by onnx2tf {reply.get('onnx2tf')}"
                        + (f" ({reply['renamed_nodes']} node names made TensorFlow-safe)"
                           if reply.get("renamed_nodes") else ""))
    source.derived["onnx2tf"] = tf_source
    return tf_source


def _tf_layout(x: np.ndarray, source) -> np.ndarray:
    return to_artifact_layout(x, source.layout, "NHWC")


def _in_tf_layout(calibration, source):
    if calibration is None:
        return None
    return Dataset(_tf_layout(calibration.x, source), calibration.y, calibration.source)


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    tf_source = prepare_source(source, recipe, calibration)
    return keras_tflite.convert(tf_source, recipe, _in_tf_layout(calibration, source), progress, profile)


def diagnose(source, recipe, calibration, val_x, worst: int = 5) -> list:
    """val_x arrives in the artifact's layout already (NHWC for image inputs)."""
    tf_source = prepare_source(source, recipe, calibration)
    return keras_tflite.diagnose(tf_source, recipe, _in_tf_layout(calibration, source), val_x, worst)
