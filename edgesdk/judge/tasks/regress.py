"""Outputs judged by how close they are to the source: SQNR, cosine, max and relative error.

Every output gets these figures; an output that no other task judges is gated
on its SQNR (with a bootstrap interval over samples) against the floor.
"""

from __future__ import annotations

import math

import numpy as np

from . import confidence

EXPECTED = ""


def _per_sample(ref: np.ndarray, art: np.ndarray) -> tuple:
    n = len(ref)
    r = ref.reshape(n, -1).astype(np.float64)
    a = art.reshape(n, -1).astype(np.float64)
    return np.sum(r ** 2, axis=1), np.sum((r - a) ** 2, axis=1)


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def sqnr_db(ref: np.ndarray, art: np.ndarray) -> float:
    signal, noise = _per_sample(ref, art)
    return _sqnr(float(signal.sum()), float(noise.sum()))


def sqnr_interval(ref: np.ndarray, art: np.ndarray) -> tuple:
    signal, noise = _per_sample(ref, art)
    return confidence.bootstrap(lambda idx: _sqnr(float(signal[idx].sum()), float(noise[idx].sum())), len(ref))


def cosine(ref: np.ndarray, art: np.ndarray) -> float:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), art.reshape(len(art), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    sims = np.where(denom > 0, np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1), 1.0)
    return float(np.mean(sims))


def figures(ref: np.ndarray, art: np.ndarray) -> dict:
    """The closeness figures of one output (or one slice of it)."""
    diff = np.abs(ref.astype(np.float64) - art)
    norm = float(np.linalg.norm(ref.astype(np.float64)))
    value = sqnr_db(ref, art)
    low, high = sqnr_interval(ref, art)
    return {"sqnr_db": _round(value), "sqnr_db_interval": [_round(low), _round(high)],
            "cosine": round(cosine(ref, art), 6), "max_abs_error": round(float(diff.max()), 6) if diff.size else 0.0,
            "relative_error": round(float(np.linalg.norm(diff) / norm), 6) if norm > 0 else None}


def sqnr_check(name: str, ref: np.ndarray, art: np.ndarray, floor: float, output=None) -> dict:
    value = sqnr_db(ref, art)
    return confidence.check(name, value, sqnr_interval(ref, art), floor, True, len(ref), output=output,
                            unit="dB")


def _round(v: float):
    return round(v, 3) if math.isfinite(v) else v
