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
from dataclasses import dataclass, field, fields

from edgesdk.errors import OptionError

TASKS = ("auto", "classify", "detect", "segment", "sequence", "embedding", "multilabel", "regress")
AUTO_ORDER = ("detect", "segment", "sequence", "embedding", "classify", "multilabel")


def _limit(default, help: str, *, flag: str | None = None, share: bool = False, kind=float):
    """A gate threshold: None in what a user asks for means the default here (Thresholds.resolved); the
    help and flag make the CLI's option and the generated docs (edgesdk.conversion.options), so a new threshold is a
    field here and the task that reads it."""
    return field(default=None, metadata={"default": default, "help": help, "flag": flag, "share": share,
                                         "type": kind})


@dataclass(frozen=True)
class Thresholds:
    """What the gate demands: the gate group of edgesdk.ConvertOptions. A field left None takes its default
    (`resolved()`); the defaults' measurements are in docs/gate.md."""

    max_accuracy_drop: float | None = _limit(
        1.0, "Largest accepted accuracy drop, in percentage points, judged on labels (without labels it becomes "
        "--min-agreement 1 - DROP/100).")
    min_agreement: float | None = _limit(0.95, "Least top-1 agreement with the source (classify).", share=True)
    min_sqnr_db: float | None = _limit(
        12.0, "SQNR floor (dB) for outputs no task metric covers and a detector's channels.", flag="--min-sqnr")
    min_recall: float | None = _limit(0.9, "Least share of the source's detections found (detect).", share=True)
    min_precision: float | None = _limit(0.9, "Least share of detections the source also made (detect).",
                                         share=True)
    min_iou: float | None = _limit(0.8, "Least mean IoU with the source's maps (segment).", share=True)
    score_threshold: float | None = _limit(0.25, "A detection counts from this score on (detect).", share=True)
    class_output: int | None = field(default=None, metadata={
        "help": "Index of the output holding class scores (default: recognised from the shapes).", "type": int})
    max_cer: float | None = _limit(
        0.02, "Most character error rate of the decoded strings against the source's (sequence).", share=True)
    blank: int | str | None = _limit(
        0, "The CTC blank's index (sequence), or 'none' to read every step's argmax.", kind=str)
    min_cosine: float | None = _limit(
        0.98, "Least 5th-percentile cosine with the source's embeddings (embedding).", share=True)
    min_f1: float | None = _limit(0.9, "Least F1 of the decisions against the source's (multilabel).", share=True)
    threshold: float | None = _limit(0.5, "A multi-label decision is a score above this (multilabel).",
                                     share=True)

    def resolved(self) -> "Thresholds":
        """Every threshold with a value: the asked ones checked, the others their defaults."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                value = f.metadata.get("default")
            elif f.name == "blank":
                value = _blank(value)
            elif f.name == "class_output":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise OptionError(f"--class-output is an output's index (0 or more), got {value!r}.")
            else:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise OptionError(f"--{f.name.replace('_', '-')} takes a number, got {value!r}.") from None
                if f.metadata.get("share") and not 0.0 <= value <= 1.0:
                    raise OptionError(f"--{f.name.replace('_', '-')} is a share in [0, 1] (e.g. 0.9), "
                                      f"got {value:g}.")
                if f.name == "max_accuracy_drop" and value < 0:
                    raise OptionError(f"--max-accuracy-drop is in percentage points and cannot be negative "
                                      f"(got {value:g}).")
            values[f.name] = value
        return Thresholds(**values)

    @property
    def decode_blank(self) -> int | None:
        """The CTC blank's index for decoding; None: every step's argmax."""
        return None if self.blank == "none" else self.blank


def _blank(value):
    """--blank 3 / blank=3 is the CTC blank's index; "none" reads every step's argmax."""
    if str(value).lower() == "none":
        return "none"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f"--blank is the CTC blank's symbol index (0 or more) or 'none', got {value!r}.")
    return value


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
