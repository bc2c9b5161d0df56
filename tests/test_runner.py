"""The standalone runner: statistics shared with the host, and its contract as a separate program."""

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

from edgesdk.targets import runner_path
from edgesdk.targets.runner import summarize


def test_summarize_matches_numpy_percentiles():
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 3.0, size=997).tolist()
    s = summarize(values)
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(values, q), abs=1e-3)
    assert s["mean"] == pytest.approx(np.mean(values), abs=1e-3)
    assert s["std"] == pytest.approx(np.std(values), abs=1e-3)
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


def test_summarize_single_value():
    assert summarize([2.5]) == {"min": 2.5, "mean": 2.5, "p50": 2.5, "p90": 2.5, "p95": 2.5, "p99": 2.5,
                                "max": 2.5, "std": 0.0}


def test_runner_is_standalone():
    """Stdlib + numpy + a runtime only: no edgesdk import, parseable by Python 3.8's grammar."""
    source = runner_path().read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "edgesdk" not in imported
    assert imported <= {"argparse", "json", "math", "os", "platform", "sys", "time", "resource", "numpy",
                        "onnxruntime", "importlib"}


def _run(*args):
    return subprocess.run([sys.executable, str(runner_path()), *map(str, args)], capture_output=True, text=True)


def test_runner_reports_missing_model_as_json(tmp_path):
    r = _run(tmp_path / "nope.tflite")
    doc = json.loads(r.stdout)
    assert r.returncode != 0 and doc == {"ok": False, "kind": "not_found", "error": doc["error"]}


def test_runner_rejects_bad_options(tmp_path):
    r = _run(tmp_path / "x.tflite", "--runs", "0")
    assert r.returncode != 0 and json.loads(r.stdout)["kind"] == "bad_option"


def test_runner_names_what_to_install_when_runtime_is_missing(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"\0" * 16)
    r = _run(f, "--runtime", "tflite_runtime")  # not installed in this venv
    doc = json.loads(r.stdout)
    assert doc["kind"] == "runtime_missing" and "pip install" in doc["error"]


def test_runner_refuses_a_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"this is not a flatbuffer")
    doc = json.loads(_run(f).stdout)
    assert doc["ok"] is False and doc["kind"] == "load_failed"
