"""The performance suite's quick mode runs with the tests so it cannot rot. Figures are recorded, not asserted."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_bench_quick_mode_measures_every_group(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--output", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800)  # ~13 min alone on 2 cores
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    groups = {row["group"] for row in doc["results"]}
    assert groups == {"size", "pruned_size", "accuracy", "recovery", "imagenet", "onnx_tflite", "speed", "overhead", "startup", "fidelity", "noise", "deploy", "fleet", "tune"}
    broken = [row for row in doc["results"] if "error" in row and not row["error"].startswith("skipped:")]
    assert not broken, broken  # a measurement that crashes is a bug; a missed goal is a finding
    assert all(isinstance(row["value"], (int, float)) for row in doc["results"] if "error" not in row)
    assert "| measure | value | goal | met | baseline |" in (tmp_path / "latest.md").read_text()
