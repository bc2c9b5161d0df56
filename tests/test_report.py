"""Reports from real stored runs: the files exist, the HTML embeds its images, the table matches the database."""

import base64
import json
import re

import pytest

import edgesdk
from edgesdk import ConvertOptions, Thresholds

from conftest import run_cli


@pytest.mark.slow
def test_report_from_stored_runs(keras3_mnist, mnist_files, tmp_path, monkeypatch):
    db = tmp_path / "results.db"
    monkeypatch.setenv("EDGESDK_RESULTS_DB", str(db))
    # (about reports, not accuracy: TensorRT's symmetric int8 costs this small CNN 1-3 points)
    arts = [edgesdk.convert(str(keras3_mnist), target=t, calibration=mnist_files["train"],
                            validation=mnist_files["test"], output_dir=tmp_path / t, quiet=True,
                            options=ConvertOptions(gate=Thresholds(max_accuracy_drop=3)))
            for t in ("rpi4", "jetson-orin-nano")]
    ids = []
    for art in arts:
        r = run_cli("bench", art.path, "--runs", "200", "--json")
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["run_id"])
    html_path = tmp_path / "out" / "report.html"
    r = run_cli("report", *ids, "-o", html_path)
    assert r.returncode == 0, r.stderr
    page = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # one per run, accuracy vs latency (its Pareto front) and size/accuracy/latency
    assert "<h2>Accuracy and latency</h2>" in page
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    store = edgesdk.ResultStore(db)
    for i in ids:
        row = store.get(i)
        assert f"{row['stats']['latency_ms']['p50']:.3f}" in page and f"{row['stats']['latency_ms']['p99']:.3f}" in page
        acc = row["manifest"]["validation"]["artifact_accuracy"]
        assert f"{100 * acc:.2f}%" in page
    md = tmp_path / "report.md"
    r = run_cli("report", "--last", "2", "-o", md)
    assert r.returncode == 0
    assert md.read_text().count("](report_images/") == 4 and len(list((tmp_path / "report_images").glob("*.png"))) == 4
    r = run_cli("report", "-o", tmp_path / "x.pdf")
    assert r.returncode == 2 and ".html or .md" in r.stderr


def test_pareto_front_with_a_tie_on_latency():
    """Two runs with one p50: the more accurate is on the front, the other not; a slower, more accurate run is."""
    from edgesdk.devices.report import pareto_points

    def run(p50, sqnr, q):
        return {"stats": {"latency_ms": {"p50": p50}}, "threads": 1,
                "manifest": {"validation": {"sqnr_db": sqnr}, "recipe": {"format": "tflite", "quantization": q}}}
    points, what = pareto_points([run(1.0, 30.0, "int8"), run(1.0, 40.0, "fp16"), run(2.0, 90.0, "float"),
                                  run(3.0, 50.0, "int8")])
    assert what == "output SQNR vs the source (dB)"
    assert [p[3] for p in points] == [False, True, True, False]
