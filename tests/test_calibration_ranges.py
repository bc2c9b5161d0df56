"""--calibration-method mse on the TFLite routes: each inner tensor's range narrowed to its least int8 error."""

import numpy as np
import pytest

from edgesdk.converters.tflite_int8 import _least_error_range


def int8_error(v, lo, hi):
    step = (hi - lo) / 255
    return float(np.mean((np.clip(np.round((v - lo) / step), 0, 255) * step + lo - v) ** 2))


def test_a_few_large_values_no_longer_spend_the_steps():
    """A heavy-tailed tensor (Student's t, 3 degrees of freedom): its min/max range spends most of int8's steps
    on a few values."""
    v = np.random.default_rng(0).standard_t(3, 100_000)
    lo, hi = float(v.min()), float(v.max())
    a, b = _least_error_range(v, lo, hi)
    assert lo < a < 0 < b < hi
    assert int8_error(v, a, b) < 0.85 * int8_error(v, lo, hi)


def test_a_range_the_values_fill_is_kept_and_a_relu_floor_stays_at_zero():
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 6, 100_000)  # ReLU6-like: every step used
    a, b = _least_error_range(v, 0.0, float(v.max()))
    assert a == 0.0 and b == pytest.approx(v.max(), rel=0.03)
