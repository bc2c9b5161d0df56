"""Sequence outputs (text recognizers, per-step taggers): the strings they decode to, against the source's.

An output (N, steps, symbols) whose every step is a distribution over at least 3 symbols (probabilities
that sum to one, or log-probabilities whose exponentials do) is a sequence, and so are raw per-step scores
whose argmax is mostly the blank (a CTC head without its softmax); `--task sequence` takes any per-step
scores. Each sample is decoded greedily, as CTC recognizers are read: the argmax per step,
repeats collapsed, the blank dropped (index `blank`, 0 by default, as PaddleOCR's and most CTC heads put
it; `blank="none"` keeps every step's argmax, for per-step taggers). The gate is on the character error rate
of the artifact's strings against the source's (edit distance over the source's length, summed over the
samples), with a bootstrap interval over samples; the share of identical strings is reported beside it.
Per-step probabilities hide what matters here: PP-OCRv4's int8 recognizer measured 8.5 dB SQNR and 7.1 %
CER, its int16 one 25.6 dB and 0.95 % CER.
"""

from __future__ import annotations

import numpy as np

from . import Head, confidence

EXPECTED = ("A sequence output is 3-D, (N, steps, symbols), with a score per symbol at every step (a CTC "
            "recognizer's per-step softmax).")


def is_per_step_distribution(y: np.ndarray) -> bool:
    if y.ndim != 3 or y.shape[1] < 2 or y.shape[2] < 3:
        return False
    y = y[:64].astype(np.float64)
    if np.all(y >= -1e-6) and np.allclose(y.sum(axis=2), 1.0, atol=1e-3):
        return True
    return bool(np.all(y <= 1e-6) and np.allclose(np.exp(y).sum(axis=2), 1.0, atol=1e-3))  # log-softmax


def is_ctc_scores(y: np.ndarray) -> bool:
    """Raw per-step scores of a CTC head (logits, no softmax in the graph): many steps whose argmax is the
    blank (index 0) in nearly every sample, the other steps spread over several symbols. ddddocr's recognizer
    (20 steps x 8,210 symbols): 70 % of its steps are blank."""
    if y.ndim != 3 or y.shape[1] < 8 or y.shape[2] < 10:
        return False
    if not np.any(y[:64] < 0):  # scores in 0..1 per symbol are sigmoids (multilabel frames), not logits
        return False
    best = y[:64].argmax(axis=2)
    blank = best == 0
    return bool(blank.mean() >= 0.3 and blank.any(axis=1).mean() >= 0.9 and len(np.unique(best[~blank])) >= 3)


def claim(reference: list, io, class_output=None, asked: bool = False) -> list:
    heads = []
    for i, y in enumerate(reference):
        if i in io.states:
            continue
        if (is_per_step_distribution(y) or is_ctc_scores(y)
                or asked and y.ndim == 3 and y.shape[1] >= 2 and y.shape[2] >= 3):
            heads.append(Head("sequence", [i]))
    return heads


def decode(y: np.ndarray, blank: int | None) -> list:
    """Each sample's symbol indices: greedy CTC (repeats collapsed, blanks dropped), or every step's argmax."""
    best = y.argmax(axis=2)
    if blank is None:
        return [tuple(int(v) for v in row) for row in best]
    out = []
    for row in best:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(int(v) for v in row[keep & (row != blank)]))
    return out


def edit_distance(a: tuple, b: tuple) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), one row at a time."""
    if not a or not b:
        return len(a) or len(b)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def judge(head: Head, reference: list, artifact: list, labels, t, io=None) -> tuple:
    k = head.outputs[0]
    ref, art = decode(reference[k], t.decode_blank), decode(artifact[k], t.decode_blank)
    n = len(ref)
    dist = np.array([edit_distance(r, a) for r, a in zip(ref, art)], dtype=np.float64)
    length = np.array([len(r) for r in ref], dtype=np.float64)

    def cer(idx) -> float:
        return float(dist[idx].sum() / max(length[idx].sum(), 1.0))
    value = cer(np.arange(n))
    low, high = confidence.bootstrap(cer, n)
    check = confidence.check("character error rate against the source's strings", value, (low, high),
                             t.max_cer, False, n, output=k)
    if check["verdict"] == "inconclusive":  # the interval narrows as 1/sqrt(samples)
        check["samples_needed"] = confidence.samples_needed(
            lambda m: (value - (value - low) * (n / m) ** 0.5, value + (high - value) * (n / m) ** 0.5),
            n, t.max_cer, False)
    same = int(np.sum(dist == 0))
    figures = {"output": k, "decode": "argmax per step" if t.decode_blank is None else f"CTC greedy, blank {t.blank}",
               "cer": round(value, 6), "cer_interval": check["interval"],
               "string_agreement": round(same / n, 6) if n else None,
               "string_agreement_interval": [round(v, 6) for v in confidence.wilson(same, n)],
               "mean_length": round(float(length.mean()), 3) if n else 0.0}
    return figures, [check]
