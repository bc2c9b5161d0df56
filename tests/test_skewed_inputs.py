"""An input whose range one int8 scale cannot hold: named before quantizing, and repaired by the recovery
ladder's first rung (the layers that read it in float, behind a float input), judged on the artifact here."""

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, QuantizeOptions

pytestmark = pytest.mark.slow  # an export and a conversion with a recovery rung


def _energies(n: int, seed: int) -> np.ndarray:
    """Spectral energies as a model reads them raw: a log-normal spread over eight decades, up to 20 (most
    values far below one int8 step of the whole range)."""
    rng = np.random.default_rng(seed)
    return np.minimum(np.exp(rng.normal(-9, 3, (n, 40))), 20).astype(np.float32)


@pytest.fixture(scope="module")
def spectral_model():
    """A small regressor that reads the energies on a log-like scale (large first-layer weights, a saturating
    activation), as models trained on raw energies learn to."""
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)).eval()
    with torch.no_grad():
        model[0].weight.mul_(400.0)
    return model


def test_the_layers_reading_a_skewed_input_stay_float_and_the_artifact_passes(spectral_model, tmp_path):
    import torch
    x, val = _energies(256, 0), _energies(256, 1)
    art = edgesdk.convert(spectral_model, target="rpi4", example_input=torch.zeros(1, 40), calibration=x,
                          validation=val, output_dir=tmp_path, quiet=True,
                          options=ConvertOptions(quantize=QuantizeOptions(format="onnx"), task="regress"))
    rungs = art.manifest["recovery"]["rungs"]
    assert rungs[0]["verdict"] == "fail" and art.manifest["recovery"]["applied"]["step"] == "input boundary", rungs
    assert rungs[1]["input_dtype"] == "float32" and rungs[1]["float_nodes"], rungs[1]
    with torch.no_grad():
        ref = spectral_model(torch.from_numpy(val)).numpy()
    (out,) = edgesdk.load(art.path).run(val).values()
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2))
    plain = rungs[0]["figures"]
    assert sqnr >= 20 and min(plain.values()) < 12, (sqnr, plain)
