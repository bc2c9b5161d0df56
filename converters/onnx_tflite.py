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
    and cut, and kept beside it. int8 gets divisors floored (_floor_divisors) where its rounding reaches zero:
    a graph of its own, made only when some divisor needed it (float keeps the source's arithmetic)."""
    int8 = recipe.quantization == "int8" and calibration is not None
    floored = source.derived.get(("divisor floors", recipe.host_tail)) if int8 else []
    key = ("onnx2tf", recipe.host_tail, None if floored is None else tuple(floored))
    if key in source.derived:
        return source.derived[key]
    if step is not None:  # TensorFlow's import, the divisors' probe and onnx2tf: seconds to minutes
        step("turning the ONNX graph into TensorFlow (onnx2tf)")
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
    if floored is None:  # int8, not yet probed
        floored = source.derived[("divisor floors", recipe.host_tail)] = _floor_divisors(  # the quantizer's
            graph, calibration.x[:recipe.calibration_samples])  # samples: its ranges are what int8 rounds in
        key = ("onnx2tf", recipe.host_tail, tuple(floored))
        if key in source.derived:  # nothing floored: the graph float made already serves
            return source.derived[key]
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
        reply = toolchains.run(ONNX2TF, WORKER, request, step=step, waiting=step and (
            lambda seconds: step(f"  onnx2tf still turning the graph into TensorFlow ({seconds:.0f} s)")))
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
    if floored:
        source.notes.append(f"the divisor of {', '.join(floored[:4])}{' ...' if len(floored) > 4 else ''} floored at "
                            f"1/{DIVISOR_STEPS} of its calibrated range (int8 rounds its smallest values to zero, "
                            f"and TFLite's int8 DIV refuses a zero divisor)")
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


DIVISOR_STEPS = 127  # a floored divisor is at least two int8 steps of its range [0, max] above zero
# ops a divisor passes through unchanged in sign and order: the floor goes on what they read, where int8
# rounds (a layer norm's var + eps, rounded to int8 before its Sqrt)
MONOTONE = ("Sqrt", "Reshape", "Expand", "Squeeze", "Unsqueeze", "Identity", "Flatten")


def _floor_divisors(path: Path, x) -> list:
    """Div and Reciprocal whose divisor is computed and never negative on the calibration samples: int8 can
    round it to the zero point, and TFLite's int8 DIV aborts on a zero divisor. Magika's layer norms: one
    variance + eps runs from 0.00006 to 0.04 and is rounded to int8 before its Sqrt (eps is below one step);
    the other is 20 to 33 in float but made in int8 as E[x^2] - E[x]^2, two numbers near 400 in steps of 3,
    which can cancel to zero. So the tensor where int8 rounds the divisor (the divisor, or what a Sqrt or a
    reshape before it reads) becomes Max(tensor, max / DIVISOR_STEPS) for that reader: the same value
    wherever int8 can tell it from zero, and in float wherever the data stays above it. Rewrites the graph at
    `path`; returns the divisions floored."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from edgesdk.sources.inputs import feed_rows
    model = onnx.load(str(path))
    graph = model.graph
    constant = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    producer = {o: (i, n) for i, n in enumerate(graph.node) for o in n.output}
    floors = {}  # reader's index -> (the division it feeds, the tensor to floor)
    for i, node in enumerate(graph.node):
        k = 1 if node.op_type == "Div" else 0 if node.op_type == "Reciprocal" else None
        if k is None or len(node.input) <= k or node.input[k] in constant:
            continue
        reader, t = i, node.input[k]
        while t in producer and producer[t][1].op_type in MONOTONE:
            reader, t = producer[t][0], producer[t][1].input[0]
        if t not in constant:
            floors[reader] = (node.name or node.op_type, t)
    if not floors:
        return []
    try:  # float tensors only (shape arithmetic divides integers, and int8 never sees it)
        typed = onnx.shape_inference.infer_shapes(model).graph
        floats = {v.name for v in list(typed.value_info) + list(typed.input) + list(typed.output)
                  if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
        floors = {r: f for r, f in floors.items() if f[1] in floats}
        if not floors:
            return []
        probe = onnx.load(str(path))
        wanted = sorted({t for _, t in floors.values()})
        outputs = {o.name for o in probe.graph.output}
        probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                                  for t in wanted if t not in outputs)
        with captured_output():
            session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        low, high = {t: np.inf for t in wanted}, {t: 0.0 for t in wanted}
        for i in range(len(x)):
            for t, v in zip(wanted, session.run(wanted, feed_rows(x, i, i + 1, names))):
                low[t], high[t] = min(low[t], float(np.min(v))), max(high[t], float(np.max(v)))
    except Exception:  # the graph's own check (onnx2tf, the runtime) says what is wrong with it
        return []
    changed, before = [], {}  # the Max each reader reads, placed just before it (its input exists there)
    for reader, (division, t) in sorted(floors.items()):
        if not (low[t] >= 0 and high[t] > 0):  # a divisor of either sign has no floor to keep
            continue
        floor = f"edgesdk_divisor_floor_{len(changed)}"
        graph.initializer.append(numpy_helper.from_array(np.array(high[t] / DIVISOR_STEPS, np.float32), floor))
        before[reader] = helper.make_node("Max", [t, floor], [f"{floor}_out"], name=f"{floor}_max")
        node = graph.node[reader]
        node.input[list(node.input).index(t)] = f"{floor}_out"
        changed.append(division)
    if changed:
        nodes = [m for i, n in enumerate(graph.node) for m in ((before[i], n) if i in before else (n,))]
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return changed


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
    from edgesdk.targets.arm_cpu import float_compute_ops
    float_ops = tflite_int8.structure(flatbuffer).coverage()["float_ops"]
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
