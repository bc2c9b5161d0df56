"""Route: ONNX -> TFLite (full int8, fp16 or float), for the Pi's XNNPACK and the Coral's Edge TPU.

onnx2tf turns the float ONNX into a TensorFlow SavedModel whose 4-D image inputs are NHWC. It runs in
a private environment the SDK manages (edgesdk.toolchains): it pins TensorFlow 2.19, numpy 1.26 and
onnx 1.19, which the main stack has moved past. The main stack's TFLite converter makes the float graph
of that SavedModel, and ai-edge-quantizer makes it full int8 (tflite_int8, as for PyTorch sources):
on the PP-OCR direction classifier 97.1 % top-1 agreement / 24.0 dB where the TFLite converter's own
quantizer gave 94.2 % / 20.4 dB on the same data.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgesdk import toolchains
from edgesdk.errors import ConversionError, OptionError
from edgesdk.sources.data import Dataset
from edgesdk.sources.inputs import Inputs, to_artifact_layout
from edgesdk.util import captured_output, first_line

from . import keras_tflite, tflite_int8
from .keras_model import import_tf
from .onnx_model import input_names
from .route import Route


ONNX2TF = toolchains.Toolchain("onnx2tf", ("onnx2tf==1.29.24",), "ONNX -> TFLite",
                               "about 2.6 GB and 2 minutes, once")
WORKER = Path(__file__).with_name("onnx2tf_worker.py")
SAMPLES = 20  # what onnx2tf compares ONNX and TF outputs on while it picks transposes


def prepare_source(source, recipe, calibration, step=None):
    """The TensorFlow form of the source (cut before its host tail, if any), made by onnx2tf once per source
    and cut, and kept beside it."""
    key = ("onnx2tf", recipe.host_tail)
    if key in source.derived:
        return source.derived[key]
    import_tf()  # what this side needs, checked before onnx2tf's minutes
    if recipe.quantization == "int8":
        tflite_int8.require()
    work = tempfile.TemporaryDirectory(prefix="edgesdk-onnx2tf-")
    out = Path(work.name) / "saved_model"
    graph = Path(work.name) / "source.onnx"
    float_onnx = source.float_onnx
    if recipe.host_tail:
        from edgesdk.conversion.host_tail import cut_source
        float_onnx = cut_source(source, recipe.host_tail)[0]
    rewritten = _int8_friendly(float_onnx, graph)
    request = {"onnx": str(graph), "out": str(out),
               # only 4-D image inputs become NHWC; audio (N, C, T), feature and state inputs keep their layout
               # (onnx2tf takes the option for 3-D to 5-D inputs; it leaves the others as they are)
               "keep": [s.name for s in source.inputs if s.layout != "NCHW" and 3 <= len(s.shape) <= 5],
               # simplified already (onnx_simplify): onnx2tf's own onnxsim pass would only repeat it
               "simplified": source.simplified}
    if calibration is not None:
        x = _tf_layout(calibration.x[:SAMPLES], source)
        feed = x.feed() if isinstance(x, Inputs) else {source.input_name: x}
        arrays = [(n, feed[n]) for n in input_names(graph)]  # a fixed input built into the graph is not fed
        if all(np.issubdtype(a.dtype, np.floating) for _, a in arrays):
            request["samples"] = {}
            for k, (name, a) in enumerate(arrays):
                np.save(Path(work.name) / f"samples_{k}.npy", a)
                request["samples"][name] = str(Path(work.name) / f"samples_{k}.npy")
    toolchains.ensure(ONNX2TF, step)  # an environment that cannot be made says so in its own words
    try:
        reply = toolchains.run(ONNX2TF, WORKER, request, step=step)
    except toolchains.ToolchainError as exc:
        raise toolchains.ToolchainError(f"onnx2tf could not turn the ONNX graph into TensorFlow: "
                                        f"{str(exc).removeprefix('onnx2tf failed: ')} Targets that take ONNX "
                                        f"artifacts make one instead (--format onnx).") from None
    from .keras_model import load_path
    tf_source = load_path(out, unsafe=False)
    tf_source.keepalive = work
    source.notes.append(f"TensorFlow graph made by onnx2tf {reply.get('onnx2tf')}"
                        + (f" ({reply['renamed_nodes']} node names made TensorFlow-safe)"
                           if reply.get("renamed_nodes") else ""))
    if rewritten:
        source.notes.append(f"{rewritten} HardSigmoid rewritten as Mul, Add, Clip(0, 6), Mul (the same function; "
                            f"its TFLite form RELU_0_TO_1 has no int8 in ai-edge-quantizer)")
    source.derived[key] = tf_source
    return tf_source


def _int8_friendly(src: str, dst: Path) -> int:
    """HardSigmoid as relu6(6a x + 6b) / 6: exactly clip(a x + b, 0, 1), in ops with int8 kernels in
    ai-edge-quantizer, XNNPACK and the Edge TPU (MobileNetV3's squeeze-excite gates). Returns how many."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(src)
    graph, nodes, count = model.graph, [], 0
    for node in graph.node:
        if node.op_type != "HardSigmoid":
            nodes.append(node)
            continue
        attrs = {a.name: a.f for a in node.attribute}
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        p = f"edgesdk_hardsigmoid_{count}"
        count += 1
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), f"{p}_{k}") for k, v in
                                 {"a": 6 * alpha, "b": 6 * beta, "lo": 0.0, "hi": 6.0, "s": 1 / 6}.items())
        nodes += [helper.make_node("Mul", [node.input[0], f"{p}_a"], [f"{p}_ax"], name=f"{p}_mul"),
                  helper.make_node("Add", [f"{p}_ax", f"{p}_b"], [f"{p}_axb"], name=f"{p}_add"),
                  helper.make_node("Clip", [f"{p}_axb", f"{p}_lo", f"{p}_hi"], [f"{p}_relu6"], name=f"{p}_clip"),
                  helper.make_node("Mul", [f"{p}_relu6", f"{p}_s"], [node.output[0]], name=f"{p}_scale")]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return count


def _tf_layout(x, source):
    return to_artifact_layout(x, source, "NHWC")


def _float_flatbuffer(tf_source) -> bytes:
    """The float TFLite of onnx2tf's SavedModel, with its signature (made once per source)."""
    if "float_tflite" not in tf_source.derived:
        tf = import_tf()
        conv = tf.lite.TFLiteConverter.from_saved_model(tf_source.path, signature_keys=["serving_default"])
        tf_source.derived["float_tflite"] = conv.convert()
    return tf_source.derived["float_tflite"]


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    tf_source = prepare_source(source, recipe, calibration)
    if recipe.quantization != "int8":  # float and fp16: the TFLite converter, as for any SavedModel
        return keras_tflite.convert(tf_source, recipe, None, progress, profile)
    x = _tf_layout(calibration.x[: recipe.calibration_samples], source)
    try:
        with captured_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = _float_flatbuffer(tf_source)
            flatbuffer = tflite_int8.full_int8(source, flatbuffer, recipe, x, progress)
    except (ConversionError, OptionError):
        raise
    except Exception as exc:
        raise ConversionError(f"ai-edge-quantizer could not make the model int8: {first_line(exc)[:400]}") from None
    left = _float_compute_ops(flatbuffer)
    if left and not (recipe.exclude_nodes or recipe.exclude_op_types):
        # ai-edge-quantizer has no int8 for some op the TFLite converter quantizes: full int8 comes first
        note = (f"ai-edge-quantizer has no int8 for {', '.join(left)}: quantized with the TFLite converter "
                f"(min/max) instead")
        if note not in source.notes:
            source.notes.append(note)
        source.weight_rounding = None  # that converter rounds the SavedModel's weights to nearest
        return keras_tflite.convert(tf_source, recipe, Dataset(x, None, calibration.source), progress, profile)
    return tflite_int8.io_types(flatbuffer, recipe)


def _float_compute_ops(flatbuffer: bytes) -> list:
    """The op types that compute in float in a quantized flatbuffer (boundary conversions aside)."""
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    from edgesdk.targets.arm_cpu import float_compute_ops
    with tempfile.TemporaryDirectory(prefix="edgesdk-int8-") as tmp:
        path = Path(tmp) / "int8.tflite"
        path.write_bytes(flatbuffer)
        float_ops = TFLiteArtifact(path).coverage()["float_ops"]
    return float_compute_ops(float_ops) if float_ops else []


def diagnose(source, recipe, calibration, artifact_path, val_x, worst: int = 5) -> list:
    """val_x arrives in the artifact's layout already (NHWC for image inputs)."""
    tf_source = prepare_source(source, recipe, calibration)
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = _tf_layout(calibration.x[: recipe.calibration_samples], source)
        return tflite_int8.diagnose(_float_flatbuffer(tf_source), recipe, x, val_x, worst)


ROUTE = Route(
    format="tflite", sources={"onnx": {"onnx": "onnx", "onnxruntime": "onnx", "tensorflow": "tflite",
                                       "ai_edge_quantizer": "tflite"}},
    convert=convert, prepare_source=prepare_source, debug=diagnose,
    multi_input=True,  # onnx2tf keeps the ONNX input names; several inputs are fed by name
    cuts_tails=True,  # a detector head's post-processing can be left to the host (edgesdk.conversion.host_tail)
    **tflite_int8.TFLITE_INT8)  # the float flatbuffer quantized by the shared int8 back end
