"""ONNX sources to TFLite for the Pi and the Coral: onnx2tf in its private environment, then the TFLite
converter's full int8, judged by the same gate on real inputs.

The PP-OCR text-direction classifier (rapidocr's ONNX, exported from Paddle) on real text-line crops,
and the ddddocr YOLOX character detector on real page scans.
"""

import json
import os

import numpy as np
import pytest

import edgesdk
from edgesdk import fixtures
from edgesdk.errors import ConversionError, OptionError, ValidationFailed
from edgesdk.tflite_artifact import TFLiteArtifact

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    x, y = fixtures.text_direction_crops()
    order = np.random.default_rng(0).permutation(len(y))
    d = tmp_path_factory.mktemp("crops")
    np.savez(d / "calib.npz", x=x[order[:132]])
    np.savez(d / "val.npz", x=x[order[132:]], y=y[order[132:]])
    return {"model": fixtures.fetch("ppocr_cls"), "calib": d / "calib.npz", "val": d / "val.npz"}


def _float_agreement(path, x, reference) -> float:
    art = TFLiteArtifact(path)
    out = art.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))[0]
    return float(np.mean(out.argmax(1) == reference.argmax(1)))


def test_onnx_classifier_becomes_a_full_int8_tflite_for_the_pi(crops, tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", crops["model"], "-t", "rpi4", "--input-shape", "1,3,48,192", "-c", crops["calib"],
                "--validation", crops["val"], "-o", out, "--min-agreement", "0.85", "--max-accuracy-drop", "10",
                "--json")
    assert r.returncode == 0, r.stderr
    assert "prefers" not in r.stderr  # the profile's own format: nothing to announce
    m = json.loads(open(json.loads(r.stdout)["manifest"]).read())
    assert m["format"] == "tflite" and m["layout"] == "NHWC"
    # the Pi's recipe: int8 in and out, channels-last, every op int8
    assert m["inputs"][0]["shape"] == [1, 48, 192, 3] and m["inputs"][0]["dtype"] == "int8"
    assert m["outputs"][0]["shape"] == [1, 2] and m["outputs"][0]["dtype"] == "int8"
    assert not m["quantization"]["float_ops"] and m["quantization"]["op_histogram"]["CONV_2D"] >= 40
    assert any("onnx2tf 1.29" in n for n in m["source"]["notes"])
    # judged on 132 held-out real crops against the float ONNX model (measured: 94 % agreement, 20.4 dB)
    v = m["validation"]
    assert v["samples"] == 132 and v["task"] == "classify"
    assert v["top1_agreement"] >= 0.9 and v["outputs"][0]["sqnr_db"] >= 17, v
    # the float graph onnx2tf made is the source's, transposes and all: float TFLite agrees exactly
    x = np.load(crops["val"])["x"]
    from edgesdk.source import load_source
    reference = load_source(str(crops["model"]), input_shape="1,3,48,192").predict(x)[0]
    flt = edgesdk.convert(str(crops["model"]), target="rpi4", quantization="float", input_shape="1,3,48,192",
                          calibration=crops["calib"], output_dir=tmp_path / "float", quiet=True)
    assert flt.validation["outputs"][0]["sqnr_db"] > 60
    assert _float_agreement(flt.path, x, reference) == 1.0
    # the route's options are judged for the format made
    with pytest.raises(OptionError, match="from onnx to tflite: this route calibrates with minmax"):
        edgesdk.convert(str(crops["model"]), target="rpi4", input_shape="1,3,48,192", calibration=crops["calib"],
                        calibration_method="percentile", output_dir=tmp_path / "p", quiet=True)
    assert not (tmp_path / "p").exists() or list((tmp_path / "p").iterdir()) == []


def test_onnx_classifier_for_the_coral_is_checked_against_the_edge_tpu(crops, tmp_path):
    art = edgesdk.convert(str(crops["model"]), target="coral-usb", input_shape="1,3,48,192",
                          calibration=crops["calib"], validation=crops["val"], output_dir=tmp_path, quiet=True,
                          min_agreement=0.85, max_accuracy_drop=10)
    m = art.manifest
    assert m["format"] == "tflite" and m["inputs"][0]["dtype"] == "uint8" and m["outputs"][0]["dtype"] == "uint8"
    assert not m["quantization"]["float_ops"]
    assert art.validation["top1_agreement"] >= 0.9
    # MobileNetV3's hard-swish has no Edge TPU kernel: the check says where the graph splits, honestly
    compat = m["compatibility"]
    assert compat["status"] == "supported with fallbacks" and "HARD_SWISH" in compat["fallbacks"]
    assert compat["partition"]["first_unmapped"]["op"] == "HARD_SWISH"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([art.path.name, art.path.name + ".json"])


def test_onnx_detector_to_pi_tflite_is_judged_by_recall(tmp_path):
    """The YOLOX head merges pixel boxes and 0..1 scores in one tensor; a TFLite int8 tensor has one scale,
    so the scores lose most (measured: recall 87.8 %, precision 97.5 % on 485 detections; the ONNX route,
    which keeps that Concat in float, >= 90 %). The route is right (boxes at 22 dB); the gate says what
    the shared scale costs and does not pass it at the default budget."""
    model = fixtures.fetch("captcha_detector")
    chars = tmp_path / "chars.npz"
    np.savez(chars, x=fixtures.character_images())
    labelled = fixtures.labelled_character_folder(tmp_path / "labelled")
    with pytest.raises(ValidationFailed, match="detection recall vs the source") as e:
        edgesdk.convert(str(model), target="rpi4", calibration=chars, validation=labelled,
                        preprocess={"scale": 1.0, "channel_order": "bgr"}, output_dir=tmp_path / "out",
                        quiet=True, recover=False)
    v = e.value.figures
    head = v["heads"][0]
    assert v["task"] == "detect" and head["images"] == 36 and head["source_detections"] > 300
    assert head["recall"] >= 0.85 and head["precision"] >= 0.95, head
    assert head["channels"]["boxes"]["sqnr_db"] >= 20 and head["channels"]["scores"]["sqnr_db"] < \
        head["channels"]["boxes"]["sqnr_db"]
    assert list((tmp_path / "out").iterdir()) == []


def test_toolchain_that_cannot_be_made_is_a_clear_error_and_leaves_nothing(crops, tmp_path):
    """No package index: the private environment cannot be made. Said so, exit 6, nothing kept."""
    cache = tmp_path / "cache"
    env = {"EDGESDK_CACHE": str(cache), "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}
    out = tmp_path / "out"
    r = run_cli("convert", crops["model"], "-t", "rpi4", "--input-shape", "1,3,48,192", "-c", crops["calib"],
                "-o", out, env=env)
    assert r.returncode == ConversionError.exit_code and "Traceback" not in r.stderr, r.stderr
    assert "Could not create the private onnx2tf environment" in r.stderr and "pip said" in r.stderr
    assert "--format onnx" in r.stderr
    assert list(out.iterdir()) == []
    toolchains = cache / "toolchains"
    assert [p.name for p in toolchains.iterdir() if not p.name.startswith(".")] == []
