"""Classifiers: top-1 / top-5 agreement with the source, and accuracies when labels exist.

Without labels the figure is top-1 agreement with the source (gated by
min_agreement); with labels both: the accuracy drop (paired interval, gated by
max_accuracy_drop) and the agreement.
"""

from __future__ import annotations

import numpy as np

from . import Head, confidence
from .multilabel import looks_multilabel

EXPECTED = ("A classifier has an output of shape (N, classes), scores or probabilities; a binary one (N, 1) "
            "is judged by its decision (at 0.5 for probabilities, 0 for logits) when --class-output names it.")


GUESSED = ("judged as a classifier because its only output is (N, classes) scores; if it is not one, "
           "--task embedding (vectors compared by cosine) or --task regress (SQNR) judges it as what it is")


def is_probabilities(y: np.ndarray) -> bool:
    y2 = y.reshape(len(y), -1)
    return y2.shape[1] >= 2 and bool(np.all(y2 >= -1e-6)) and bool(np.allclose(y2.sum(axis=1), 1.0, atol=1e-3))


def claim(reference: list, io, class_output=None, asked: bool = False) -> list:
    """The softmax-like output, else a lone (N, C) output; or the one the user named."""
    if class_output is not None:
        if not 0 <= int(class_output) < len(reference):
            from edgesdk.errors import OptionError
            raise OptionError(f"--class-output {class_output}: the model has {len(reference)} output(s), "
                              f"numbered from 0.")
        return [Head("classify", [int(class_output)])]
    for i, y in enumerate(reference):
        if y.ndim == 2 and is_probabilities(y):
            return [Head("classify", [i])]
    # a lone (N, C) output: scores (logits) or something else, said in refusals; not independent 0..1
    # decisions, which multilabel judges (CREPE's 360 sigmoid pitch bins: neighbouring bins trade the top-1
    # under int8, 94 % agreement, while the bins it decides are the source's)
    if len(reference) == 1 and reference[0].ndim == 2 and reference[0].shape[1] >= 2 \
            and not looks_multilabel(reference[0]):
        return [Head("classify", [0], {"guessed": True})]
    return []


def judge(head: Head, reference: list, artifact: list, labels, t, io=None) -> tuple:
    k = head.outputs[0]
    n = len(reference[k])
    ref = reference[k].reshape(n, -1)
    art = artifact[k].reshape(n, -1)
    figures = {"class_output": k, "top5_agreement": None, "reference_accuracy": None, "artifact_accuracy": None}
    if ref.shape[1] == 1:  # one score: a binary decision, at 0.5 for probabilities, at 0 for logits
        cut = 0.5 if bool(np.all((ref >= 0) & (ref <= 1))) else 0.0
        ref_top, art_top = (ref[:, 0] > cut).astype(np.int64), (art[:, 0] > cut).astype(np.int64)
        figures["binary_threshold"] = cut
    else:
        ref_top, art_top = ref.argmax(axis=1), art.argmax(axis=1)
    agree = int(np.sum(ref_top == art_top))
    figures["top1_agreement"] = round(agree / n, 6)
    if ref.shape[1] > 5:
        top5 = np.argsort(-art, axis=1)[:, :5]
        figures["top5_agreement"] = round(float(np.mean([r in row for r, row in zip(ref_top, top5)])), 6)
    agreement = confidence.proportion_check("top-1 agreement with the source", agree, n, t.min_agreement, output=k)
    figures["top1_agreement_interval"] = agreement["interval"]
    if head.params.get("guessed"):
        figures["chosen_because"] = GUESSED
    # Without labels agreement is the verdict; with labels the accuracy drop is (a pruned, fine-tuned
    # model is meant to change some predictions, so agreement with the original is only reported).
    checks = [agreement] if labels is None else []
    if labels is not None:
        ref_ok, art_ok = ref_top == labels, art_top == labels
        figures["reference_accuracy"] = round(float(np.mean(ref_ok)), 6)
        figures["artifact_accuracy"] = round(float(np.mean(art_ok)), 6)
        a, b = int(np.sum(ref_ok & art_ok)), int(np.sum(ref_ok & ~art_ok))
        c, d = int(np.sum(~ref_ok & art_ok)), int(np.sum(~ref_ok & ~art_ok))
        drop = 100.0 * (b - c) / n
        low, high = confidence.paired_difference(a, b, c, d)
        drop_check = confidence.check("accuracy drop (points)", drop, (100 * low, 100 * high),
                                      t.max_accuracy_drop, False, n, output=k, unit="points")
        if drop_check["verdict"] == "inconclusive":
            drop_check["samples_needed"] = confidence.samples_needed(
                lambda m: tuple(100 * v for v in confidence.paired_difference(
                    *(max(0, round(v * m / n)) for v in (a, b, c, d)))),
                n, t.max_accuracy_drop, False)
        figures["accuracy_drop"] = round(drop, 4)
        checks.append(drop_check)
    for c in checks if head.params.get("guessed") else ():
        c["note"] = GUESSED
    return figures, checks
