"""Every bad input: a clear one-paragraph error, its own exit code, no traceback, nothing half-written."""

import os
import zipfile

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, QuantizeOptions, Thresholds
from edgesdk import ConversionError, DataError, ModelLoadError, OptionError, OutputError, ProfileError

from conftest import run_cli

pytestmark = pytest.mark.slow


def _cli_fails(exc_class, *args, needle, out_dir=None):
    r = run_cli(*args)
    assert r.returncode == exc_class.exit_code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1
    if out_dir is not None and out_dir.exists():
        assert list(out_dir.iterdir()) == [], list(out_dir.iterdir())
    return r


def test_missing_model_file(tmp_path, mnist_files):
    _cli_fails(ModelLoadError, "convert", tmp_path / "nope.keras", "-c", mnist_files["train"], "-o", tmp_path / "o",
               needle="does not exist", out_dir=tmp_path / "o")


def test_random_bytes_are_not_a_model(tmp_path, mnist_files):
    f = tmp_path / "random.keras"
    f.write_bytes(os.urandom(4096))
    _cli_fails(ModelLoadError, "convert", f, "-c", mnist_files["train"], "-o", tmp_path / "o",
               needle="is not a valid .keras file", out_dir=tmp_path / "o")
    h = tmp_path / "random.h5"
    h.write_bytes(os.urandom(4096))
    _cli_fails(ModelLoadError, "convert", h, "-c", mnist_files["train"], needle="not a readable HDF5 Keras model")


def test_truncated_keras_file(tmp_path, keras3_mnist, mnist_files):
    f = tmp_path / "truncated.keras"
    f.write_bytes(keras3_mnist.read_bytes()[: keras3_mnist.stat().st_size // 2])
    _cli_fails(ModelLoadError, "convert", f, "-c", mnist_files["train"], needle="truncated")


def test_keras_zip_with_corrupt_weights(tmp_path, keras3_mnist, mnist_files):
    f = tmp_path / "corrupt.keras"
    with zipfile.ZipFile(keras3_mnist) as src, zipfile.ZipFile(f, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, b"garbage" if item.endswith(".h5") else src.read(item))
    _cli_fails(ModelLoadError, "convert", f, "-c", mnist_files["train"], needle="Keras could not load")


def test_unknown_profile_suggests(keras3_mnist, mnist_files, tmp_path):
    _cli_fails(ProfileError, "convert", keras3_mnist, "-t", "coral_usb", "-c", mnist_files["train"],
               needle="Did you mean 'coral-usb'")


def test_calibration_of_the_wrong_shape(keras3_mnist, tmp_path):
    f = tmp_path / "wrong.npz"
    np.savez(f, x=np.zeros((200, 32, 32, 3), np.float32))
    _cli_fails(DataError, "convert", keras3_mnist, "-c", f, "-o", tmp_path / "o",
               needle="samples have shape (200, 32, 32, 3), but the model takes (N, 28, 28, 1)",
               out_dir=tmp_path / "o")


def test_calibration_of_the_wrong_dtype(keras3_mnist, tmp_path):
    f = tmp_path / "strings.npy"
    np.save(f, np.array(["a", "b"]))
    _cli_fails(DataError, "convert", keras3_mnist, "-c", f, needle="expected a numeric array")


def test_empty_calibration(keras3_mnist, tmp_path):
    f = tmp_path / "empty.npz"
    np.savez(f, x=np.zeros((0, 28, 28, 1), np.float32))
    _cli_fails(DataError, "convert", keras3_mnist, "-c", f, needle="holds no samples")


def test_missing_calibration_for_int8(keras3_mnist, tmp_path):
    _cli_fails(DataError, "convert", keras3_mnist, "-o", tmp_path / "o", needle="pass --calibration DATA",
               out_dir=tmp_path / "o")


def test_qat_with_corrected_rounding_is_refused_not_overridden(keras3_mnist, mnist_files, tmp_path):
    _cli_fails(OptionError, "convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", tmp_path / "o",
               "--fine-tune", mnist_files["train"], "--qat", "--weight-rounding", "corrected",
               needle="--qat learns the weights' int8 rounding in training", out_dir=tmp_path / "o")


def test_mse_ranges_with_int16_activations_are_refused_not_ignored(keras3_mnist, mnist_files, tmp_path):
    _cli_fails(OptionError, "convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", tmp_path / "o",
               "--activations", "int16", "--calibration-method", "mse",
               needle="--calibration-method mse narrows int8 activation ranges", out_dir=tmp_path / "o")


def test_calibration_method_the_route_does_not_have(keras3_mnist, mnist_files, tmp_path):
    _cli_fails(OptionError, "convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", tmp_path / "o",
               "--calibration-method", "entropy", needle="not available from keras to tflite: this route "
               "calibrates with auto or minmax", out_dir=tmp_path / "o")


@pytest.mark.parametrize("target,fmt,needle", [
    ("jetson-orin-nano", "onnx", "jetson-orin-nano (jetson) does not run int16 activations in onnx artifacts"),
    ("coral-usb", "tflite", "coral-usb (edgetpu) does not run int16 activations in tflite artifacts"),
    ("rpi4", "tflite", "The route from keras to tflite keeps layers in float beside int8 activations only"),
])
def test_int16_activations_where_they_cannot_be(keras3_mnist, mnist_files, tmp_path, target, fmt, needle):
    # the TFLite converter's selective quantization makes int8 activations whatever the ops set says
    excluded = ["--exclude-op-types", "SOFTMAX", "--allow-float-fallback"] if target == "rpi4" else []
    _cli_fails(OptionError, "convert", keras3_mnist, "-t", target, "--format", fmt, "-c", mnist_files["train"],
               "--activations", "int16", *excluded, "-o", tmp_path / "o", needle=needle, out_dir=tmp_path / "o")


@pytest.mark.parametrize("value", ["1.5", "1", "-0.1"])
def test_sparsity_out_of_range(keras3_mnist, mnist_files, value):
    _cli_fails(OptionError, "convert", keras3_mnist, "-c", mnist_files["train"], "--prune", value,
               needle="Sparsity must be in [0, 1)")


def test_format_the_profile_does_not_take(keras3_mnist, mnist_files):
    _cli_fails(OptionError, "convert", keras3_mnist, "-t", "coral-usb", "--format", "onnx",
               "-c", mnist_files["train"], needle="takes tflite artifacts, not onnx")


def test_unwritable_output_dir(keras3_mnist, mnist_files, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    _cli_fails(OutputError, "convert", keras3_mnist, "-c", mnist_files["train"], "-o", blocker / "sub",
               needle="Cannot write to output directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits
            pytest.skip("running as root: permission bits do not stop writes")
        _cli_fails(OutputError, "convert", keras3_mnist, "-c", mnist_files["train"], "-o", ro,
                   needle="Cannot write")
    finally:
        ro.chmod(0o700)


def test_few_calibration_samples_warn(keras3_mnist, mnist_files, tmp_path):
    r = run_cli("convert", keras3_mnist, "-c", mnist_files["calib_npy"], "--calibration-samples", "50",
                "--validation", mnist_files["test"], "-o", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    f = tmp_path / "few.npy"
    np.save(f, np.load(mnist_files["calib_npy"])[:40])
    r = run_cli("convert", keras3_mnist, "-c", f, "--validation", mnist_files["test"], "-o", tmp_path / "b", "-q")
    assert r.returncode == 0, r.stderr
    assert "only 40 calibration samples" in r.stderr and "clip" in r.stderr


def _model_with(op):
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    import keras
    inp = keras.Input((8,))
    h = keras.layers.Lambda(op)(keras.layers.Dense(8)(inp))
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))


def test_op_without_any_int8_kernel_is_named(tmp_path):
    """No int8 TFLite kernel for Erf: the Coral (TFLite only) is refused with the op named; the Pi takes ONNX
    too, so it gets an int8 ONNX artifact instead, the reason recorded."""
    import keras
    x = np.random.default_rng(0).random((200, 8), np.float32)
    model = _model_with(keras.ops.erf)
    with pytest.raises(ConversionError, match="no int8 kernel for op\\(s\\) Erf"):
        edgesdk.convert(model, "coral-usb", calibration=x, output_dir=tmp_path, quiet=True)
    assert list(tmp_path.iterdir()) == []
    options = ConvertOptions(gate=Thresholds(max_accuracy_drop=100))
    art = edgesdk.convert(model, "rpi4", calibration=x, output_dir=tmp_path, quiet=True, options=options)
    assert art.format == "onnx" and art.manifest["format_fallback"]["wanted"] == "tflite"
    assert "no int8 kernel for op(s) Erf" in art.manifest["format_fallback"]["reason"]
    assert any("no tflite artifact" in w for w in art.manifest["warnings"])
    # the source's outputs on the validation data are computed once, for the first attempt, and reused
    assert [a["format"] for a in art.manifest["timing"]] == ["tflite", "onnx"]
    assert ["reference" in a["seconds"] for a in art.manifest["timing"]] == [True, False]


def test_op_left_in_float_is_refused_unless_allowed(tmp_path):
    import keras
    x = np.random.default_rng(0).random((200, 8), np.float32)
    model = _model_with(keras.ops.sin)
    tflite = ConvertOptions(quantize=QuantizeOptions(format="tflite"))
    with pytest.raises(ConversionError, match="no int8 kernel for SIN.*--allow-float-fallback"):
        edgesdk.convert(model, "rpi4", calibration=x, output_dir=tmp_path, quiet=True, options=tflite)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConversionError, match="Edge TPU .* computes SIN in float"):
        edgesdk.convert(model, "coral-usb", calibration=x, output_dir=tmp_path, quiet=True)
    options = ConvertOptions(quantize=QuantizeOptions(allow_float_fallback=True))
    with pytest.raises(OptionError, match="does not apply"):
        edgesdk.convert(model, "coral-usb", calibration=x, output_dir=tmp_path, options=options)
    assert list(tmp_path.iterdir()) == []
    options = ConvertOptions(quantize=QuantizeOptions(allow_float_fallback=True),
                             gate=Thresholds(max_accuracy_drop=100))
    art = edgesdk.convert(model, "rpi4", calibration=x, output_dir=tmp_path, quiet=True,
                          options=options)
    assert [o["op"] for o in art.manifest["quantization"]["float_ops"]] == ["DEQUANTIZE", "SIN", "QUANTIZE"]
    assert art.manifest["compatibility"]["status"] == "supported with fallbacks"
    # unforced, the Pi takes ONNX too, where ONNX Runtime runs a float op between Q/DQ pairs natively
    options = ConvertOptions(gate=Thresholds(max_accuracy_drop=100))
    art = edgesdk.convert(model, "rpi4", calibration=x, output_dir=tmp_path / "unforced", quiet=True,
                          options=options)
    assert art.format == "onnx" and "no int8 kernel for SIN" in art.manifest["format_fallback"]["reason"]


def test_lambda_layers_need_unsafe_load(tmp_path, mnist_files):
    m = _model_with(lambda t: t * 2.0)
    f = tmp_path / "lambda.keras"
    m.save(f)
    _cli_fails(ModelLoadError, "convert", f, "-c", mnist_files["train"], needle="--unsafe-load")
    h = tmp_path / "lambda.h5"
    import tf_keras
    tk = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Lambda(lambda t: t * 2.0),
                              tf_keras.layers.Dense(3, activation="softmax")])
    tk.save(h)
    _cli_fails(ModelLoadError, "convert", h, "-c", mnist_files["train"], needle="--unsafe-load")
    x = tmp_path / "x.npz"
    np.savez(x, x=np.random.default_rng(0).random((200, 8), np.float32))
    r = run_cli("convert", f, "-c", x, "--unsafe-load", "-o", tmp_path / "o", "-q", "--max-accuracy-drop", "100")
    assert r.returncode == 0, r.stderr


def test_unbuilt_keras_model(tmp_path):
    import keras
    with pytest.raises(ModelLoadError, match="not built"):
        edgesdk.convert(keras.Sequential([keras.layers.Dense(2)]), "rpi4", calibration=np.zeros((4, 3)),
                        output_dir=tmp_path)


def test_not_a_model_type(tmp_path, mnist_files):
    f = tmp_path / "model.txt"
    f.write_text("hello")
    _cli_fails(ModelLoadError, "convert", f, "-c", mnist_files["train"], needle="unknown model type '.txt'")


def test_bench_bad_inputs(tmp_path):
    _cli_fails(ModelLoadError, "bench", tmp_path / "none.tflite", needle="does not exist")
    f = tmp_path / "junk.tflite"
    f.write_bytes(os.urandom(1000))
    _cli_fails(ModelLoadError, "bench", f, needle="could not load")
