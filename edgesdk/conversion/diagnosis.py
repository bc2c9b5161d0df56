"""When int8 fails the gate: which layers lose the most, and which exclusion actually repairs the failure.

The route's debugger ranks layers by their own quantization error. That ranking
can point the wrong way (a detector's backbone convolutions, when the scores
collapse in the head's final Concat), so the strongest candidates are each kept
in float in turn and the failing checks measured again on the same samples:
the op that produces each failing output, the debugger's worst layers, every
op type but the weight-heavy ones (what rescues a byte classifier whose
elementwise ops cannot share int8 scales), the front end (an audio model's
STFT, whose range int8 cannot hold), the stem (a CNN's first layers), and the layers that first read an input
whose range int8 cannot hold, with the input float; int16 activations are measured beside
them where the route makes them and the target runs them. Routes that can keep layers in
float say so (Route.excludes_layers); profiles that forbid it (the Edge TPU) get
the debugger's ranking only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgesdk.errors import EdgeSDKError
from edgesdk.sources.data import artifact_layout
from edgesdk.sources.inputs import artifact_outputs, to_artifact_layout
from .mixed_precision import (Candidate, Trials, front_end, input_boundary, non_weight_op_types, output_producers,
                              output_regions, quantized_readers, stem, untouched)

SAMPLES = 32           # for the debuggers, which keep every intermediate tensor
MEASURE_SAMPLES = 256  # for the measured trials: one flip in 32 would be 3 points of agreement
CANDIDATES = 4         # single layers measured (the op-type group comes on top)
MIN_GAIN = 0.05        # below this share of the way to the threshold, a candidate changed nothing


def failing_checks(figures) -> list:
    return [c for c in figures["checks"] if c["verdict"] != "pass" and c.get("value") is not None]


def candidates(trials: Trials, recipe, artifact_path: Path, x, failing) -> tuple:
    """(candidates to measure, the debugger's rows): output producers, the debugger's worst, the op-type group,
    the front end, the regions only a failing output depends on, the stem."""
    rows = trials.debugger_rows(artifact_path, x, recipe)
    outputs = {c["output"] for c in failing if c.get("output") is not None}
    producers = output_producers(artifact_path, recipe.format, outputs)
    plain = untouched(artifact_path, recipe.format, trials.quantized_ops)
    read = quantized_readers(artifact_path) if recipe.format == "onnx" and plain else {}
    singles = list(producers)
    for r in rows:  # a tensor whose producer the quantizer left alone: the layers that read it rounded
        readers = read.get(r.get("tensor"), ()) if r["node"] in plain else ()
        singles += [Candidate(nodes=(n,)) for n in readers] or [Candidate(nodes=(r["node"],), op=r.get("op", ""))]
    # what the quantizer left alone stays as it is when kept in float: measuring it would change nothing
    seen, picked = set(recipe.exclude_nodes) | plain, []
    for c in singles:
        if c.nodes[0] not in seen:
            seen.add(c.nodes[0])
            picked.append(c)
    picked = picked[:CANDIDATES]
    group = non_weight_op_types(artifact_path, recipe.format)
    if group is not None and not set(group.op_types) <= set(recipe.exclude_op_types):
        picked.append(group)
    front = front_end(artifact_path, recipe.format)
    if front is not None and not set(front.nodes) <= seen:
        picked.append(front)
    picked += [r for r in output_regions(artifact_path, recipe.format, outputs) if not set(r.nodes) <= seen]
    first = stem(artifact_path, recipe.format)
    if first is not None and not set(first.nodes) <= seen and first.nodes != getattr(front, "nodes", None):
        picked.append(first)
    return picked, rows


def diagnose(run) -> tuple:
    """(rows, hint) for the conversion run's failing artifact (run.tmp, judged run.figures); never raises (it
    must not hide the failure itself)."""
    source, recipe, val, artifact_path = run.source, run.recipe, run.val, run.tmp
    try:
        if recipe.format not in ("onnx", "tflite") or (recipe.format == "onnx" and not source.float_onnx):
            return [], ""
        trials = Trials(source, recipe, run.profile, run.calib)
        layout = artifact_layout(source.layout, recipe.layout)
        x = to_artifact_layout(val.x[:SAMPLES], source, layout)
        failing = failing_checks(run.figures)
        if not (trials.excludes and failing):
            return trials.debugger_rows(artifact_path, x, recipe), trials.hint
        picked, rows = candidates(trials, recipe, artifact_path, x, failing)
        boundary = input_boundary(artifact_path, recipe.format, run.skewed) if run.skewed else None
        if boundary is not None:  # an input int8 cannot hold: what reads it, in float (the ladder's first rung)
            picked.insert(0, boundary)
        if trials.int16:  # the lever beside float (the recovery ladder tries it as a rung of its own)
            picked.append(Candidate(int16=True))
        run.progress.step(f"  measuring what keeping each of {len(picked)} candidates in float repairs")
        measured = measure(recipe, trials, val, run.reference, failing, picked, run.io, artifact_path, source,
                           layout, progress=run.progress)
        return (measured, trials.measured_hint) if measured else (rows, trials.hint)
    except Exception as exc:
        return [{"error": f"diagnostics failed: {exc}"}], ""


def gain(before_checks, after: dict) -> float:
    """How far the failing checks moved towards their thresholds, in shares of the distance (summed). Reaching
    a threshold is the whole way: past it a check wins nothing more, or a check that missed by a hair (an
    inconclusive precision of 0.905 against 0.9) outweighs every other (YOLOv8n's corrected rounding: that
    precision to 1.0 counted 19 shares, while its recall fell from 0.68 to 0.32)."""
    total = 0.0
    for before in before_checks:
        now = after.get((before["check"], before.get("output")))
        if now is None or now.get("value") is None:
            continue
        span = abs(before["threshold"] - before["value"]) or 1.0
        total += min(1.0, (now["value"] - before["value"]) * (1 if before["at_least"] else -1) / span)
    return total


def measure(recipe, trials, val, reference, failing, picked, io, artifact_path, source, layout,
            progress=None) -> list:
    """Each candidate kept in float: the failing checks again, on the same first MEASURE_SAMPLES samples.
    progress (edgesdk.progress.Progress), if given, hears of each as it is measured (on a detector, minutes
    apart) and draws each run over the samples (a layout detector's: 70 s for 24 pages)."""
    bar = progress.bar("measuring") if progress is not None else None
    from edgesdk.artifacts.inspection import open_artifact
    from edgesdk.judge.validation import judge, match_outputs
    from .host_tail import read_as_source
    x = to_artifact_layout(val.x[:MEASURE_SAMPLES], source, layout)
    labels = None if val.labels is None else val.labels[:len(x)]
    ref = [r[:len(x)] for r in reference]
    keys = [(c["check"], c.get("output")) for c in failing]

    def measured(path) -> dict:
        art = read_as_source(open_artifact(path, format=recipe.format, exact=recipe.int8_arithmetic == "exact"),
                             source, recipe, val.x[:len(x)], x)
        outs, _ = match_outputs(ref, io.output_names, artifact_outputs(art, x, source, ref, bar),
                                art.output_names)
        checks = judge(ref, outs, labels, io=io, task=recipe.task, thresholds=recipe.thresholds())["checks"]
        return {(c["check"], c.get("output")): c for c in checks}
    base = measured(artifact_path)  # the same samples as the trials, so the figures compare
    before_all = [base[k] for k in keys if k in base and base[k].get("value") is not None]
    rows = []

    def heard(cand, what):
        if progress is not None:
            label = cand.label if len(cand.label) <= 70 else cand.label[:67] + "..."
            progress.step(f"    {label}: {what}")
    with tempfile.TemporaryDirectory(prefix="edgesdk-diagnosis-") as tmp:
        for cand in picked:
            path = Path(tmp) / f"trial.{recipe.format}"
            try:
                path.write_bytes(trials.convert(cand.applied(recipe)))
            except EdgeSDKError:
                heard(cand, f"cannot be made on this route ({cand.what})")
                continue
            after = measured(path)
            parts = [f"{check_name(b, before_all)} {_show(b['value'])} -> "
                     f"{_show(after[(b['check'], b.get('output'))]['value'])}"
                     for b in before_all if after.get((b["check"], b.get("output")), {}).get("value") is not None]
            single = len(cand.nodes) == 1 and not cand.op_types
            node = cand.nodes[0] if single else cand.label if cand.nodes or cand.op_types else "whole graph"
            rows.append({"node": node, "op": cand.op,
                         "nodes": list(cand.nodes), "op_types": list(cand.op_types),
                         "gain": round(gain(before_all, after), 3), "measured_on": len(x),
                         "detail": f"{cand.what}: {', '.join(parts)}" + ("" if single else f" ({cand.flags})")})
            heard(cand, ", ".join(parts) or "nothing measurable changed")
    rows.sort(key=lambda r: -r["gain"])
    return rows


def check_name(check: dict, checks: list) -> str:
    """A check's name, with its output where another of `checks` has the same name (Basic Pitch's three
    decisions' F1, one an output, read as one figure twice over without it)."""
    twins = sum(c["check"] == check["check"] for c in checks) > 1
    return check["check"] + (f" [output {check['output']}]" if twins and check.get("output") is not None else "")


def _show(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
