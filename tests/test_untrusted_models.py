"""Hostile model files: none runs its code in `convert` or `check` without --unsafe-load.

Each file is built here to write a marker file when its code runs; the marker's absence proves it did not.
"""

import json
import os
import zipfile

import numpy as np
import pytest

from conftest import run_cli
from edgesdk.errors import ModelLoadError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _refused(model, tmp_path, marker, needle):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((16, 8), np.float32))
    for args in (["convert", model, "-t", "rpi4", "-c", x, "-o", tmp_path / "out"], ["check", model, "-t", "rpi4"]):
        r = run_cli(*args)
        assert r.returncode == ModelLoadError.exit_code, (args[0], r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and "--unsafe-load" in r.stderr and needle in r.stderr, r.stderr
        assert not marker.exists(), f"{args[0]} ran the file's code"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _writer(marker):
    """A function whose running leaves the marker (a lambda's body, as an attacker writes it)."""
    return eval(f"lambda t: (open({str(marker)!r}, 'w').write('ran'), t)[1]")


@pytest.mark.parametrize("form", ["as saved", "compact", "escaped"])
def test_tf_keras_h5_lambda_in_any_serialisation(tmp_path, form):
    import h5py
    import tf_keras
    marker = tmp_path / "ran"
    model = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(4),
                                 tf_keras.layers.Lambda(_writer(marker))])
    path = tmp_path / "m.h5"
    model.save(path)
    marker.unlink(missing_ok=True)  # saving traced it
    if form != "as saved":
        with h5py.File(path, "r+") as h:
            config = json.loads(h.attrs["model_config"])
            text = json.dumps(config, separators=(",", ":"))
            if form == "escaped":
                text = text.replace('"Lambda"', '"\\u004cambda"')
                assert '"Lambda"' not in text
            h.attrs["model_config"] = text
    _refused(path, tmp_path, marker, "Lambda")


def test_tf_keras_saved_model_with_a_lambda(tmp_path):
    import tf_keras
    marker = tmp_path / "ran"
    inp = tf_keras.Input((8,))
    model = tf_keras.Model(inp, tf_keras.layers.Lambda(_writer(marker))(tf_keras.layers.Dense(4)(inp)))
    path = tmp_path / "saved"
    model.save(path, save_format="tf")
    marker.unlink(missing_ok=True)
    assert (path / "keras_metadata.pb").is_file()
    _refused(path, tmp_path, marker, "Lambda")


def test_saved_model_whose_graph_writes_a_file(tmp_path):
    import tensorflow as tf
    marker = tmp_path / "ran"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "ran")
            return {"y": x * 2.0}
    module = Writer()
    path = tmp_path / "saved"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    assert not marker.exists()
    _refused(path, tmp_path, marker, "WriteFile")


def test_pt2_with_a_malicious_pickle_inside(tmp_path):
    import torch
    marker = tmp_path / "ran"
    program = torch.export.export(torch.nn.Linear(8, 4).eval(), (torch.zeros(1, 8),))
    good = tmp_path / "good.pt2"
    torch.export.save(program, str(good))

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)
    import io
    evil_bytes = io.BytesIO()
    torch.save(Payload(), evil_bytes)
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        replaced = 0
        for info in src.infolist():
            data = src.read(info.filename)
            if "sample_inputs" in info.filename and info.filename.endswith(".pt"):
                data, replaced = evil_bytes.getvalue(), replaced + 1
            dst.writestr(info, data)
    assert replaced == 1
    _refused(path, tmp_path, marker, "pickled Python objects")
    # the file as saved (tensors only) loads without --unsafe-load
    r = run_cli("check", good, "-t", "rpi4")
    assert r.returncode == 0, r.stderr


def test_tf_keras_dot_keras_is_read_but_a_module_outside_keras_is_refused(tmp_path):
    """tf-keras writes its own classes as "tf_keras.src...." in a .keras config (MTCNN's O-Net saved so was
    refused): Keras itself, read without --unsafe-load. The same file naming a layer's module outside Keras
    would import that module: refused."""
    import tf_keras
    inp = tf_keras.Input((8,), name="x")
    model = tf_keras.Model(inp, tf_keras.layers.Dense(4, activation="softmax")(inp))
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    assert config["module"].startswith("tf_keras."), config["module"]
    r = run_cli("check", path, "-t", "rpi4")
    assert r.returncode == 0 and "--unsafe-load" not in r.stderr, r.stderr
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                config["config"]["layers"][1]["module"] = "antigravity"
                data = json.dumps(config).encode()
            dst.writestr(info, data)
    _refused(evil, tmp_path, marker, "the module 'antigravity'")
