"""The embedding task on resemblyzer's pretrained speaker encoder (PyTorch LSTM, unit-norm (N, 256) out), on
mel windows of real speech: judged by the cosine with the source's embeddings, computed here on the artifact
run with edgesdk.load."""

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, QuantizeOptions
from edgesdk.judge.tasks import ModelIO
from edgesdk.judge.validation import gate, judge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoder():
    import torch
    from speaker_encoder import speech_partials, voice_encoder
    model, x = voice_encoder(), speech_partials()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return model, x, ref


def test_unit_norm_vectors_are_an_embedding_not_a_classifier(encoder):
    _, x, ref = encoder
    assert ref.shape == (246, 256) and np.allclose(np.linalg.norm(ref, axis=1), 1, atol=1e-5)
    io = ModelIO(output_names=["embedding"])
    rng = np.random.default_rng(0)
    noisy = ref + rng.normal(0, 0.002, ref.shape).astype(np.float32)  # a small error in every component
    figures = judge([ref], [noisy], io=io)
    head = figures["heads"][0]
    assert figures["task"] == "embedding" and gate(figures)["passed"]
    cos = np.sum(ref * noisy, 1) / np.linalg.norm(noisy, axis=1)
    assert abs(head["cosine_p5"] - np.percentile(cos, 5)) < 1e-6 and abs(head["cosine_mean"] - cos.mean()) < 1e-6
    # vectors turned away from the source's are refused, whatever their norm
    far = ref + rng.normal(0, 0.1, ref.shape).astype(np.float32)
    verdict = gate(judge([ref], [far], io=io))
    assert verdict["verdict"] == "fail" and "cosine" in verdict["reasons"][0]


def test_speaker_encoder_int8_onnx_passes_as_an_embedding(encoder, tmp_path):
    import torch
    model, x, ref = encoder
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx"))
    art = edgesdk.convert(model, target="rpi4", example_input=torch.zeros(1, 160, 40),
                          calibration=x[0::2], validation=x[1::2], output_dir=tmp_path, quiet=True, options=options)
    v = art.manifest["validation"]
    assert v["task"] == "embedding" and v["passed"] and v["samples"] == 123
    (out,) = edgesdk.load(art.path).run(x[1::2]).values()
    cos = np.sum(ref[1::2] * out, 1) / np.linalg.norm(out, axis=1)
    assert np.percentile(cos, 5) >= 0.98 and abs(np.percentile(cos, 5) - v["heads"][0]["cosine_p5"]) < 1e-5, cos


def test_an_input_int8_cannot_hold_is_named_before_quantizing(encoder, mnist):
    """The encoder's mel energies (0..19, median 1e-5): one int8 scale puts nearly all of them in one step."""
    from edgesdk.conversion.pipeline import _skewed_inputs
    from edgesdk.progress import Progress
    from edgesdk.sources.data import Dataset
    from edgesdk.sources.source import SourceModel
    _, x, _ = encoder

    def source(name, shape):
        return SourceModel(framework="torch", flavor="", model=None, name="m", sha256="", input_name=name,
                           input_shape=shape, output_names=["y"], run=None)
    progress = Progress(quiet=True)
    assert _skewed_inputs(source("mels", (None, 160, 40)), Dataset(x, None, "mels"), progress) == [0]
    assert len(progress.warnings) == 1 and "input 'mels'" in progress.warnings[0], progress.warnings
    share = int(progress.warnings[0].split("in int8 ")[1].split("%")[0])
    assert share >= 80  # measured 85 %
    digits = Progress(quiet=True)  # most of a digit's pixels are zeros already: nothing is lost
    assert _skewed_inputs(source("x", (None, 28, 28, 1)), Dataset(mnist["x_train"][:256], None, "d"), digits) == []
    assert digits.warnings == []

