"""Real graphs that broke the machinery around conversion: shape arithmetic onnx2tf could not follow, stages
that held every tensor of every sample, leftovers of killed runs, and a route failure with nowhere to go."""

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from edgesdk import fixtures
from edgesdk.sources.source import load_source
from edgesdk.util import remove_dead_temps, temp_dir_in, temp_path_in

from conftest import run_cli


def _op_types(path) -> list:
    import onnx
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.slow
def test_yolov8n_graph_is_simplified_to_what_onnx2tf_can_follow():
    """The Ultralytics YOLOv8n export computes its DFL reshape from Shape ops (onnx2tf: 'Cannot reshape a
    tensor with 5248 elements to shape [1,4,16,64]'). With the size fixed, the shape arithmetic is folded and
    the graph computes what the exported one does."""
    model = fixtures.fetch("yolov8n_faces")
    plain = load_source(str(model), input_shape="1,3,320,320")
    assert plain.simplified and any(n.startswith("graph simplified with onnxslim") for n in plain.notes)
    ops = _op_types(plain.float_onnx)
    assert "Shape" not in ops and len(ops) < 323
    assert plain.output_names == ["output0"]
    # the simplified graph against the exported one, on real faces, in ONNX Runtime
    import onnxruntime as ort
    x = fixtures.face_mosaics(n=4)
    exported = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = np.concatenate([exported.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    got = plain.predict(x)[0]
    assert got.shape == (4, 22, 2100)
    assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want))


def test_temp_files_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [tmp_path / f".model.rpi4.tflite.{dead.pid}.k3j_x9.tmp",
                 tmp_path / f".model.rpi4.tflite.json.{dead.pid}.a1b2c3.tmp"]
    for path in leftovers:
        path.write_bytes(b"half an artifact")
    (tmp_path / f".edgesdk-arm-cpu.{dead.pid}.q8w7e6.tmp").mkdir()
    (tmp_path / f".edgesdk-arm-cpu.{dead.pid}.q8w7e6.tmp" / "model.tflite").write_bytes(b"staged")
    live_file, live_dir = temp_path_in(tmp_path, "model.rpi4.tflite"), temp_dir_in(tmp_path, "edgesdk-arm-cpu")
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("the user's")
    removed = remove_dead_temps(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live_file.name, Path(live_dir.name).name, unrelated.name])
    live_dir.cleanup()


def test_histogram_calibration_takes_a_bounded_share_of_the_samples():
    from edgesdk.converters import onnx_int8
    x = np.zeros((200, 3), np.float32)
    used, note = onnx_int8._histogram_samples(x, per_sample=300)
    assert len(used) == onnx_int8.HISTOGRAM_SAMPLES
    assert note == f"histogram calibration on {onnx_int8.HISTOGRAM_SAMPLES} of 200 samples"
    used, note = onnx_int8._histogram_samples(x[:10], per_sample=10)
    assert len(used) == 10 and note is None
    # a large graph's histograms take HISTOGRAM_BYTES of tensors (PP-OCRv4's recognizer: 207 MB a sample)
    used, note = onnx_int8._histogram_samples(x, per_sample=onnx_int8.HISTOGRAM_BYTES // 20)
    assert len(used) == 20 and note.startswith("histogram calibration on 20 of 200 samples")
    used, _ = onnx_int8._histogram_samples(x, per_sample=onnx_int8.HISTOGRAM_BYTES)
    assert len(used) == onnx_int8.MIN_HISTOGRAM_SAMPLES


@pytest.mark.parametrize("method", ["Percentile", "Entropy"])
def test_histogram_ranges_do_not_depend_on_how_the_samples_are_cut(method, tmp_path):
    """ONNX Runtime merges a chunked histogram calibrator's chunks by re-binning what it has, so its ranges
    depend on the chunk. With each tensor's range found first (onnx_histograms), one sample at a time makes
    the ranges quantize_static makes from every sample at once, bit for bit, on the real PP-OCR direction
    classifier and 24 real text crops; its own chunks of 4 give other ranges."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from edgesdk.converters.onnx_histograms import ranges_found_first
    from edgesdk.converters.onnx_int8 import _reader
    model = onnx.load(str(fixtures.fetch("ppocr_cls")))
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, 48, 192)):
        d.ClearField("dim_param")
        d.dim_value = v
    fixed = tmp_path / "cls.onnx"
    onnx.save(model, str(fixed))
    x = fixtures.text_direction_crops()[0][::11][:24]
    name = model.graph.input[0].name

    def scales(out, stride=None, primed=False):
        reader = _reader(x, [name], None)
        extra = {"CalibStridedMinMax": stride} if stride else {}
        with ranges_found_first(reader) if primed else nullcontext():
            quantize_static(str(fixed), str(tmp_path / out), reader, quant_format=QuantFormat.QDQ,
                            calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
        graph = onnx.load(str(tmp_path / out)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in graph.node
                if n.op_type == "QuantizeLinear" and inits[n.input[1]].ndim == 0}

    at_once = scales("all.onnx")
    primed = scales("primed.onnx", stride=1, primed=True)
    chunked = scales("chunked.onnx", stride=4)
    assert len(at_once) > 50 and primed == at_once
    assert sum(chunked[k] != at_once[k] for k in at_once) >= 5  # what the chunks alone did


def test_primed_percentile_histograms_count_as_numpy_without_its_sort():
    """|x| binned into primed edges by numpy's uniform path: the counts np.histogram's sorting path makes, values
    on an edge and either side of it included, and ONNX Runtime's own binning never called."""
    from functools import partial
    from onnxruntime.quantization.calibrate import HistogramCollector
    from edgesdk.converters.onnx_histograms import _collect_absolute_value
    rng = np.random.default_rng(0)
    for bins in (1, 7, 128, 2048):
        for scale in (1e-3, 1.0, 900.0):
            v = (rng.standard_normal(5000) * scale).astype(np.float32)
            a = np.absolute(v)
            edges = np.histogram(np.array([a.min(), a.max()], dtype=np.float32), bins=bins)[1].astype(np.float32)
            near = np.concatenate([edges, np.nextafter(edges, np.float32(0)),
                                   np.nextafter(edges, np.float32(np.inf))[:-1]])
            v = np.concatenate([v, near, -near]).astype(np.float32)
            collector = HistogramCollector("percentile", True, bins, 128, 99.99, "same")
            collector.histogram_dict["t"] = (np.zeros(bins, np.int64), edges, v.min(), v.max())

            def general(_):
                raise AssertionError("ONNX Runtime's sorting path was taken")
            collector.collect_absolute_value = partial(_collect_absolute_value, collector, general)
            collector.collect_absolute_value({"t": [v[:2500], v[2500:5000]]})
            collector.collect_absolute_value({"t": [v[5000:]]})
            hist = collector.histogram_dict["t"][0]
            a = np.absolute(v)
            assert hist.sum() == ((a >= edges[0]) & (a <= edges[-1])).sum()
            assert (hist == np.histogram(a, bins=edges)[0]).all()


def test_memory_budget_is_a_share_of_what_is_free(monkeypatch):
    from edgesdk import memory
    monkeypatch.setattr(memory, "available", lambda: 2 << 30)
    assert memory.budget() == 512 << 20
    assert memory.samples_within(400 << 20, 200) == 1 and memory.samples_within(1 << 20, 200) == 200
    monkeypatch.setattr(memory, "available", lambda: 64 << 30)
    assert memory.budget() == memory.CEILING


@pytest.mark.slow
def test_streamed_qdq_debugger_matches_the_library(ppocr, tmp_path, monkeypatch):
    """The debugger sums each tensor's signal and noise one sample at a time, a group of tensors at a time
    when a sample's do not fit the memory budget; ONNX Runtime's own collect_activations keeps them all.
    Same figures, in one group or in many."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_signal_to_quantization_noice_ratio,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)
    from edgesdk.converters import onnx_int8
    source = load_source(str(ppocr["model"]), input_shape="1,3,48,192")
    x = np.load(ppocr["calib"])["x"][:6]
    qdq = tmp_path / "qdq.onnx"
    quantize_static(source.float_onnx, str(qdq), onnx_int8._reader(x, ["x"], None), quant_format=QuantFormat.QDQ)
    rows = onnx_int8.diagnose(source.float_onnx, qdq, x, worst=4)
    modify_model_output_intermediate_tensors(source.float_onnx, str(tmp_path / "f.onnx"))
    modify_model_output_intermediate_tensors(str(qdq), str(tmp_path / "q.onnx"))
    matching = create_activation_matching(collect_activations(str(tmp_path / "q.onnx"), onnx_int8._reader(x, ["x"], None)),
                                          collect_activations(str(tmp_path / "f.onnx"), onnx_int8._reader(x, ["x"], None)))
    assert len(rows) == 4
    from edgesdk import memory
    monkeypatch.setattr(memory, "budget", lambda: 256 << 10)  # a quarter MB: a few tensors a group
    import onnx
    groups = onnx_int8._tensor_groups(onnx.load(str(tmp_path / "f.onnx")), onnx.load(str(tmp_path / "q.onnx")))
    assert sum(1 for f, q in groups if f and q) > 10, len(groups)  # pairs with their float twin
    assert onnx_int8.diagnose(source.float_onnx, qdq, x, worst=4) == rows
    # in k groups, the debugger takes 1/k of the samples (each group runs both models on every one), never
    # fewer than MIN_DEBUG_SAMPLES
    more = np.concatenate([x] * 4)
    few = onnx_int8.diagnose(source.float_onnx, qdq, more, worst=4)
    monkeypatch.undo()
    assert few == onnx_int8.diagnose(source.float_onnx, qdq, more[:onnx_int8.MIN_DEBUG_SAMPLES], worst=4) != rows
    for row in rows:
        match = matching[row["tensor"]]
        assert row["qdq_sqnr_db"] == round(compute_signal_to_quantization_noice_ratio(match["pre_qdq"],
                                                                                      match["post_qdq"]), 2)
        assert row["xmodel_sqnr_db"] == round(compute_signal_to_quantization_noice_ratio(match["float"],
                                                                                         match["post_qdq"]), 2)


@pytest.mark.slow
def test_magika_reaches_the_pi_in_both_formats():
    """Magika went through no format's route to the Pi's TFLite (onnx2tf: 'Dimensions must be equal, but are
    2048 and 257') before its graph was simplified; now check reaches both of the Pi's formats."""
    r = run_cli("check", fixtures.fetch("magika"), "-t", "rpi4", "--json")
    assert r.returncode == 0, r.stderr
    target = json.loads(r.stdout)["targets"][0]
    assert set(target["formats"]) == {"tflite", "onnx"}, target
    assert all(f["status"] != "unsupported" for f in target["formats"].values()), target
    assert target["format"] == "tflite"


@pytest.mark.slow
def test_budget_stops_a_conversion_inside_its_stages(ppocr, tmp_path):
    """--budget is checked as each stage draws its progress: past it, exit 15 and nothing in the output."""
    out = tmp_path / "out"
    r = run_cli("convert", ppocr["model"], "-t", "rpi4", "--format", "onnx", "--input-shape", "1,3,48,192",
                "-c", ppocr["calib"], "-o", out, "--budget", "0.3s")
    assert r.returncode == 15 and "Traceback" not in r.stderr, r.stderr
    assert "error: The time budget" in r.stderr and "ran out" in r.stderr
    assert list(out.iterdir()) == []


def test_sigterm_unwinds_a_conversion_and_leaves_nothing(ppocr, tmp_path):
    """A `timeout` or a scheduler ends a conversion with SIGTERM: exit 143 with one line, and nothing of it
    left in the output folder or the temporary one (its default action left a partial artifact and 160 MB)."""
    import os
    import signal
    import subprocess
    from conftest import wait_for
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    exe = Path(sys.executable).with_name("edgesdk")
    proc = subprocess.Popen([str(exe), "convert", str(ppocr["model"]), "-t", "rpi4", "--format", "onnx",
                             "--input-shape", "1,3,48,192", "-c", str(ppocr["calib"]), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert wait_for(lambda: any(scratch.glob("edgesdk-onnx-*/prepared.onnx")), timeout=120)  # quantizing
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM); nothing half-made was kept"
    # (.ses: ONNX Runtime's own id file, which its library writes in any TMPDIR it meets and keeps)
    assert list(out.iterdir()) == [] and [p.name for p in scratch.iterdir() if p.name != ".ses"] == []


@pytest.mark.slow
def test_magika_layer_norms_get_an_int8_tflite_that_runs(tmp_path):
    """Magika's layer norms divide by sqrt(var + eps), with var made in int8 (one as E[x^2] - E[x]^2, two numbers
    near 400 in steps of 3): rounded to zero, TFLite's int8 DIV aborted ('data[i] != zero_point') and the Pi
    got no TFLite at all. With the divisors floored where int8 rounds them, the Pi's default format is made,
    and it agrees with the float model on real file bytes (computed here through edgesdk.load)."""
    import onnxruntime as ort
    import edgesdk
    features = fixtures.file_byte_features()
    art = edgesdk.convert(str(fixtures.fetch("magika")), target="rpi4", calibration=features,
                          output_dir=tmp_path / "out", quiet=True)
    assert art.manifest["format"] == "tflite" and art.manifest["validation"]["passed"]
    notes = " ".join(art.manifest["source"]["notes"])
    assert "LayerNorm_0/Rsqrt" in notes and "LayerNorm_1/Rsqrt" in notes and "floored" in notes, notes
    session = ort.InferenceSession(str(fixtures.fetch("magika")), providers=["CPUExecutionProvider"])
    source = np.concatenate([session.run(None, {"bytes": features[i:i + 1]})[0] for i in range(len(features))])
    loaded = edgesdk.load(art.path)
    made = np.asarray(loaded.run(features)["target_label"])
    agreement = float((made.argmax(1) == source.argmax(1)).mean())
    assert len(features) >= 300 and agreement >= 0.95, agreement
