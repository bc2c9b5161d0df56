"""Multi-label outputs (independent sigmoids per class, per sample or per frame): the decisions they make.

An output of 2 or more classes whose values lie in 0..1, do not sum to one (not a softmax), and sit mostly
near 0 or 1 (as sigmoid decisions do: a piano roll, tags) is multi-label; `--task multilabel` takes any
output, and logits (values outside 0..1) are cut at 0. Each element is a decision at `threshold` (0.5);
the gate is on the F1 of the artifact's decisions against the source's, pooled over the output's
elements, with a bootstrap interval over samples. SQNR hides what matters here: Basic Pitch's fp16 onsets
measured 15.0 dB while the onsets found agreed with the float model's at F1 0.89.
"""

from __future__ import annotations

import numpy as np

from . import Head, confidence

EXPECTED = ("A multi-label output holds one score per class (per sample or per frame): (N, classes) or "
            "(N, ..., classes).")
DECIDED = 0.4   # share of values near 0 or 1 that makes scores decisions (Basic Pitch: 0.53 to 0.60), not positions


def looks_multilabel(y: np.ndarray) -> bool:
    if y.ndim < 2 or y.shape[-1] < 2:
        return False
    v = y[:64].astype(np.float64)
    if v.min() < -1e-6 or v.max() > 1 + 1e-6:
        return False
    if np.allclose(v.sum(axis=-1), 1.0, atol=1e-3):
        return False  # a softmax: classify or sequence
    return float(np.mean((v < 0.1) | (v > 0.9))) >= DECIDED


def claim(reference: list, io, class_output=None, asked: bool = False) -> list:
    if class_output is not None:
        return []
    return [Head("multilabel", [i]) for i, y in enumerate(reference)
            if i not in io.states and (looks_multilabel(y) or asked and y.ndim >= 2)]


def judge(head: Head, reference: list, artifact: list, labels, t, io=None) -> tuple:
    k = head.outputs[0]
    ref, art = reference[k], artifact[k]
    n = len(ref)
    cut = t.threshold if float(ref.min()) >= 0 and float(ref.max()) <= 1 else 0.0
    r, a = (ref > cut).reshape(n, -1), (art > cut).reshape(n, -1)
    tp = np.sum(r & a, axis=1).astype(np.float64)
    fp = np.sum(~r & a, axis=1).astype(np.float64)
    fn = np.sum(r & ~a, axis=1).astype(np.float64)

    def f1(idx) -> float:
        denom = 2 * tp[idx].sum() + fp[idx].sum() + fn[idx].sum()
        return float(2 * tp[idx].sum() / denom) if denom else 1.0  # no decision on either side agrees
    value = f1(np.arange(n))
    check = confidence.check(f"F1 of the decisions (> {cut:g}) against the source's", value,
                             confidence.bootstrap(f1, n), t.min_f1, True, n, output=k)
    figures = {"output": k, "threshold": cut, "f1": round(value, 6), "f1_interval": check["interval"],
               "source_positives": int(r.sum()), "artifact_positives": int(a.sum()),
               "precision": round(float(tp.sum() / max(tp.sum() + fp.sum(), 1)), 6),
               "recall": round(float(tp.sum() / max(tp.sum() + fn.sum(), 1)), 6)}
    return figures, [check]
