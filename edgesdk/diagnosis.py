"""When int8 fails the gate: which layers lose the most, and which exclusion actually repairs the failure.

The route's debugger ranks layers by their own quantization error. That ranking
can point the wrong way (a detector's backbone convolutions, when the scores
collapse in the head's final Concat), so for ONNX artifacts the strongest
candidates, the op that produces each failing output among them, are each kept
in float in turn and the failing checks measured again on the same samples.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from .data import artifact_layout, to_artifact_layout

SAMPLES = 32
CANDIDATES = 4
# ops that only move or re-label values: the op that made an output's values sits behind them
PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
                "Identity"}


def diagnose(source, recipe, profile, calib, val, artifact_path: Path, reference, figures, io) -> tuple:
    """(rows, hint) for the validation error; never raises (it must not hide the failure itself)."""
    from edgesdk.converters import get_route, onnx_int8
    try:
        if recipe.format == "onnx" and source.float_onnx:
            name = _input_name(source)
            rows = onnx_int8.diagnose(source.float_onnx, artifact_path, val.x[:SAMPLES], name,
                                      excluded=recipe.exclude_nodes)
            failing = [c for c in figures["checks"] if c["verdict"] == "fail" and "value" in c]
            tails = _output_producers(artifact_path, {c["output"] for c in failing if c.get("output") is not None})
            candidates = list(dict.fromkeys(tails + [r["node"] for r in rows]))[:CANDIDATES]
            measured = _measure(source, recipe, profile, calib, val, reference, failing, candidates, name, io,
                                artifact_path)
            if measured:
                ops = {r["node"]: r["op"] for r in rows}
                ops.update(tails_ops(artifact_path, tails))
                for m in measured:
                    m["op"] = ops.get(m["node"], "")
                return measured, onnx_int8.MEASURED_HINT
            return rows, onnx_int8.DIAGNOSIS_HINT
        if recipe.format == "tflite":
            route = get_route(source.framework, "tflite")
            x = to_artifact_layout(val.x[:SAMPLES], source.layout, artifact_layout(source.layout, recipe.layout))
            return route.diagnose(source, recipe, calib, x), route.DIAGNOSIS_HINT
    except Exception as exc:
        return [{"error": f"diagnostics failed: {exc}"}], ""
    return [], ""


def _input_name(source) -> str:
    if source.framework == "onnx":
        return source.input_name
    import onnx
    return onnx.load(str(source.float_onnx)).graph.input[0].name


def _graph(path):
    import onnx
    graph = onnx.load(str(path)).graph
    return graph, {o: n for n in graph.node for o in n.output}


def _output_producers(artifact_path, outputs: set) -> list:
    """The node that computes each of these outputs, looking through Q/DQ and layout ops."""
    graph, producer = _graph(artifact_path)
    found = []
    for i in sorted(outputs):
        node = producer.get(graph.output[i].name)
        while node is not None and node.op_type in PASS_THROUGH and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.name:
            found.append(node.name)
    return found


def tails_ops(artifact_path, names) -> dict:
    graph, _ = _graph(artifact_path)
    return {n.name: n.op_type for n in graph.node if n.name in set(names)}


def _measure(source, recipe, profile, calib, val, reference, failing, candidates, input_name, io,
             artifact_path) -> list:
    """Each candidate kept in float: the failing checks again, on the first SAMPLES samples."""
    from edgesdk.converters import onnx_int8
    from edgesdk.onnx_artifact import ONNXArtifact
    from .validation import judge, match_outputs
    if not failing or not candidates:
        return []
    x = val.x[:SAMPLES]
    labels = None if val.y is None else val.y[:SAMPLES]
    ref = [r[:SAMPLES] for r in reference]
    keys = [(c["check"], c.get("output")) for c in failing]

    def measured(path) -> dict:
        art = ONNXArtifact(path)
        outs, _ = match_outputs(ref, io.output_names, art.predict(x), art.output_names)
        checks = judge(ref, outs, labels, io=io, task=recipe.task, thresholds=recipe.thresholds())["checks"]
        return {(c["check"], c.get("output")): c for c in checks}
    base = measured(artifact_path)  # the same samples as the trials, so the figures compare
    failing = [base[k] for k in keys if k in base and base[k].get("value") is not None]
    keys = [(c["check"], c.get("output")) for c in failing]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesdk-diagnosis-") as tmp:
        for node in candidates:
            trial = replace(recipe, exclude_nodes=tuple(recipe.exclude_nodes) + (node,))
            path = Path(tmp) / "trial.onnx"
            path.write_bytes(onnx_int8.quantize(Path(source.float_onnx), trial, profile, calib, input_name)[0])
            after = measured(path)
            parts, gain = [], 0.0
            for before, key in zip(failing, keys):
                now = after.get(key)
                if now is None or now.get("value") is None:
                    continue
                span = abs(before["threshold"] - before["value"]) or 1.0
                moved = (now["value"] - before["value"]) * (1 if before["at_least"] else -1)
                gain += moved / span
                parts.append(f"{before['check']} {_show(before['value'])} -> {_show(now['value'])}")
            rows.append({"node": node, "gain": round(gain, 3), "measured_on": len(x),
                         "detail": f"kept in float: {', '.join(parts)}"})
    rows.sort(key=lambda r: -r["gain"])
    return rows


def _show(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
