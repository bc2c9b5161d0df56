"""Compare an artifact's outputs with the source model's on the same data, and gate on accuracy."""

from __future__ import annotations

import re

import numpy as np

from .errors import ValidationFailed


def match_outputs(reference: list, artifact: list, artifact_names: list) -> list:
    """Artifact outputs reordered to line up with the reference outputs.

    Converters may reorder outputs; match by shape, and where shapes repeat by
    the numeric suffix of the tensor name (``...:N``), which follows the source order.
    """
    if len(reference) != len(artifact):
        raise ValueError(f"{len(reference)} reference outputs vs {len(artifact)} artifact outputs")
    if len(artifact) == 1:
        return artifact

    def suffix(name):
        m = re.search(r":(\d+)$", name)
        return int(m.group(1)) if m else 0
    order = sorted(range(len(artifact)), key=lambda i: suffix(artifact_names[i]))
    remaining = list(order)
    matched = []
    for ref in reference:
        pick = next((i for i in remaining if artifact[i].shape[1:] == ref.shape[1:]), None)
        if pick is None:
            raise ValueError(f"no artifact output of shape {ref.shape[1:]}")
        remaining.remove(pick)
        matched.append(artifact[pick])
    return matched


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return round(10 * np.log10(signal / noise), 3) if signal > 0 else float("-inf")


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), test.reshape(len(test), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    sims = np.where(denom > 0, np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1), 1.0)
    return round(float(np.mean(sims)), 6)


def is_probabilities(y: np.ndarray) -> bool:
    y2 = y.reshape(len(y), -1)
    return y2.shape[1] >= 2 and bool(np.all(y2 >= -1e-6)) and bool(np.allclose(y2.sum(axis=1), 1.0, atol=1e-3))


def class_output_index(reference: list, requested=None) -> int | None:
    """Which output holds class scores: as asked, else the softmax-like one, else a lone vector output."""
    if requested is not None:
        return int(requested)
    for i, y in enumerate(reference):
        if y.ndim == 2 and is_probabilities(y):
            return i
    if len(reference) == 1 and reference[0].ndim == 2 and reference[0].shape[1] >= 2:
        return 0
    return None


def compare(reference: list, artifact: list, labels=None, class_output=None) -> dict:
    """Figures: per-output SQNR/cosine/max error, and top-1 agreement/accuracies on the class output."""
    n = len(reference[0])
    figures = {"samples": int(n), "outputs": []}
    for ref, art in zip(reference, artifact):
        figures["outputs"].append({
            "shape": list(ref.shape[1:]),
            "sqnr_db": sqnr_db(ref, art),
            "cosine": cosine(ref, art),
            "max_abs_error": round(float(np.max(np.abs(ref - art))), 6),
        })
    k = class_output_index(reference, class_output)
    figures["class_output"] = k
    figures["top1_agreement"] = None
    figures["reference_accuracy"] = None
    figures["artifact_accuracy"] = None
    if k is not None:
        ref_top = reference[k].reshape(n, -1).argmax(axis=1)
        art_top = artifact[k].reshape(n, -1).argmax(axis=1)
        figures["top1_agreement"] = round(float(np.mean(ref_top == art_top)), 6)
        if labels is not None:
            figures["reference_accuracy"] = round(float(np.mean(ref_top == labels)), 6)
            figures["artifact_accuracy"] = round(float(np.mean(art_top == labels)), 6)
    figures["sqnr_db"] = min(o["sqnr_db"] for o in figures["outputs"])
    figures["cosine"] = min(o["cosine"] for o in figures["outputs"])
    return figures


def gate(figures: dict, max_accuracy_drop: float, min_sqnr_db: float | None = None) -> dict:
    """Decide pass/fail. The drop is in percentage points.

    With labels: reference accuracy minus artifact accuracy. Without labels, the
    source's own top-1 predictions are the labels, so the drop is the share of
    samples whose top-1 changed. Outputs with no class scores are gated on SQNR
    only when `min_sqnr_db` is given.
    """
    result = {"max_accuracy_drop": max_accuracy_drop, "min_sqnr_db": min_sqnr_db}
    if figures["artifact_accuracy"] is not None:
        drop = 100.0 * (figures["reference_accuracy"] - figures["artifact_accuracy"])
        result["basis"] = "labels"
    elif figures["top1_agreement"] is not None:
        drop = 100.0 * (1.0 - figures["top1_agreement"])
        result["basis"] = "source top-1 (no labels)"
    else:
        drop = None
        result["basis"] = "none (no class output)"
    result["accuracy_drop"] = None if drop is None else round(drop, 4)
    reasons = []
    if drop is not None and drop > max_accuracy_drop + 1e-9:
        reasons.append(f"accuracy dropped {drop:.2f} points (budget {max_accuracy_drop:g})")
    if min_sqnr_db is not None and figures["sqnr_db"] < min_sqnr_db:
        reasons.append(f"output SQNR {figures['sqnr_db']:.1f} dB is below {min_sqnr_db:g} dB")
    result["passed"] = not reasons
    result["reasons"] = reasons
    return result


def describe(figures: dict) -> str:
    parts = [f"{figures['samples']} samples"]
    if figures.get("reference_accuracy") is not None:
        pruned = (f" (pruned float model {100 * figures['pruned_source_accuracy']:.2f}%)"
                  if figures.get("pruned_source_accuracy") is not None else "")
        parts.append(f"accuracy source {100 * figures['reference_accuracy']:.2f}%{pruned} vs artifact "
                     f"{100 * figures['artifact_accuracy']:.2f}%")
    if figures.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {100 * figures['top1_agreement']:.2f}%")
    parts.append(f"SQNR {figures['sqnr_db']:.1f} dB, cosine {figures['cosine']:.4f}")
    return ", ".join(parts)


def raise_if_failed(figures: dict, verdict: dict, artifact_kept: str | None = None) -> None:
    if verdict["passed"]:
        return
    kept = (f" The artifact was kept at {artifact_kept} because you asked (--keep-failed)."
            if artifact_kept else " Nothing was written.")
    worst = [w for w in figures.get("worst_layers", []) if "node" in w]
    culprits = ""
    if worst:
        listed = "; ".join(f"{w['node']}{' (' + w['op'] + ')' if w.get('op') else ''}: {w['detail']}"
                           for w in worst)
        culprits = f" Layers that lose the most to quantization: {listed}. {figures.get('worst_layers_hint', '')}"
    raise ValidationFailed(
        f"Validation failed: {'; '.join(verdict['reasons'])}. Figures: {describe(figures)}.{kept}{culprits} "
        f"To recover accuracy: give more (and more representative) calibration data, lower --prune or "
        f"fine-tune with --fine-tune DATA, or raise --max-accuracy-drop if the loss is acceptable.",
        figures={**figures, "gate": verdict})
