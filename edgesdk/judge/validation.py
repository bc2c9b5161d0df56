"""The gate: compare an artifact's outputs with the source model's on the same data, judged by task.

    match outputs (by name, then shape, then similarity) -> closeness figures for
    every output -> the task's own metric on the outputs it claims -> SQNR floor
    on every other output -> the user's metric, if any -> one verdict

Every check carries its interval; the verdict is pass only when every check
passes with the sample size at hand, fail when one fails for certain, and
inconclusive otherwise (it then says how many samples would settle it).
"""

from __future__ import annotations

import re

import numpy as np

from edgesdk.errors import OptionError, ValidationFailed
from .tasks import ModelIO, Thresholds, module, pick, regress


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def match_outputs(reference: list, reference_names: list, artifact: list, artifact_names: list) -> tuple:
    """Artifact outputs reordered to line up with the reference outputs, and how each was matched.

    By exact name, then by name ignoring case and punctuation, then by a shape no
    other output has; outputs left with the same shape are paired so that the
    total cosine similarity is largest (converters rename and reorder outputs).
    A channels-last artifact of a channels-first model (TFLite from ONNX) gives its 4-D maps NHWC:
    they are compared in the source's NCHW.
    """
    if len(reference) != len(artifact):
        raise ValidationFailed(f"The artifact has {len(artifact)} outputs but the source model has "
                               f"{len(reference)}; the conversion lost or added outputs.")
    shapes = {r.shape[1:] for r in reference}
    turned = [a.ndim == 4 and a.shape[1:] not in shapes and (a.shape[3],) + a.shape[1:3] in shapes
              for a in artifact]
    artifact = [a.transpose(0, 3, 1, 2) if t else a for a, t in zip(artifact, turned)]
    pairs, how = {}, {}
    free = set(range(len(artifact)))
    for key in (lambda s: s, _norm):
        for i, name in enumerate(reference_names):
            if i in pairs:
                continue
            hits = [j for j in free if key(artifact_names[j]) == key(name)
                    and artifact[j].shape[1:] == reference[i].shape[1:]]
            if len(hits) == 1:
                pairs[i], how[i] = hits[0], "name"
                free.discard(hits[0])
    for i in range(len(reference)):
        if i in pairs:
            continue
        same = [j for j in free if artifact[j].shape[1:] == reference[i].shape[1:]]
        rivals = [k for k in range(len(reference)) if k not in pairs and reference[k].shape[1:] == reference[i].shape[1:]]
        if len(same) == 1 and len(rivals) == 1:
            pairs[i], how[i] = same[0], "shape"
            free.discard(same[0])
    left = [i for i in range(len(reference)) if i not in pairs]
    if left:
        from scipy.optimize import linear_sum_assignment
        cols = sorted(free)
        cost = np.full((len(left), len(cols)), 1e9)
        for r, i in enumerate(left):
            for c, j in enumerate(cols):
                if artifact[j].shape[1:] == reference[i].shape[1:]:
                    cost[r, c] = -regress.cosine(reference[i], artifact[j])
        rows, picked = linear_sum_assignment(cost)
        for r, c in zip(rows, picked):
            if cost[r, c] >= 1e9:
                raise ValidationFailed(f"No artifact output matches the source output "
                                       f"'{reference_names[left[r]]}' of shape {list(reference[left[r]].shape[1:])}.")
            pairs[left[r]], how[left[r]] = cols[c], "similarity"
    order = [pairs[i] for i in range(len(reference))]
    return [artifact[j] for j in order], [{"artifact_name": artifact_names[j], "matched_by": how[i],
                                           **({"layout": "NHWC"} if turned[j] else {})}
                                          for i, j in enumerate(order)]


def load_metric(spec):
    """--metric package.module:function, or a callable."""
    if spec is None or callable(spec):
        return spec
    from edgesdk.util import load_callable
    return load_callable(spec, "--metric", OptionError)


def judge(reference: list, artifact: list, labels=None, *, io: ModelIO, task: str = "auto",
          thresholds: Thresholds = Thresholds(), metric=None, matched=None) -> dict:
    """All figures and the verdict. `artifact` is already matched to `reference`."""
    thresholds = thresholds.resolved()
    n = len(reference[0])
    figures = {"samples": int(n), "outputs": []}
    for i, (ref, art) in enumerate(zip(reference, artifact)):
        figures["outputs"].append({"name": io.output_names[i], **(matched[i] if matched else {}),
                                   "shape": list(ref.shape[1:]), **regress.figures(ref, art)})
    heads = pick(task, reference, io, thresholds.class_output)
    checks, covered = [], set()
    figures["heads"] = []
    boxes = isinstance(labels, list)  # detection labels: boxes per image, for detectors only
    for head in heads:
        task_labels = labels if boxes == (head.task == "detect") else None
        head_figures, head_checks = module(head.task).judge(head, reference, artifact, task_labels, thresholds, io)
        figures["heads"].append({"task": head.task, "outputs": head.outputs, **head_figures})
        checks += head_checks
        covered.update(head.outputs)
    figures["task"] = heads[0].task if heads else "regress"
    for i, (ref, art) in enumerate(zip(reference, artifact)):
        if i in io.states:  # its error shows, over the sequence, in the outputs the model is for
            figures["outputs"][i]["state"] = True
        elif i not in covered:
            checks.append(regress.sqnr_check(f"SQNR of output '{io.output_names[i]}'", ref, art,
                                             thresholds.min_sqnr_db, output=i))
    if metric is not None:
        checks.append(_user_check(metric, reference, artifact, labels, n))
    _summary_fields(figures)
    figures["checks"] = checks
    return figures


def _user_check(metric, reference, artifact, labels, n) -> dict:
    try:
        result = metric(reference, artifact, labels)
    except Exception as exc:
        raise OptionError(f"Your metric {getattr(metric, '__qualname__', metric)} raised "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(result, dict) or "passed" not in result:
        raise OptionError("A metric must return a dict with a boolean 'passed' (and any figures), e.g. "
                          "{'passed': f1 >= 0.9, 'f1': f1}.")
    verdict = "pass" if result["passed"] else "fail"
    return {"check": f"metric {getattr(metric, '__qualname__', 'user')}", "output": None, "verdict": verdict,
            "samples": int(n), "figures": {k: v for k, v in result.items() if k != "passed"}}


def _summary_fields(figures: dict) -> None:
    """Top-level summary figures: the class output's, and the worst SQNR/cosine of any output."""
    cls = next((h for h in figures["heads"] if h["task"] == "classify"), {})
    for key in ("class_output", "top1_agreement", "top5_agreement", "reference_accuracy", "artifact_accuracy"):
        figures[key] = cls.get(key)
    figures["sqnr_db"] = min(o["sqnr_db"] for o in figures["outputs"])
    figures["cosine"] = min(o["cosine"] for o in figures["outputs"])


def gate(figures: dict) -> dict:
    """pass only when every check passes; fail when any fails; else inconclusive."""
    checks = figures["checks"]
    verdicts = [c["verdict"] for c in checks]
    overall = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    return {"verdict": overall, "passed": overall == "pass",
            "reasons": [describe_check(c) for c in checks if c["verdict"] != "pass"]}


def describe_check(c: dict) -> str:
    if "value" not in c:  # a user metric
        return f"{c['check']} {'passed' if c['verdict'] == 'pass' else 'failed'}: {c.get('figures')}"
    unit = f" {c['unit']}" if c.get("unit") and c["unit"] != "points" else ""
    pct = c.get("unit") == "" and c["threshold"] <= 1 and c["value"] is not None and 0 <= c["value"] <= 1
    show = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}{unit}" if v is not None else "n/a")
    op = ">=" if c["at_least"] else "<="
    lo, hi = c["interval"]
    where = "" if c.get("output") is None else f" [output {c['output']}]"
    text = (f"{c['check']}{where} {show(c['value'])} (90% interval {show(lo)}..{show(hi)}, {c['samples']} samples), "
            f"needs {op} {show(c['threshold'])}")
    if c["verdict"] == "inconclusive":
        need = c.get("samples_needed")
        text += ": too few samples to tell" + (f"; about {need:,} would" if need else "")
    return text + (f" ({c['note']})" if c.get("note") else "")


def describe(figures: dict) -> str:
    parts = [f"{figures['samples']} samples, task {figures['task']}"]
    if figures.get("reference_accuracy") is not None:
        pruned = (f" (pruned float model {100 * figures['pruned_source_accuracy']:.2f}%)"
                  if figures.get("pruned_source_accuracy") is not None else "")
        parts.append(f"accuracy source {100 * figures['reference_accuracy']:.2f}%{pruned} vs artifact "
                     f"{100 * figures['artifact_accuracy']:.2f}%")
    if figures.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {100 * figures['top1_agreement']:.2f}%")
    for h in figures.get("heads", []):
        if h["task"] == "detect":
            parts.append(f"detections {h['matched']}/{h['source_detections']} found"
                         f" ({h['artifact_detections']} made)")
        elif h["task"] == "segment":
            parts.append(f"map mean IoU {h['mean_iou']:.3f}, pixel agreement {100 * h['pixel_agreement']:.2f}%")
        elif h["task"] == "multilabel":
            parts.append(f"decisions F1 {h['f1']:.3f} [output {h['output']}]")
        elif h["task"] == "embedding":
            parts.append(f"cosine with the source's embeddings: 5th percentile {h['cosine_p5']:.4f}, "
                         f"mean {h['cosine_mean']:.4f}")
        elif h["task"] == "sequence":
            parts.append(f"character error rate {100 * h['cer']:.2f}%, strings identical "
                         f"{100 * h['string_agreement']:.1f}%")
    parts.append("SQNR " + ", ".join(f"{o['name']}{' (state)' if o.get('state') else ''} {o['sqnr_db']:.1f} dB"
                                   for o in figures["outputs"][:6]))
    return ", ".join(parts)


def raise_if_failed(figures: dict, verdict: dict, artifact_kept: str | None = None,
                    earlier: str | None = None) -> None:
    """earlier: an artifact already at the output path (an earlier conversion's), which stays as it was."""
    if verdict["passed"]:
        return
    kept = (f" The failed artifact was kept at {artifact_kept} (--keep-failed)." if artifact_kept else
            f" Nothing new was written: the artifact already at {earlier}, from an earlier conversion, stays as "
            f"it was (its manifest says how it was made)." if earlier else " Nothing was written.")
    worst = [w for w in figures.get("worst_layers", []) if "node" in w]
    culprits = ""
    if worst:
        listed = "; ".join(f"{w['node']}{' (' + w['op'] + ')' if w.get('op') else ''}: {w['detail']}"
                           for w in worst)
        heading = (f"Tried one at a time (measured on {worst[0]['measured_on']} samples)"
                   if "gain" in worst[0] else "Layers that lose the most to quantization")
        culprits = f" {heading}: {listed}. {figures.get('worst_layers_hint', '')}"
        if "gain" in worst[0] and max(w["gain"] for w in worst) <= 0.05:
            culprits = (f" Trying each of {', '.join(w['node'][:60] for w in worst)} alone changed "
                        f"nothing measurable (on {worst[0]['measured_on']} samples): the loss is not one "
                        f"layer's rounding.")
    culprits += figures.get("recovery_note", "")
    if verdict["verdict"] == "inconclusive":
        raise ValidationFailed(
            f"Validation inconclusive: {'; '.join(verdict['reasons'])}. Figures: {describe(figures)}.{kept}"
            f"{figures.get('recovery_note', '')} "
            f"Give more --validation data (unlabelled inputs of the same kind are enough: the gate then judges "
            f"agreement with the source), or loosen the threshold if that loss is acceptable to you.",
            figures={**figures, "gate": verdict})
    raise ValidationFailed(
        f"Validation failed: {'; '.join(verdict['reasons'])}. Figures: {describe(figures)}.{kept}{culprits} "
        f"To recover accuracy: give more (and more representative) calibration data, lower --prune or "
        f"fine-tune with --fine-tune DATA, or loosen the threshold (--max-accuracy-drop, --min-agreement, "
        f"--min-sqnr, --min-recall, --max-cer, --min-cosine, --min-f1) if the loss is acceptable.",
        figures={**figures, "gate": verdict})

