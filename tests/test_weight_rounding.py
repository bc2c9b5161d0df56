"""Kernel-sum weight rounding: the arithmetic on its own, then what it buys on a real ImageNet CNN."""

import numpy as np
import pytest

from edgesdk import ConvertOptions, QuantizeOptions, Thresholds
from edgesdk.converters.weight_rounding import QMAX, kernel_sum


def cancelling_kernels(seed=0, out=32, size=3):
    """Depthwise-like kernels whose large weights nearly cancel, as in real CNNs' depthwise layers."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (out, 1, size, size)).astype(np.float32)
    w -= w.mean(axis=(2, 3), keepdims=True) * 0.97  # sums near zero, weights not
    w[3, 0, 1, 1] = 0.0  # a pruned weight
    return w


def test_kernel_sum_keeps_each_kernels_sum_on_the_same_grid():
    w = cancelling_kernels()
    r = kernel_sum(w)
    scale = np.abs(w.reshape(len(w), -1)).max(1) / QMAX
    q = r / scale[:, None, None, None]
    assert np.allclose(q, np.round(q), atol=1e-3)  # on the int8 grid of the original scale
    assert np.abs(r.reshape(len(r), -1)).max(1) == pytest.approx(np.abs(w.reshape(len(w), -1)).max(1), rel=1e-6)
    assert np.abs(q - w / scale[:, None, None, None]).max() < 1.0  # every weight within one step
    float_sums = np.round((w / scale[:, None, None, None]).sum(axis=(2, 3)))
    assert np.array_equal(np.round(q).sum(axis=(2, 3)), float_sums)
    nearest = np.round(w / scale[:, None, None, None]).sum(axis=(2, 3))
    assert (nearest != float_sums).sum() >= 8  # plain rounding does miss these sums: the test has teeth
    assert r[3, 0, 1, 1] == 0.0
    changed = np.round(q) != np.round(w / scale[:, None, None, None])
    assert changed.sum() == np.abs(nearest - float_sums).sum()  # the fewest weights moved


def test_one_tap_kernels_and_per_tensor_grids():
    w = np.random.default_rng(1).normal(size=(8, 4, 1, 1)).astype(np.float32)
    scale = np.abs(w).reshape(8, -1).max(1) / QMAX
    assert np.allclose(kernel_sum(w), np.round(w / scale[:, None, None, None]) * scale[:, None, None, None])
    w = cancelling_kernels(seed=2)
    r = kernel_sum(w, per_channel=False)
    q = r / (np.abs(w).max() / QMAX)
    assert np.allclose(q, np.round(q), atol=1e-3)


@pytest.fixture(scope="module")
def imagenet():
    torch = pytest.importorskip("torch")
    from edgesdk import fixtures
    x, photo = fixtures.photo_crops(per_photo=12)
    x = ((x.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()
    model = fixtures.efficientnet_lite0()
    return model, x[photo < 7], x[photo >= 7], torch.zeros(1, 3, 224, 224)


@pytest.mark.slow
def test_corrected_rounding_beats_nearest_on_efficientnet_lite0_tflite(imagenet, tmp_path):
    """Same float graph, same calibration, 216 real-photo crops: only the rounding of the weights differs. The
    default (auto) makes both and keeps the one that measures better."""
    import edgesdk
    model, cal, val, example = imagenet
    options = ConvertOptions(gate=Thresholds(min_agreement=0.0), task="classify", recover=False)
    art = edgesdk.convert(model, "rpi4", example_input=example, calibration=cal, validation=val,
                          output_dir=tmp_path, quiet=True, options=options)
    rounding = art.manifest["quantization"]["weight_rounding"]
    tried = rounding.pop("auto")
    # 49 convs and the classifier; then the int8 graph's biases, against float's channel means on the
    # calibration crops (up to every one of the 84, for the layers with few positions per crop)
    assert rounding == {"mode": "corrected", "layers": 50, "biases": 50, "int8_biases": 50,
                        "int8_bias_samples": 84, "int8_bias_layers_measured": "50 of 50"}
    assert art.manifest["quantization"]["float_ops"] == []  # still full int8
    assert art.validation["samples"] == 216 and tried["chosen"] == "corrected"
    assert tried["corrected"]["sqnr_db"] == art.validation["sqnr_db"]
    # measured: nearest 16.9 dB, corrected 24.0 dB (22.5 dB before the int8 biases were corrected)
    assert tried["corrected"]["sqnr_db"] >= tried["nearest"]["sqnr_db"] + 6.0, tried
    assert tried["corrected"]["sqnr_db"] >= 23.5, tried
    assert tried["corrected"]["top1_agreement"] >= tried["nearest"]["top1_agreement"], tried


@pytest.mark.slow
def test_int8_onnx_for_a_pi_is_judged_as_the_pi_computes_it(imagenet, tmp_path):
    """On x86 hosts without VNNI, ONNX Runtime's fused int8 kernels saturate (9 dB there); the Pi's do not, nor
    do those of x86 hosts with AVX512-VNNI, which then judge."""
    import torch

    import edgesdk
    from edgesdk.artifacts.onnx_artifact import ONNXArtifact
    from edgesdk.judge.tasks.regress import sqnr_db
    model, cal, val, example = imagenet
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx", weight_rounding="corrected"),
                             gate=Thresholds(min_agreement=0.0),
                             task="classify",
                             recover=False)
    art = edgesdk.convert(model, "rpi4", example_input=example, calibration=cal, validation=val,
                          output_dir=tmp_path, quiet=True, options=options)
    from edgesdk.conversion.recipe import host_int8_is_exact
    assert art.manifest["recipe"]["int8_arithmetic"] == ("host" if host_int8_is_exact() else "exact")
    assert art.manifest["quantization"]["weight_rounding"] == {"mode": "corrected", "layers": 50, "biases": 50}
    v = art.validation
    assert v["sqnr_db"] >= 21.0 and v["top1_agreement"] >= 0.96, v
    with torch.no_grad():
        ref = model(torch.from_numpy(val[:24])).numpy()
    exact = ONNXArtifact(art.path, exact=True).predict(val[:24])[0]
    assert sqnr_db(ref, exact) >= 18.0
    if host_int8_is_exact():  # this machine's fused kernels, which judged it, agree with the graph as written
        fused = ONNXArtifact(art.path).predict(val[:24])[0]
        assert abs(sqnr_db(ref, fused) - sqnr_db(ref, exact)) < 0.5, (sqnr_db(ref, fused), sqnr_db(ref, exact))


def test_int8_is_judged_with_this_hosts_kernels_only_where_they_add_in_int32(monkeypatch, tmp_path):
    from edgesdk.conversion import recipe
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(recipe, "CPUINFO", str(info))
    monkeypatch.setattr(recipe.platform, "machine", lambda: "x86_64")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not recipe.host_int8_is_exact()  # AVX2/AVX512BW kernels add pairs of products in int16
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n")
    assert recipe.host_int8_is_exact()
    info.unlink()
    assert not recipe.host_int8_is_exact()  # nothing to read: as written
    monkeypatch.setattr(recipe.platform, "machine", lambda: "aarch64")
    assert recipe.host_int8_is_exact()


@pytest.mark.parametrize("flavor", ["keras3", "tf-keras"])
def test_keras_route_rounds_the_live_model_and_gives_its_weights_back(flavor, tmp_path):
    import edgesdk
    from edgesdk import fixtures
    x, y = fixtures.mnist_5k()
    x = fixtures.mnist_inputs(x)
    model = fixtures.mnist_cnn(x[:1000], y[:1000], epochs=1, flavor=flavor)
    before = [w.copy() for w in model.get_weights()]
    options = ConvertOptions(quantize=QuantizeOptions(weight_rounding="corrected"),
                             gate=Thresholds(max_accuracy_drop=100))
    art = edgesdk.convert(model, "rpi4", calibration=(x[:1000], y[:1000]), validation=(x[4000:], y[4000:]),
                          output_dir=tmp_path, quiet=True, options=options)
    assert art.manifest["quantization"]["weight_rounding"] == {"mode": "corrected", "layers": 2, "biases": 2}
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the caller's model untouched
    v = art.validation
    assert v["reference_accuracy"] - v["artifact_accuracy"] <= 0.01  # 1,000 held-out digits


def test_bias_correction_is_planned_within_its_op_budget():
    """An unrolled recurrent network (480 fully-connected steps of one position each, 256 samples apiece) would
    run for hours: the layers that fit the budget of ops run are measured, in graph order, the first always."""
    from edgesdk.converters.int8_bias import OP_RUNS, _within
    layers = [{"samples": 256, "op": 3 * k} for k in range(480)]
    kept = _within(layers, OP_RUNS)
    cost = [layer["samples"] * (layer["op"] + 1) for layer in layers]
    assert 0 < len(kept) < len(layers) and kept == layers[:len(kept)]
    assert sum(cost[:len(kept)]) <= OP_RUNS < sum(cost[:len(kept) + 1])
    assert _within(layers, 1) == layers[:1]
    cnn = [{"samples": 84, "op": k} for k in range(65)]  # EfficientNet-Lite0's 50 layers fit whole, with room
    assert _within(cnn, OP_RUNS) == cnn
