"""When int8 fails the gate: which layers lose the most, and which exclusion actually repairs the failure.

The route's debugger ranks layers by their own quantization error. That ranking
can point the wrong way (a detector's backbone convolutions, when the scores
collapse in the head's final Concat), so the strongest candidates, the op that
produces each failing output among them, are each kept in float in turn and the
failing checks measured again on the same samples. Routes that can keep layers
in float say so with EXCLUDES_LAYERS; profiles that forbid it (the Edge TPU)
get the debugger's ranking only.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from .data import artifact_layout, to_artifact_layout
from .errors import EdgeSDKError

SAMPLES = 32           # for the debuggers, which keep every intermediate tensor
MEASURE_SAMPLES = 256  # for the measured trials: one flip in 32 would be 3 points of agreement
CANDIDATES = 4
# ops that only move, re-label or re-type values: the op that made an output's values sits behind them
PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
                "Identity", "QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE"}


def diagnose(source, recipe, profile, calib, val, artifact_path: Path, reference, figures, io) -> tuple:
    """(rows, hint) for the validation error; never raises (it must not hide the failure itself)."""
    from edgesdk.converters import get_route, onnx_int8
    try:
        layout = artifact_layout(source.layout, recipe.layout)
        x = to_artifact_layout(val.x[:SAMPLES], source.layout, layout)
        if recipe.format == "onnx" and source.float_onnx:
            name = _onnx_input_name(source)
            rows = onnx_int8.diagnose(source.float_onnx, artifact_path, x, name, excluded=recipe.exclude_nodes)
            hint, measured_hint = onnx_int8.DIAGNOSIS_HINT, onnx_int8.MEASURED_HINT

            def trial(r):  # the float export is already beside the source: quantize it again
                return onnx_int8.quantize(Path(source.float_onnx), r, profile, calib, name)[0]
            excludes = onnx_int8.EXCLUDES_LAYERS
        elif recipe.format == "tflite":
            route = get_route(source.framework, "tflite")
            rows, hint = route.diagnose(source, recipe, calib, x), route.DIAGNOSIS_HINT
            measured_hint = getattr(route, "MEASURED_HINT", hint)

            def trial(r):
                return route.convert(source, r, calib, profile=profile)
            excludes = getattr(route, "EXCLUDES_LAYERS", False)
        else:
            return [], ""
        failing = [c for c in figures["checks"] if c["verdict"] == "fail" and c.get("value") is not None]
        if not (excludes and failing and _may_exclude(profile, recipe)):
            return rows, hint
        producers = _output_producers(artifact_path, recipe.format,
                                      {c["output"] for c in failing if c.get("output") is not None})
        candidates = list(dict.fromkeys([p for p, _ in producers] + [r["node"] for r in rows]))[:CANDIDATES]
        x_all = to_artifact_layout(val.x[:MEASURE_SAMPLES], source.layout, layout)
        measured = _measure(recipe, trial, x_all, val, reference, failing, candidates, io, artifact_path)
        ops = {r["node"]: r.get("op", "") for r in rows}
        ops.update(dict(producers))
        for m in measured:
            m["op"] = ops.get(m["node"], "")
        return (measured, measured_hint) if measured else (rows, hint)
    except Exception as exc:
        return [{"error": f"diagnostics failed: {exc}"}], ""


def _may_exclude(profile, recipe) -> bool:
    """Whether this profile lets layers stay float at all (asked of the recipe rules, not of a family name)."""
    from .recipe import make_recipe
    try:
        make_recipe(profile, format=recipe.format, exclude_nodes=("probe",), allow_float_fallback=True)
    except EdgeSDKError:
        return False
    return True


def _onnx_input_name(source) -> str:
    if source.framework == "onnx":
        return source.input_name
    import onnx
    return onnx.load(str(source.float_onnx)).graph.input[0].name


def _output_producers(artifact_path, fmt: str, outputs: set) -> list:
    """(name to exclude, op type) of the op that computes each of these outputs, through pass-through ops."""
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(artifact_path)).graph
        by_output = {o: (n.name, n.op_type, list(n.input)) for n in graph.node for o in n.output}
        outs = [o.name for o in graph.output]
    else:
        from .tflite_artifact import TFLiteArtifact
        art = TFLiteArtifact(artifact_path)
        # TFLite layers are named by their output tensor, as the converter's debugger names them
        by_output = {art.tensor_name(op["outputs"][0]): (art.tensor_name(op["outputs"][0]), op["op_name"],
                                                         [art.tensor_name(i) for i in op["inputs"] if i >= 0])
                     for op in art.ops() if op["outputs"]}
        outs = art.output_names
    found = []
    for i in sorted(outputs):
        node = by_output.get(outs[i])
        while node is not None and node[1] in PASS_THROUGH and node[2]:
            node = by_output.get(node[2][0])
        if node is not None and node[0]:
            found.append((node[0], node[1]))
    return found


def _measure(recipe, trial, x, val, reference, failing, candidates, io, artifact_path) -> list:
    """Each candidate kept in float: the failing checks again, on the same first len(x) samples."""
    from .inspection import open_artifact
    from .validation import judge, match_outputs
    labels = None if val.labels is None else val.labels[:len(x)]
    ref = [r[:len(x)] for r in reference]
    keys = [(c["check"], c.get("output")) for c in failing]

    def measured(path) -> dict:
        art = open_artifact(path, format=recipe.format)
        outs, _ = match_outputs(ref, io.output_names, art.predict(x), art.output_names)
        checks = judge(ref, outs, labels, io=io, task=recipe.task, thresholds=recipe.thresholds())["checks"]
        return {(c["check"], c.get("output")): c for c in checks}
    base = measured(artifact_path)  # the same samples as the trials, so the figures compare
    before_all = [base[k] for k in keys if k in base and base[k].get("value") is not None]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesdk-diagnosis-") as tmp:
        for node in candidates:
            r = replace(recipe, exclude_nodes=tuple(recipe.exclude_nodes) + (node,), allow_float_fallback=True)
            path = Path(tmp) / f"trial.{recipe.format}"
            try:
                path.write_bytes(trial(r))
            except EdgeSDKError:
                continue  # this layer cannot be kept in float on this route
            after = measured(path)
            parts, gain = [], 0.0
            for before in before_all:
                now = after.get((before["check"], before.get("output")))
                if now is None or now.get("value") is None:
                    continue
                span = abs(before["threshold"] - before["value"]) or 1.0
                gain += (now["value"] - before["value"]) * (1 if before["at_least"] else -1) / span
                parts.append(f"{before['check']} {_show(before['value'])} -> {_show(now['value'])}")
            rows.append({"node": node, "gain": round(gain, 3), "measured_on": len(x),
                         "detail": f"kept in float: {', '.join(parts)}"})
    rows.sort(key=lambda r: -r["gain"])
    return rows


def _show(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
