"""Embeddings (speaker, face, text encoders): the direction of each sample's vector, against the source's.

An output (N, D) with D >= 16 whose rows are unit-norm is an embedding (a classifier's scores are not
normalised so); `--task embedding` also takes vectors that are not. What a user compares embeddings by is
their cosine, so the gate is on the cosine of each sample's artifact embedding with its source embedding:
the 5th percentile over samples (a few samples far off matter more than the mean shows), with a bootstrap
interval. The mean is reported, and whether each sample's nearest neighbour among the others stays the same
(near-ties between overlapping windows of one recording can swap, so it is not gated).
resemblyzer's speaker encoder, int8 ONNX: mean cosine 0.99973 on 390 windows of speech, while judged as a
classifier it was refused as inconclusive.
"""

from __future__ import annotations

import numpy as np

from . import Head, confidence

EXPECTED = "An embedding output is (N, D): one vector per sample."


def is_unit_norm(y: np.ndarray) -> bool:
    if y.ndim != 2 or y.shape[1] < 16 or len(y) < 1:
        return False
    norms = np.linalg.norm(y[:256].astype(np.float64), axis=1)
    return bool(np.allclose(norms, 1.0, atol=1e-3))


def claim(reference: list, io, class_output=None, asked: bool = False) -> list:
    if class_output is not None:
        return []
    return [Head("embedding", [i]) for i, y in enumerate(reference)
            if i not in io.states and (is_unit_norm(y) or asked and y.ndim >= 2 and np.prod(y.shape[1:]) >= 2)]


def cosines(ref: np.ndarray, art: np.ndarray) -> np.ndarray:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), art.reshape(len(art), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denom > 0, np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1), 1.0)


def nearest(y: np.ndarray) -> np.ndarray:
    """Each sample's nearest other sample by cosine (rows normalised here), in blocks to bound memory."""
    v = y.reshape(len(y), -1).astype(np.float64)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(v), np.int64)
    for s in range(0, len(v), 512):
        sims = v[s:s + 512] @ v.T
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf
        out[s:s + 512] = sims.argmax(axis=1)
    return out


def judge(head: Head, reference: list, artifact: list, labels, t, io=None) -> tuple:
    k = head.outputs[0]
    cos = cosines(reference[k], artifact[k])
    n = len(cos)
    p5 = float(np.percentile(cos, 5))
    check = confidence.check("5th-percentile cosine with the source's embeddings", p5,
                             confidence.bootstrap(lambda idx: float(np.percentile(cos[idx], 5)), n),
                             t.min_cosine, True, n, output=k)
    mean_interval = confidence.bootstrap(lambda idx: float(cos[idx].mean()), n)
    figures = {"output": k, "cosine_p5": round(p5, 6), "cosine_p5_interval": check["interval"],
               "cosine_mean": round(float(cos.mean()), 6), "cosine_mean_interval": [round(v, 6) for v in mean_interval],
               "cosine_min": round(float(cos.min()), 6), "nearest_neighbour_agreement": None}
    if n >= 3:
        same = int(np.sum(nearest(reference[k]) == nearest(artifact[k])))
        figures["nearest_neighbour_agreement"] = round(same / n, 6)
        figures["nearest_neighbour_agreement_interval"] = [round(v, 6) for v in confidence.wilson(same, n)]
    return figures, [check]
