"""Outputs judged by how close they are to the source: SQNR, cosine, max and relative error.

Every output gets these figures; an output that no other task judges is gated
on its SQNR (with a bootstrap interval over samples) against the floor.
"""

from __future__ import annotations

import math

import numpy as np

from . import confidence

EXPECTED = ""


CHUNK_ELEMENTS = 1 << 22  # per block of samples in float64 (32 MB): an output of 160 x 40 x 6625 (PP-OCR's
# per-step probabilities) in one float64 copy was 340 MB per array, several times over, and 18 s per judgement


def _per_sample(ref: np.ndarray, art: np.ndarray) -> dict:
    """Each sample's signal, noise, dot product and the artifact's energy, and the largest absolute error,
    accumulated in float64 a block of samples at a time."""
    n = len(ref)
    r2, a2 = ref.reshape(n, -1), art.reshape(n, -1)
    step = max(1, CHUNK_ELEMENTS // max(1, r2.shape[1]))
    out = {k: np.zeros(n) for k in ("signal", "noise", "dot", "energy")}
    worst = 0.0
    for lo in range(0, n, step):
        r, a = r2[lo:lo + step].astype(np.float64), a2[lo:lo + step].astype(np.float64)
        d = r - a
        out["signal"][lo:lo + step] = np.einsum("ij,ij->i", r, r)
        out["noise"][lo:lo + step] = np.einsum("ij,ij->i", d, d)
        out["dot"][lo:lo + step] = np.einsum("ij,ij->i", r, a)
        out["energy"][lo:lo + step] = np.einsum("ij,ij->i", a, a)
        if d.size:
            worst = max(worst, float(np.abs(d).max()))
    out["max_abs_error"] = worst
    return out


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _total(s: dict) -> float:
    return _sqnr(float(s["signal"].sum()), float(s["noise"].sum()))


def sqnr_db(ref: np.ndarray, art: np.ndarray) -> float:
    return _total(_per_sample(ref, art))


def _interval(s: dict) -> tuple:
    signal, noise = s["signal"], s["noise"]
    return confidence.bootstrap(lambda idx: _sqnr(float(signal[idx].sum()), float(noise[idx].sum())), len(signal))


def sqnr_interval(ref: np.ndarray, art: np.ndarray) -> tuple:
    return _interval(_per_sample(ref, art))


def _cosine(s: dict) -> float:
    denom = np.sqrt(s["signal"]) * np.sqrt(s["energy"])
    return float(np.mean(np.where(denom > 0, s["dot"] / np.where(denom > 0, denom, 1), 1.0)))


def cosine(ref: np.ndarray, art: np.ndarray) -> float:
    return _cosine(_per_sample(ref, art))


def figures(ref: np.ndarray, art: np.ndarray) -> dict:
    """The closeness figures of one output (or one slice of it), from one pass over its samples."""
    s = _per_sample(ref, art)
    signal, noise = float(s["signal"].sum()), float(s["noise"].sum())
    low, high = _interval(s)
    return {"sqnr_db": _round(_total(s)), "sqnr_db_interval": [_round(low), _round(high)],
            "cosine": round(_cosine(s), 6), "max_abs_error": round(s["max_abs_error"], 6),
            "relative_error": round(math.sqrt(noise / signal), 6) if signal > 0 else None}


def sqnr_check(name: str, ref: np.ndarray, art: np.ndarray, floor: float, output=None) -> dict:
    s = _per_sample(ref, art)  # one pass for the figure and its interval
    return confidence.check(name, _total(s), _interval(s), floor, True, len(ref), output=output, unit="dB")


def _round(v: float):
    return round(v, 3) if math.isfinite(v) else v
