"""edgesdk.load(path).run(x): an artifact runs as its source ran, judged by the task metric against the float
model on real inputs, computed here with the source's own runtime, not the SDK's figures."""

import subprocess
import sys

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, InputOptions, QuantizeOptions, Thresholds, fixtures
from edgesdk.errors import DataError, ModelLoadError

pytestmark = pytest.mark.slow
OUT = "save_infer_model/scale_0.tmp_1"  # the PP-OCR classifier's softmax


def _source_outputs(model_path, feed: dict) -> dict:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def test_an_nhwc_tflite_of_an_nchw_classifier_takes_the_sources_images(ppocr, tmp_path):
    """PP-OCR's direction classifier (NCHW ONNX) becomes an NHWC int8 TFLite for the Pi; load() takes the same
    NCHW crops the source takes and answers under the source's output name, agreeing on top-1."""
    art = edgesdk.convert(str(ppocr["model"]), target="rpi4", calibration=str(ppocr["calib"]),
                          validation=str(ppocr["val"]), output_dir=tmp_path, quiet=True)
    assert art.format == "tflite" and art.manifest["inputs"][0]["shape"][-1] == 3  # NHWC, int8 in
    x = np.load(ppocr["val"])["x"]
    model = edgesdk.load(art.path)
    assert model.inputs == ["x"] and model.outputs == [OUT]
    got = model.run(x)
    ref = _source_outputs(ppocr["model"], {"x": x})
    assert list(got) == list(ref) == [OUT] and got[OUT].shape == ref[OUT].shape
    agree = (got[OUT].argmax(1) == ref[OUT].argmax(1)).mean()
    assert len(x) == 132 and agree >= 0.95, agree
    # what the gate judged is what load() runs: its top-1 agreement is the one recorded
    assert abs(agree - art.manifest["validation"]["top1_agreement"]) < 1e-6
    one = model.run(x[0])  # one sample without its batch axis
    assert one[OUT].shape == (1, 2)
    with pytest.raises(DataError, match=r"takes samples of shape \[3, 48, 192\]"):
        model.run(x.transpose(0, 2, 3, 1))  # the artifact's own layout is not the source's
    with pytest.raises(DataError, match="no input 'image'"):
        model.run({"image": x})


def test_a_stateful_model_carries_its_state_between_calls(tmp_path):
    """Silero VAD (state in, state out, a fixed rate): load() feeds the state back itself, call after call,
    as the gate judged it; its speech probabilities match the source run the same way."""
    x, _ = fixtures.speech_chunks()
    x = x[:120]
    model_path = fixtures.fetch("silero_vad_op15")
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx"),
                             inputs=InputOptions(input_shape="input:1,576", input_values="sr=16000"),
                             gate=Thresholds(class_output=0))
    art = edgesdk.convert(str(model_path), target="rpi4",
                          calibration={"input": x},
                          output_dir=tmp_path, quiet=True, options=options)
    model = edgesdk.load(art.path)
    assert model.inputs == ["input"] and model.outputs == ["output", "stateN"]
    got = np.concatenate([model.run(x[t:t + 1])["output"] for t in range(len(x))])  # one chunk per call
    state = np.zeros((2, 1, 128), np.float32)
    ref = []
    for t in range(len(x)):
        out = _source_outputs(model_path, {"input": x[t:t + 1], "state": state, "sr": np.array(16000)})
        ref.append(out["output"])
        state = out["stateN"]
    ref = np.concatenate(ref)[:, 0]
    said, heard = got[:, 0] > 0.5, ref > 0.5
    assert heard.sum() >= 10 and (said == heard).mean() >= 0.95, (said == heard).mean()
    model.reset()
    again = model.run(x)["output"]  # the whole sequence in one call: the same steps
    np.testing.assert_allclose(again, got, atol=1e-5)
    # the state given by hand is used as given, and not carried
    given = model.run({"input": x[:1], "state": np.zeros((2, 1, 128), np.float32)})
    np.testing.assert_allclose(given["output"], got[:1], atol=1e-5)


def test_load_imports_only_numpy_and_the_runtime(ppocr, tmp_path):
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx"), gate=Thresholds(max_accuracy_drop=5))
    art = edgesdk.convert(str(ppocr["model"]), target="rpi4", calibration=str(ppocr["calib"]),
                          validation=str(ppocr["val"]), output_dir=tmp_path, quiet=True, options=options)
    assert art.format == "onnx"
    code = ("import sys, numpy as np, edgesdk\n"
            f"m = edgesdk.load({str(art.path)!r})\n"
            "y = m.run(np.zeros((2, 3, 48, 192), np.float32))\n"
            f"print(list(y), y[{OUT!r}].shape)\n"
            "print(sorted(k for k in ('tensorflow', 'torch', 'onnx', 'keras', 'tf_keras', 'ai_edge_litert')"
            " if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"[{OUT!r}] (2, 2)" and out[1] == "[]", out


def test_load_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        edgesdk.load(tmp_path / "missing.tflite")
    (tmp_path / "m.bin").write_bytes(b"0" * 16)
    with pytest.raises(ModelLoadError, match="is not an artifact edgesdk reads"):
        edgesdk.load(tmp_path / "m.bin")
    (tmp_path / "m.tflite").write_bytes(b"0" * 16)
    with pytest.raises(ModelLoadError, match="cannot run"):
        edgesdk.load(tmp_path / "m.tflite")
