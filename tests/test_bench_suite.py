"""The performance suite's quick mode runs with the tests so it cannot rot. Figures are recorded, not asserted.

The groups run in a few batches, each its own process and test, so two test workers share them."""

import ast
import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

# balanced by their quick-mode time alone on 2 cores (the heavy ones apart)
BATCHES = [("recovery", "speed", "startup"), ("imagenet", "noise"),
           ("onnx_tflite", "size", "pruned_size", "accuracy", "fidelity"), ("overhead", "deploy", "fleet", "tune"),
           ("detector",)]


def _suite_groups() -> set:
    """The SUITE dict's keys, read from bench/run.py without importing it."""
    tree = ast.parse((REPO / "bench" / "run.py").read_text())
    suite = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "SUITE" for t in node.targets))
    return {k.value for k in suite.keys}


def test_the_batches_cover_every_group():
    assert sorted(g for batch in BATCHES for g in batch) == sorted(_suite_groups())


@pytest.mark.parametrize("groups", BATCHES, ids=["+".join(b) for b in BATCHES])
def test_bench_quick_mode_measures_its_groups(groups, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", *groups,
                        "--output", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert {row["group"] for row in doc["results"]} == set(groups)
    broken = [row for row in doc["results"] if "error" in row and not row["error"].startswith("skipped:")]
    assert not broken, broken  # a measurement that crashes is a bug; a missed goal is a finding
    assert all(isinstance(row["value"], (int, float)) for row in doc["results"] if "error" not in row)
    assert "| measure | value | goal | met | baseline |" in (tmp_path / "latest.md").read_text()
    print({g: next(row["seconds"] for row in doc["results"] if row["group"] == g) for g in groups})
