"""How much a figure measured on n samples can be trusted, and the verdict it supports.

Every gate check is one-sided ("at least" / "at most" a threshold), so the
bounds here are the two ends of a 90 % two-sided interval: each end is a
one-sided 95 % bound. A check passes when the whole interval is on the right
side of its threshold, fails when the whole interval is on the wrong side,
and is inconclusive otherwise; then we say how many samples would settle it.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.90  # two-sided, i.e. 95 % one-sided at each end
BOOTSTRAP_DRAWS = 1000


def wilson(successes: int, n: int) -> tuple:
    """Wilson score interval of a proportion (good at 0/n and n/n, unlike the normal approximation)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(a: int, b: int, c: int, d: int) -> tuple:
    """Interval of p1 - p2 for paired proportions (Newcombe 1998, method 10).

    a: both right, b: only the first right, c: only the second right, d: both wrong.
    Here p1 is the source's accuracy and p2 the artifact's, so the difference is the drop.
    """
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + c, n)
    denom = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    phi = (a * d - b * c) / denom if denom > 0 else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return p1 - p2 - delta, p1 - p2 + eps


def bootstrap(per_sample_stat, n: int, seed: int = 0) -> tuple:
    """Percentile interval of a statistic over samples: per_sample_stat(indices) -> float."""
    if n < 2:
        return -math.inf, math.inf
    rng = np.random.default_rng(seed)
    draws = np.array([per_sample_stat(rng.integers(0, n, n)) for _ in range(BOOTSTRAP_DRAWS)])
    draws = np.clip(draws, -_HUGE, _HUGE)  # a noiseless resample has infinite SQNR
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = (float(v) if abs(v) < _HUGE else math.copysign(math.inf, v)
              for v in np.percentile(draws, [tail, 100 - tail]))
    return lo, hi


_HUGE = 1e12


def verdict(low: float, high: float, threshold: float, at_least: bool) -> str:
    """pass / fail / inconclusive for "value >= threshold" (at_least) or "value <= threshold"."""
    if at_least:
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def samples_needed(interval_at, n: int, threshold: float, at_least: bool, limit: int = 1_000_000) -> int | None:
    """Samples at which the same observed rate would give a verdict: interval_at(m) -> (low, high)."""
    m = max(n, 1)
    while m < limit:
        m *= 2
        low, high = interval_at(m)
        if verdict(low, high, threshold, at_least) != "inconclusive":
            # refine between m/2 and m
            lo_m, hi_m = m // 2, m
            while hi_m - lo_m > max(1, lo_m // 20):
                mid = (lo_m + hi_m) // 2
                lw, hg = interval_at(mid)
                if verdict(lw, hg, threshold, at_least) != "inconclusive":
                    hi_m = mid
                else:
                    lo_m = mid
            return int(hi_m)
    return None


def proportion_check(name: str, successes: int, n: int, threshold: float, at_least: bool = True,
                     output=None, unit: str = "") -> dict:
    """A gate check on a proportion, with its Wilson interval and verdict."""
    value = successes / n if n else float("nan")
    low, high = wilson(successes, n)
    result = check(name, value, (low, high), threshold, at_least, n, output=output, unit=unit)
    if result["verdict"] == "inconclusive" and n:
        result["samples_needed"] = samples_needed(
            lambda m: wilson(round(value * m), m), n, threshold, at_least)
    return result


def check(name: str, value: float, interval: tuple, threshold: float, at_least: bool, samples: int,
          output=None, unit: str = "") -> dict:
    low, high = interval
    return {"check": name, "output": output, "value": _r(value), "interval": [_r(low), _r(high)],
            "threshold": threshold, "at_least": at_least, "samples": int(samples), "unit": unit,
            "verdict": verdict(low, high, threshold, at_least), "samples_needed": None}


def _r(v: float):
    return None if v is None else (v if not math.isfinite(v) else round(float(v), 6))
