"""Judging an artifact by what the model is for.

A task claims the outputs it understands (a classifier's scores, a detector's
head, a segmentation map) and judges them with its own metric; every output
no task claims is judged by `regress` (signal-to-quantization-noise ratio
against a floor). `auto` tries detect, segment, sequence, embedding, classify, multilabel in that order.

Each task module has:
    claim(reference, io, class_output, asked) -> list of Head  (what it recognises; [] if nothing; asked:
                                                   the user named the task, so looser forms count too)
    judge(head, reference, artifact, labels, thresholds) -> (figures, checks)
A check is a dict made by `confidence.check`/`proportion_check`: the figure,
its interval, the threshold and a pass / fail / inconclusive verdict.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from edgesdk.errors import OptionError

TASKS = ("auto", "classify", "detect", "segment", "sequence", "embedding", "multilabel", "regress")
AUTO_ORDER = ("detect", "segment", "sequence", "embedding", "classify", "multilabel")


@dataclass(frozen=True)
class Thresholds:
    """What the gate demands. Defaults are in the README with the figures that justify them."""

    max_accuracy_drop: float = 1.0   # percentage points, when labels exist
    min_agreement: float = 0.95      # top-1 agreement with the source
    min_sqnr_db: float = 12.0        # outputs no task metric covers; a detector's box and score channels
    min_recall: float = 0.9          # a detector: share of the source's detections the artifact finds
    min_precision: float = 0.9       # ... and share of the artifact's detections the source also made
    min_iou: float = 0.8             # segmentation maps: mean IoU with the source's map
    score_threshold: float = 0.25    # a detection counts from this score on
    class_output: int | None = None  # classify: which output holds the class scores
    max_cer: float = 0.02            # sequence: character error rate of the decoded strings against the source's
    blank: int | None = 0            # sequence: the CTC blank's index; None reads every step's argmax
    min_cosine: float = 0.98         # embedding: 5th percentile of each sample's cosine with the source's vector
    min_f1: float = 0.9              # multilabel: F1 of the decisions against the source's
    threshold: float = 0.5           # multilabel: a decision is a score above this (logits: above 0)


@dataclass
class ModelIO:
    """What tasks know of the model besides its outputs."""

    output_names: list
    input_hw: tuple | None = None  # spatial size of an image input (H, W)
    states: tuple = ()             # outputs fed back as recurrent state: judged through the other outputs


@dataclass
class Head:
    task: str
    outputs: list                      # indices into the reference outputs
    params: dict = field(default_factory=dict)


def module(task: str):
    return importlib.import_module(f"{__name__}.{task}")


def pick(task: str, reference: list, io: ModelIO, class_output=None) -> list:
    """The heads to judge: the asked task's, or (auto) whatever the outputs look like."""
    if task not in TASKS:
        raise OptionError(f"Unknown task '{task}'; expected one of {', '.join(TASKS)}.")
    if task == "regress":
        return []
    if task != "auto":
        heads = module(task).claim(reference, io, class_output=class_output, asked=True)
        if not heads:
            raise OptionError(f"--task {task}: no output of this model looks like a {task} output "
                              f"({_shapes(reference, io)}). {module(task).EXPECTED} Use --task auto or "
                              f"--task regress to judge the outputs by SQNR.")
        return heads
    for name in AUTO_ORDER:
        heads = module(name).claim(reference, io, class_output=class_output)
        if heads:
            return heads
    return []


def _shapes(reference, io) -> str:
    return ", ".join(f"{n} {list(r.shape[1:])}" for n, r in zip(io.output_names, reference))
