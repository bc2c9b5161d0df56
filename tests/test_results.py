"""results show and compare: only measured conditions shown; differences judged against run-to-run noise."""

import numpy as np

from edgesdk.cli import _conditions
from edgesdk.devices.results import compare
from edgesdk.targets.runner import summarize


def _row(run_id, latencies, repeats=None):
    extra = {"repeats": [{"p50": float(np.median(r))} for r in repeats]} if repeats else {}
    return {"id": run_id, "latencies": list(map(float, latencies)), "stats": {"latency_ms": summarize(latencies)},
            "extra": extra, "host": "pi", "profile": "rpi4", "runtime": "ai_edge_litert", "threads": 4,
            "probe": {}}


def _drifting_run(rng, n=50, level=10.0):
    """Latencies as a board gives them: each process its own level (about 1.5 % apart: clocks, placement),
    a drift within the run (AR(1)) and jitter, so neighbouring samples correlate."""
    level *= 1 + rng.normal(0, 0.015)
    drift = np.zeros(n)
    for i in range(1, n):
        drift[i] = 0.9 * drift[i - 1] + rng.normal(0, 0.15)
    return level * (1 + 0.01 * drift) + rng.gamma(2.0, 0.05, n)


def test_show_prints_only_what_was_measured():
    pi = {"machine": "aarch64", "cpu_model": "Raspberry Pi 4 Model B Rev 1.4", "cores": 4,
          "os": "Debian GNU/Linux 12 (bookworm)", "governor": "ondemand", "cur_freq_mhz": 1800,
          "max_freq_mhz": 1800, "throttled": "0x0", "power_mode": None,
          "temperatures": [{"zone": "cpu-thermal", "celsius": 48.312}]}
    text = _conditions(pi)
    assert text == ("aarch64 Raspberry Pi 4 Model B Rev 1.4 x4, Debian GNU/Linux 12 (bookworm), governor ondemand, "
                    "1800 MHz of 1800, throttled 0x0, cpu-thermal 48.3 °C")
    bare = {"machine": "x86_64", "cpu_model": None, "cores": 2, "os": "Debian", "governor": None,
            "cur_freq_mhz": None, "throttled": None, "power_mode": None, "temperatures": []}
    assert _conditions(bare) == "x86_64 x2, Debian" and "None" not in _conditions(bare)


def test_a_a_comparisons_of_autocorrelated_runs_say_within_noise():
    rng = np.random.default_rng(1)
    verdicts = [compare(_row(1, _drifting_run(rng)), _row(2, _drifting_run(rng)))["differs"] for _ in range(100)]
    assert sum(not v for v in verdicts) >= 95
    c = compare(_row(1, _drifting_run(rng)), _row(2, _drifting_run(rng)))
    assert "one process per run" in c["median_change"]["basis"] and not c["differs"]


def test_a_real_slowdown_is_found_from_repeated_processes():
    rng = np.random.default_rng(2)
    base = [_drifting_run(rng) for _ in range(3)]
    slow = [_drifting_run(rng, level=12.0) for _ in range(3)]
    c = compare(_row(1, np.concatenate(base), base), _row(2, np.concatenate(slow), slow))
    ci = c["median_change"]
    assert c["differs"] and c["verdict"].startswith("slower by +")
    assert 10 < ci["low_pct"] <= ci["change_pct"] <= ci["high_pct"] < 30
    assert ci["basis"].startswith("the medians of 3 and 3 fresh runner processes")
    # a 1 % shift may be measurable, but it is under the minimum effect that counts
    tiny = [r * 1.01 for r in base]
    c = compare(_row(1, np.concatenate(base), base), _row(2, np.concatenate(tiny), tiny))
    assert not c["differs"]
    c = compare(_row(1, np.concatenate(base), base), _row(2, np.concatenate(slow), slow), min_effect_pct=50)
    assert not c["differs"] and "under the 50%" in c["verdict"]
