"""Route: ONNX -> static int8 ONNX (QDQ), and the int8 step the other ONNX routes end with.

ONNX Runtime's quantize_static in QDQ format: int8 weights and activations,
per-channel weights where the profile allows, MinMax/Entropy/Percentile
calibration. Shape inference (and an opset upgrade to 13 when per-channel
needs it) runs first. Jetson profiles get symmetric activations, as TensorRT
requires.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

from edgesdk.artifacts.onnx_artifact import DISABLED_OPTIMIZERS, WEIGHT_OPS
from edgesdk.errors import ConversionError, OptionError
from edgesdk.sources.inputs import Inputs, feed_rows
from edgesdk.targets import get_family
from edgesdk.util import captured_output, first_line, working_directory

from .onnx_histograms import ranges_found_first
from .onnx_model import input_names
from .route import Route

PER_CHANNEL_MIN_OPSET = 13


def _reader(x, names, progress):
    """ONNX Runtime's calibration reader over x, one sample a call; set_range lets quantize_static take it in
    chunks (CalibStridedMinMax), which is how a histogram calibrator's held tensors stay bounded."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i, self.end = 0, len(x)

        def __len__(self):
            return len(x)

        def set_range(self, start_index, end_index):
            self.i, self.end = start_index, min(end_index, len(x))

        def get_next(self):
            if self.i >= self.end:
                return None
            self.i += 1
            if progress:
                progress(self.i, len(x))
            return feed_rows(x, self.i - 1, self.i, names)

        def rewind(self):
            self.i, self.end = 0, len(x)
    return Reader()


def activation_bytes(path: Path) -> int:
    """Bytes of one sample's intermediate tensors, from the shapes inferred in the graph (what a calibrator or
    a debugger that exposes every tensor holds per sample)."""
    import numpy as np
    import onnx
    from onnx import helper
    model = onnx.load(str(path), load_external_data=False)
    if not model.graph.value_info:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:
            return 0
    total = 0
    for info in list(model.graph.value_info) + list(model.graph.output):
        t = info.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if t.elem_type and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    return total


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def prepare(float_path: Path, out_path: Path, per_channel: bool) -> list:
    """Shape inference and, where per-channel needs it, an opset upgrade. Returns notes."""
    import onnx
    _import_ort_tools_without_torch()
    from onnxruntime.quantization.shape_inference import quant_pre_process
    notes = []
    model = onnx.load(str(float_path))
    if per_channel and _opset(model) < PER_CHANNEL_MIN_OPSET:
        from onnx import version_converter
        try:
            model = version_converter.convert_version(model, PER_CHANNEL_MIN_OPSET)
        except Exception as exc:
            raise ConversionError(f"Per-channel int8 needs opset >= {PER_CHANNEL_MIN_OPSET}, and upgrading this "
                                  f"model from opset {_opset(model)} failed: {exc}") from None
        notes.append(f"opset upgraded from {_opset(onnx.load(str(float_path)))} to {PER_CHANNEL_MIN_OPSET} for "
                     f"per-channel weights")
        upgraded = out_path.with_suffix(".opset.onnx")
        onnx.save(model, str(upgraded))
        float_path = upgraded
    try:
        with captured_output(), working_directory(out_path.parent):
            quant_pre_process(str(float_path), str(out_path), skip_symbolic_shape=False)
    except Exception:
        # ONNX Runtime's symbolic shape inference gives up on some exporters' graphs
        # (e.g. Concat on a non-zero axis of a shape tensor); ONNX's own inference suffices.
        try:
            with captured_output(), working_directory(out_path.parent):
                quant_pre_process(str(float_path), str(out_path), skip_symbolic_shape=True)
        except Exception as exc:
            first = first_line(exc)
            raise ConversionError(f"Preparing the ONNX model for quantization failed: {first[:300]}") from None
        notes.append("symbolic shape inference failed; used ONNX shape inference only")
    _unshare_weights(out_path)
    return notes


def _import_ort_tools_without_torch() -> None:
    """ONNX Runtime's shape inference lives in onnxruntime.tools, whose __init__ imports PyTorch whenever it is
    installed (for an export helper nothing here calls): 280 MB and a second of an ONNX-only conversion. A
    None in sys.modules makes its find_spec("torch") answer None; a PyTorch source has imported it already."""
    import sys
    if "onnxruntime.tools" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None
    try:
        import onnxruntime.tools  # noqa: F401
    finally:
        del sys.modules["torch"]


def _unshare_weights(path: Path) -> None:
    """A weight or bias that several layers share (tf2onnx folds equal constants into one: Basic Pitch's
    convolutions share one zero bias) gets a copy per layer: ONNX Runtime's quantizer rewrites an
    initializer for the layer it quantizes it for, with that layer's scales, and the others then read a
    tensor of the wrong size."""
    import onnx
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    seen: dict = {}
    changed = False
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        for k, name in enumerate(node.input):
            if k == 0 or name not in inits:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or seen[name]}"
                graph.initializer.append(copy)
                node.input[k] = copy.name
                changed = True
    if changed:
        onnx.save(model, str(path))


def _exclusions(model_path: Path, recipe) -> dict:
    """quantize_static arguments for the user's exclusions, checked against the graph."""
    import difflib

    import onnx
    if not (recipe.exclude_nodes or recipe.exclude_op_types):
        return {}
    nodes = onnx.load(str(model_path)).graph.node
    names = [n.name for n in nodes]
    for name in recipe.exclude_nodes:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise OptionError(f"--exclude-nodes: the graph has no node '{name}'.{hint} The validation error "
                              f"lists the nodes that lose the most accuracy, by name.")
    kwargs = {"nodes_to_exclude": list(recipe.exclude_nodes)}
    if recipe.exclude_op_types:
        present = sorted({n.op_type for n in nodes})
        missing = [t for t in recipe.exclude_op_types if t not in present]
        if missing:
            raise OptionError(f"--exclude-op-types: the graph has no {', '.join(missing)} ops "
                              f"(it has {', '.join(present)}).")
        kwargs["op_types_to_quantize"] = [t for t in present if t not in recipe.exclude_op_types]
    return kwargs


def _placement(model_path: Path, recipe, settings: dict, extra: dict) -> dict:
    """quantize_static arguments for a family that wants Q/DQ only on the inputs of its weighted layers
    (settings["quantize_inputs_of"]): TensorRT fuses a layer with the elementwise ops after it and runs them
    at higher precision, so a Q/DQ on each op's output only adds rounding (on a YOLOv8n, a quantization
    point after the convolution, the sigmoid and the product of each SiLU instead of one). A graph without
    such layers keeps the default placement, every op quantized."""
    wanted = settings.get("quantize_inputs_of")
    if not wanted:
        return {}
    import onnx
    present = {n.op_type for n in onnx.load(str(model_path)).graph.node}
    weighted = [t for t in wanted if t in present and t not in recipe.exclude_op_types]
    if not weighted:
        return {}
    extra["OpTypesToExcludeOutputQuantization"] = weighted
    return {"op_types_to_quantize": weighted}


def _round_weights(model_path: Path, recipe, per_channel: bool, x) -> dict | None:
    """The prepared model's (batch norms folded) weights onto their int8 grid, kernel sums kept and
    biases corrected (weight_rounding.py). None when the recipe rounds to nearest."""
    if recipe.weight_rounding != "corrected":
        return None
    import onnx

    from .weight_rounding import round_onnx
    model = onnx.load(str(model_path))
    skip = tuple(recipe.exclude_nodes) + tuple(n.name for n in model.graph.node
                                               if n.op_type in recipe.exclude_op_types)
    done = round_onnx(model, per_channel, skip_nodes=skip, x=x)
    if done["layers"]:
        onnx.save(model, str(model_path))
    return done


def quantize(float_path: Path, recipe, profile, calibration, progress=None,
             quirks: dict | None = None, stats: dict | None = None) -> tuple:
    """Float ONNX file -> (int8 QDQ ONNX bytes, notes).

    `quirks` (updated in place) remembers the workarounds this model needed, so
    quantizing it again (another calibration, other layers in float) skips the failed tries.
    `stats`, when given, gets "weight_rounding": what weight_rounding.py corrected.
    """
    quirks = {} if quirks is None else quirks
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    x = calibration.x[: recipe.calibration_samples]
    with tempfile.TemporaryDirectory(prefix="edgesdk-onnx-") as tmp:
        pre = Path(tmp) / "prepared.onnx"
        out = Path(tmp) / "int8.onnx"
        notes = prepare(float_path, pre, recipe.per_channel)
        excluded = _exclusions(pre, recipe)
        if quirks.get("unrunnable"):  # found by an earlier quantization of this model
            excluded["nodes_to_exclude"] = list(excluded.get("nodes_to_exclude", [])) + quirks["unrunnable"]
        # the corrected rounding's graph is calibrated on its own: its bias corrections move the activations,
        # and the float graph's ranges cost YOLOX's int8 for the Jetson 4 points of recall (0.93 -> 0.89)
        rounded = _round_weights(pre, recipe, recipe.per_channel and not quirks.get("per_tensor", False), x)
        if stats is not None:
            stats["weight_rounding"] = rounded
        settings = get_family(profile.family).quantizer_settings(profile, "onnx")
        extra = {"ActivationSymmetric": settings.get("activation_symmetric", False),
                 "QDQDisableWeightAdjustForInt32Bias": quirks.get("no_bias_weight_adjust", False),
                 "QuantizeBias": not settings.get("float_bias", False)}
        excluded.update(_placement(pre, recipe, settings, extra))
        per_channel = recipe.per_channel and not quirks.get("per_tensor", False)

        histograms = recipe.calibration_method != "minmax"
        if histograms:  # every tensor of every sample held, unless taken a sample at a time
            x, note = _histogram_samples(x, activation_bytes(pre))
            extra["CalibStridedMinMax"] = 1  # the ranges found first: the same histograms whatever the chunk
            if note:
                notes.append(note)

        def run():
            cache = calibration_cache(pre, x, recipe, extra, excluded.get("op_types_to_quantize"))
            reader = _reader(x, input_names(pre), progress)
            # ONNX Runtime writes scratch files in the cwd
            with captured_output(), working_directory(tmp), \
                    ranges_found_first(reader) if histograms else nullcontext():
                quantize_static(str(pre), str(out), reader,
                                quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QInt16 if recipe.activations == "int16" else QuantType.QInt8,
                                weight_type=QuantType.QInt8, per_channel=per_channel,
                                calibrate_method=methods[recipe.calibration_method], extra_options=extra,
                                calibration_cache_path=str(cache), **excluded)
        try:
            try:
                run()
            except ValueError as exc:
                if "truth value of an array" not in str(exc):
                    raise
                # ONNX Runtime's int32-bias weight-scale adjustment fails on per-tensor scales of some
                # per-channel graphs; the quantization is valid without that adjustment.
                extra["QDQDisableWeightAdjustForInt32Bias"] = quirks["no_bias_weight_adjust"] = True
                notes.append("ONNX Runtime's weight-scale adjustment for int32 biases failed on this graph; "
                             "quantized without it")
                run()
            problem = _runs(out, x)
            if problem and per_channel:
                # some graphs get per-channel scales on tensors ONNX Runtime can only take per-tensor
                notes.append(f"per-channel int8 made a model ONNX Runtime cannot run ({problem[:160]}); "
                             f"quantized per-tensor instead")
                per_channel, quirks["per_tensor"] = False, True
                run()
                problem = _runs(out, x)
            # a node ONNX Runtime names as the one it cannot run quantized stays float, and so on, a few times
            # (Basic Pitch's CQT: a Concat of a shape-like tensor, a Conv1D's bias)
            kept = list(quirks.get("unrunnable", []))
            while problem and len(kept) < MAX_UNRUNNABLE:
                node = _named_node(problem, pre)
                if node is None or node in excluded.get("nodes_to_exclude", []):
                    break
                kept.append(node)
                quirks["unrunnable"] = kept
                excluded["nodes_to_exclude"] = list(excluded.get("nodes_to_exclude", [])) + [node]
                run()
                problem = _runs(out, x)
            if kept and not problem:
                notes.append(f"ONNX Runtime cannot run {', '.join(kept)} quantized; left in float")
            if problem:
                raise ConversionError(f"ONNX Runtime quantized the model, but cannot run the result: {problem}. "
                                      f"Try --exclude-op-types with the op named there.")
        except ConversionError:
            raise
        except Exception as exc:
            first = first_line(exc)
            raise ConversionError(f"ONNX Runtime could not quantize the model: {first[:400]}") from None
        return out.read_bytes(), notes


RANGES_KEPT = 16  # calibrations kept: the ladder's rungs and the diagnosis's candidates reuse them
_RANGES = tempfile.TemporaryDirectory(prefix="edgesdk-onnx-ranges-")


def calibration_cache(prepared: Path, x, recipe, extra: dict, op_types) -> Path:
    """Where ONNX Runtime keeps (and finds) the tensor ranges of this graph on this data: a tensor's range is
    the float graph's, whatever the recipe keeps in float or how it places Q/DQ, so the recovery ladder and
    the diagnosis calibrate once per graph, data and method instead of once per trial (a minute a trial on
    PP-OCRv4's recognizer). The key: the prepared graph's bytes (corrected weight rounding changes them),
    the data, the method and its options, the op types calibrated."""
    import hashlib
    import json

    import numpy as np
    digest = hashlib.sha256(prepared.read_bytes())
    for name, a in sorted(x.items()) if isinstance(x, Inputs) else [("", x)]:
        a = np.ascontiguousarray(a)
        digest.update(f"{name}{a.shape}{a.dtype}".encode())
        digest.update(memoryview(a).cast("B"))
    digest.update(json.dumps([recipe.calibration_method, recipe.activations, sorted(op_types or []),
                              {k: v for k, v in extra.items() if k.startswith("Calib")}], default=str).encode())
    folder = Path(_RANGES.name)
    path = folder / f"{digest.hexdigest()[:32]}.json"
    if path.exists():
        path.touch()  # the most recently used stay
    else:
        for old in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-RANGES_KEPT + 1]:
            old.unlink()
    return path


# ONNX Runtime's histogram calibrators (percentile, entropy) bin every value of every tensor in Python: about
# 1.6 s a sample on PP-OCRv4's recognizer (207 MB of tensors a sample), 100 s a rung of the recovery ladder.
# Their bins hold millions of values a tensor after this many samples, or after this many bytes of values.
HISTOGRAM_SAMPLES = 64
HISTOGRAM_BYTES = 4 << 30
MIN_HISTOGRAM_SAMPLES = 16


def _histogram_samples(x, per_sample: int) -> tuple:
    """(the samples a histogram calibrator takes, a note or None): at most HISTOGRAM_SAMPLES and HISTOGRAM_BYTES
    of tensors (never under MIN_HISTOGRAM_SAMPLES). It holds one sample's tensors at a time (onnx_histograms)."""
    used = min(len(x), HISTOGRAM_SAMPLES, max(MIN_HISTOGRAM_SAMPLES, HISTOGRAM_BYTES // max(per_sample, 1)))
    if used == len(x):
        return x, None
    return x[:used], f"histogram calibration on {used} of {len(x)} samples"


MAX_UNRUNNABLE = 8  # nodes left float because ONNX Runtime cannot run them quantized, before giving up


def _runs(path: Path, x) -> str | None:
    """_run_error, after dropping the shapes recorded during preparation when they went stale once Q/DQ
    nodes were inserted."""
    problem = _run_error(path, x[:1])
    if problem and "ShapeInferenceError" in problem:
        _drop_recorded_shapes(path)
        problem = _run_error(path, x[:1])
    return problem


def _named_node(problem: str, graph_path: Path) -> str | None:
    """The float graph's node that ONNX Runtime's error names ("Node (NAME)", "Name:'NAME'"), if any."""
    import re

    import onnx
    names = {n.name for n in onnx.load(str(graph_path)).graph.node}
    for found in re.findall(r"Node \(([^)]+)\)|Name:'([^']+)'", problem):
        name = found[0] or found[1]
        if name in names:
            return name
    return None


def _drop_recorded_shapes(path: Path) -> None:
    import onnx
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def _run_error(path: Path, x) -> str | None:
    """None if ONNX Runtime loads and runs the model on one sample, else the first line of why not."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the reason is returned, not printed
    try:
        with captured_output():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=DISABLED_OPTIMIZERS)
            session.run(None, feed_rows(x, 0, 1, input_names(path)))
    except Exception as exc:
        return first_line(exc)[:300]
    return None


def to_fp16(float_path: Path) -> bytes:
    """fp16 weights and compute, float32 at the graph boundary (Casts inserted): half the size."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    with captured_output():
        model = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
    return model.SerializeToString()


def from_export(source, export_float, recipe, calibration, progress=None, profile=None) -> bytes:
    """The ONNX routes from a framework: export_float(source, path), then the int8 step.

    The float export stays beside the source: the accuracy diagnostics compare against it.
    """
    tmp = tempfile.TemporaryDirectory(prefix="edgesdk-onnx-export-")
    float_path = Path(tmp.name) / "float.onnx"
    export_float(source, float_path)
    source.float_onnx, source.keepalive = str(float_path), tmp
    if recipe.quantization == "fp16":
        return to_fp16(float_path)
    if recipe.quantization != "int8":
        return float_path.read_bytes()
    stats = {}
    data, notes = quantize(float_path, recipe, profile, calibration, progress, source.quantizer_quirks,
                           stats)
    source.weight_rounding = stats.get("weight_rounding")
    source.notes.extend(notes)
    return data


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    """An ONNX source: its (shape-fixed) float model, quantized unless the recipe keeps it float."""
    if recipe.quantization == "fp16":
        return to_fp16(Path(source.float_onnx))
    if recipe.quantization != "int8":
        return Path(source.float_onnx).read_bytes()
    stats = {}
    out, notes = quantize(Path(source.float_onnx), recipe, profile, calibration, progress,
                          source.quantizer_quirks, stats)
    source.weight_rounding = stats.get("weight_rounding")
    source.notes.extend(notes)
    return out


MIN_DEBUG_SAMPLES = 8  # a debugger that saves its tensors in k groups takes 1/k of the samples, never fewer


def diagnose(float_path, qdq_path, x, worst: int = 5, excluded=()) -> list:
    """The activations that lose the most to quantization, worst first.

    ONNX Runtime's QDQ loss debugging: both models run with every intermediate tensor exposed; for each
    quantized activation, `qdq_sqnr_db` is the error its own Q/DQ pair adds and `xmodel_sqnr_db` the error
    accumulated up to it against the float model. Streamed: one sample at a time, each tensor's signal and
    noise energies summed (the library's collect_activations keeps every tensor of every sample: 400 MB a
    sample on PP-OCRv4's recognizer). Where one sample's tensors do not fit the memory budget
    (edgesdk.memory), they are saved in groups that do: both models run once per group, exposing only that
    group's tensors, and the debugger takes a share of the samples (memory and time kept where the machine
    must, a ranking from fewer samples the price).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (create_activation_matching,
                                                         modify_model_output_intermediate_tensors)
    energies: dict = {}  # tensor -> [pre, pre - post, float, float - post] squared norms, summed over samples
    with tempfile.TemporaryDirectory(prefix="edgesdk-qdq-debug-") as tmp:
        float_aug, qdq_aug = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        with captured_output():
            modify_model_output_intermediate_tensors(str(float_path), str(float_aug))
            modify_model_output_intermediate_tensors(str(qdq_path), str(qdq_aug))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as named
        options.enable_cpu_mem_arena = False  # what a group held goes back before the next
        options.log_severity_level = 3
        names = input_names(float_path)
        augmented = [onnx.load(str(p)) for p in (float_aug, qdq_aug)]
        groups = _tensor_groups(*augmented)
        x = x[:max(MIN_DEBUG_SAMPLES, -(-len(x) // len(groups)))]  # each group runs both models on every sample
        for k, group in enumerate(groups):
            paths = (float_aug, qdq_aug)
            if len(groups) > 1:
                paths = tuple(_saving_only(m, set(g), Path(tmp) / f"{side}.{k}.onnx")
                              for m, g, side in zip(augmented, group, ("float", "qdq")))
            sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
            for i in range(len(x)):
                feed = feed_rows(x, i, i + 1, names)
                float_acts, qdq_acts = (_activations(s, feed, g) for s, g in zip(sessions, group))
                _add_energies(energies, create_activation_matching(qdq_acts, float_acts))
            del sessions
    producers = {o: n for n in onnx.load(str(qdq_path)).graph.node for o in n.output}
    rows = []
    for tensor, (signal, noise, ref_signal, ref_noise, has_float) in energies.items():
        node = producers.get(tensor)
        if node is None or node.name in excluded or signal == 0:  # a graph input, kept in float, or all zero
            continue
        own = _db(signal, noise)
        # tensors the quantizer renamed have no float twin
        acc = _db(ref_signal, ref_noise) if has_float else float("nan")
        rows.append({"tensor": tensor, "node": node.name, "op": node.op_type,
                     "qdq_sqnr_db": round(own, 2), "xmodel_sqnr_db": round(acc, 2),
                     "detail": f"SQNR {own:.1f} dB own, {acc:.1f} dB accumulated"})
    rows.sort(key=lambda r: r["qdq_sqnr_db"])
    return rows[:worst]


def _add_energies(energies: dict, matching: dict) -> None:
    """One sample's [pre, pre - post, float, float - post] squared norms added to each tensor's sums."""
    import numpy as np
    for tensor, match in matching.items():
        pre, post = match["pre_qdq"][0].astype(np.float64), match["post_qdq"][0].astype(np.float64)
        ref = match["float"][0].astype(np.float64) if match.get("float") is not None else None
        sums = energies.setdefault(tensor, [0.0, 0.0, 0.0, 0.0, ref is not None])
        sums[0] += float(np.sum(pre ** 2))
        sums[1] += float(np.sum((pre - post) ** 2))
        if ref is not None and ref.shape == post.shape:
            sums[2] += float(np.sum(ref ** 2))
            sums[3] += float(np.sum((ref - post) ** 2))


def _tensor_groups(float_model, qdq_model) -> list:
    """The saved tensors of both augmented models, as [(float outputs, qdq outputs)] groups, each group's bytes
    for one sample within the memory budget; a tensor's float twin and its pre/post Q/DQ pair stay in one
    group. Sizes from the shapes the augmentation inferred (a graph of fixed sizes); a tensor of unknown size
    counts as the largest known."""
    import math

    from edgesdk.memory import budget
    from onnxruntime.quantization.qdq_loss_debug import (_POST_QDQ_POSTFIX1, _TENSOR_SAVE_POSTFIX,
                                                         DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX)

    def base(name: str) -> str:
        name = name[:-len(_TENSOR_SAVE_POSTFIX)]
        for suffix in (QUANT_INPUT_SUFFIX, DEQUANT_OUTPUT_SUFFIX, _POST_QDQ_POSTFIX1):
            if name.endswith(suffix):
                return name[:-len(suffix)]
        return name

    sizes, saved = {}, []
    for model in (float_model, qdq_model):
        graph = model.graph
        for v in list(graph.value_info) + list(graph.input) + list(graph.output):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            if dims and None not in dims:
                sizes.setdefault(v.name, math.prod(dims) * 4)
        saved.append([o.name for o in graph.output if o.name.endswith(_TENSOR_SAVE_POSTFIX)])
    largest = max(sizes.values(), default=1)
    by_base: dict = {}
    for side, outs in enumerate(saved):
        for name in outs:
            by_base.setdefault(base(name), ([], []))[side].append(name)
    # each saved tensor is held twice while a sample runs: the runtime's output and its numpy copy (counted
    # 766 MB on PP-OCRv4's recognizer, measured 1.5 GB)
    limit, groups, bytes_in = budget() // 2, [([], [])], 0
    for names in by_base.values():
        size = sum(sizes.get(n[:-len(_TENSOR_SAVE_POSTFIX)], largest) for side in names for n in side)
        if bytes_in and bytes_in + size > limit:
            groups.append(([], []))
            bytes_in = 0
        for side in (0, 1):
            groups[-1][side].extend(names[side])
        bytes_in += size
    return groups


def _saving_only(augmented, keep: set, path: Path) -> Path:
    """The augmented model saving only the tensors `keep` (the others' saving Reshapes removed, so the runtime
    frees those tensors as it goes), written to `path`."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX
    model = onnx.ModelProto()
    model.CopyFrom(augmented)
    graph = model.graph
    dropped = {o.name for o in graph.output if o.name.endswith(_TENSOR_SAVE_POSTFIX) and o.name not in keep}
    outputs = [o for o in graph.output if o.name not in dropped]
    nodes = [n for n in graph.node if not (len(n.output) == 1 and n.output[0] in dropped)]
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return path


def _activations(session, feed, outputs: list) -> dict:
    """One sample's intermediate tensors `outputs`, named as collect_activations names them, each as a one-item
    list."""
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX
    if not outputs:
        return {}
    return {n[:-len(_TENSOR_SAVE_POSTFIX)]: [v] for n, v in zip(outputs, session.run(outputs, feed))}


def _db(signal: float, noise: float) -> float:
    """SQNR in dB from summed squared norms, floored as the library floors them."""
    import math

    import numpy as np
    eps = float(np.finfo(float).eps)
    return 20 * math.log10(max(math.sqrt(signal), eps) / max(math.sqrt(noise), eps))


def debug(source, recipe, calibration, artifact_path, x) -> list:
    """The worst activations of an ONNX artifact against the float graph it was quantized from."""
    return diagnose(source.float_onnx, artifact_path, x, excluded=recipe.exclude_nodes)


# what the ONNX routes share: the routes from Keras and PyTorch export a float graph, then quantize it here
ONNX_INT8 = dict(
    requantize=convert,  # the float graph the first conversion left on the source, quantized again
    debug=debug,
    calibration_methods=("minmax", "percentile", "entropy"),  # the recovery ladder tries them in this order
    multi_input=True,  # calibration feeds every input by name
    int16_activations=True,  # --activations int16: QInt16 activations beside the int8 weights (opset 21 Q/DQ)
    excludes_layers=True,  # --exclude-nodes/--exclude-op-types keep nodes out of quantize_static
    corrected_rounding=True,  # --weight-rounding corrected: the float graph's weights rounded before quantize_static
    diagnosis_hint="Keep those in float with --exclude-nodes NAME[,NAME] or --exclude-op-types TYPE, or try "
                   "--calibration-method percentile or entropy.",
    measured_hint="Each was kept in float in turn and the failing figures measured again; keep the one that "
                  "repairs them with --exclude-nodes NAME (several: NAME,NAME), or --exclude-op-types TYPE.")

ROUTE = Route(format="onnx", sources={"onnx": {"onnx": "onnx", "onnxruntime": "onnx"}}, convert=convert, **ONNX_INT8)
