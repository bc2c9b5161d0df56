"""Rockchip NPUs: real rknn-toolkit2 builds in its private environment, validated with its simulator.

The toolkit's pins (numpy 1.26, onnx 1.18, protobuf 4.25) cannot share the main environment: it is made
under the cache dir on first use (about 2 minutes) and reused. The MNIST CNN (Keras, through its float
ONNX) and the pretrained PP-OCR direction classifier (ONNX) are built for RK3588 and RK3566 boards and
judged by the same gate as every route, on real digits and real text crops.
"""

import json
import os

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, InputOptions, QuantizeOptions, Thresholds
from edgesdk.errors import ConversionError, ModelLoadError, OptionError, ProfileError, RuntimeMissing, ValidationFailed

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_mnist_cnn_for_the_rock5b_through_the_simulator(keras3_mnist, mnist_files, tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", keras3_mnist, "-t", "rock5b", "-c", mnist_files["train"], "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    art = edgesdk.Artifact.open(doc["artifact"])
    assert art.path.suffix == ".rknn" and art.path.read_bytes()[:4] == b"RKNN"
    v, m = art.manifest["validation"], art.manifest
    # held-out digits through the toolkit's simulator, the very build that was written
    assert v["passed"] and v["samples"] >= 400 and v["top1_agreement"] >= 0.98 and v["sqnr_db"] > 25, v
    compat = m["compatibility"]
    assert compat["toolkit"] == "rknn-toolkit2 2.5.0"
    assert compat["family"] == "rockchip" and compat["npu"]["platform"] == "rk3588" and compat["npu"]["cores"] == 3
    assert compat["npu"]["ops_on_npu"] >= 5 and {r["target"] for r in compat["layers"]} <= {"NPU", "CPU"}
    assert any(r["op"] == "Conv" and r["dtype"] == "INT8" and r["target"] == "NPU" for r in compat["layers"])
    assert sorted(p.name for p in out.iterdir()) == sorted([art.path.name, art.path.name + ".json"])
    # another process cannot simulate it (the toolkit runs only what it built), but describes it from the manifest
    r = run_cli("inspect", art.path, "--target", "rock5b", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "rknn" and doc["quantized"] and doc["int8_ops"] >= 5
    assert doc["compatibility"][0]["status"] in ("supported", "supported with fallbacks")
    r = run_cli("bench", art.path)
    assert r.returncode == ModelLoadError.exit_code and "edgesdk deploy" in r.stderr and "Traceback" not in r.stderr


def test_pretrained_text_classifier_for_an_rk3566(ppocr, tmp_path):
    kwargs = dict(calibration=ppocr["calib"], validation=ppocr["val"], quiet=True)
    shape = InputOptions(input_shape="1,3,48,192")
    # the toolkit's min/max ranges ("normal"): 95.5 % agreement, 1.5 points of accuracy lost on 132 labelled
    # crops, which cannot show the loss is within the 1-point budget: refused as inconclusive, nothing written
    options = ConvertOptions(quantize=QuantizeOptions(quantization="int8"), inputs=shape, recover=False)
    with pytest.raises(ValidationFailed, match="inconclusive") as e:
        edgesdk.convert(str(ppocr["model"]), "rk3566", output_dir=tmp_path / "minmax",
                        **kwargs, options=options)
    assert 0.93 <= e.value.figures["top1_agreement"] < 0.98 and list((tmp_path / "minmax").iterdir()) == []
    # KL-divergence calibration: 99.2 % agreement measured here; within a 5-point budget on these 132
    options = ConvertOptions(quantize=QuantizeOptions(calibration_method="entropy"), inputs=shape,
                             gate=Thresholds(max_accuracy_drop=5))
    art = edgesdk.convert(str(ppocr["model"]), "rk3566", output_dir=tmp_path / "kl",
                          **kwargs, options=options)
    v, compat = art.manifest["validation"], art.manifest["compatibility"]
    assert v["passed"] and v["samples"] == 132 and v["reference_accuracy"] > 0.9
    assert v["top1_agreement"] >= 0.97 and v["sqnr_db"] > 17, v
    assert art.manifest["recipe"]["calibration_method"] == "entropy"
    # the RK3566's NPU leaves the final softmax to the CPU: reported as the fallback it is
    assert compat["npu"]["platform"] == "rk3566" and compat["status"] == "supported with fallbacks"
    assert compat["fallbacks"] == ["exSoftmax13"] and "fall back to the board's CPU" in " ".join(compat["notes"])


def test_fp16_build_and_what_the_family_refuses(ppocr, tmp_path):
    options = ConvertOptions(inputs=InputOptions(input_shape="1,3,48,192"),
                             quantize=QuantizeOptions(quantization="fp16"),
                             gate=Thresholds(max_accuracy_drop=5))
    art = edgesdk.convert(str(ppocr["model"]), "rock5b",
                          validation=ppocr["val"], output_dir=tmp_path / "fp16", quiet=True,
                          options=options)  # 132 crops cannot show a 1-point budget holds
    v = art.manifest["validation"]
    assert v["passed"] and v["sqnr_db"] > 35 and v["top1_agreement"] >= 0.98, v
    info = edgesdk.inspect(art.path, targets=["rock5b"])
    assert not info["quantized"] and info["tensor_dtypes"].get("float16", 0) > 50
    options = ConvertOptions(quantize=QuantizeOptions(quantization="float"))
    with pytest.raises(OptionError, match="rock5b \\(rockchip\\) computes rknn only in int8 or fp16"):
        edgesdk.convert(str(ppocr["model"]), "rock5b", output_dir=tmp_path / "x", options=options)
    options = ConvertOptions(quantize=QuantizeOptions(format="tflite"))
    with pytest.raises(OptionError, match="takes rknn or onnx artifacts, not tflite"):
        edgesdk.convert(str(ppocr["model"]), "rock5b", output_dir=tmp_path / "x", options=options)
    assert not (tmp_path / "x").exists() or list((tmp_path / "x").iterdir()) == []


def test_rockchip_profiles_are_checked(tmp_path):
    p = edgesdk.load_profile("orangepi5")
    assert p.family == "rockchip" and p.accelerator.platform == "rk3588" and p.accelerator.npu_cores == 3
    assert edgesdk.load_profile("rk3566").accelerator.npu_cores == 1
    text = _builtin("rock5b").read_text()
    for change, needle in ((('platform = "rk3588"', 'platform = "rk9999"'), "not a Rockchip SoC"),
                           (('input_dtype = "float32"', 'input_dtype = "int8"'), "takes and returns float32"),
                           (('kind = "npu"', 'kind = "gpu"'), "expected one of ['none', 'npu']")):
        f = tmp_path / "board.toml"
        f.write_text(text.replace(*change))
        with pytest.raises(ProfileError, match="board.toml") as e:
            edgesdk.load_profile(str(f))
        assert needle in str(e.value)


def _builtin(name):
    from importlib import resources
    return resources.files("edgesdk.device_profiles") / f"{name}.toml"


def test_device_plans_need_the_npu_driver_and_library(tmp_path):
    from edgesdk.artifacts.artifact import Artifact
    from edgesdk.targets import device_plan
    path = tmp_path / "m.rknn"
    path.write_bytes(b"RKNN")
    art = Artifact(path, {"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}]})
    rock = edgesdk.load_profile("rock5b")
    bare = {"runtimes": {"rknnlite": "2.5.0"}}
    assert "no rknpu driver" in device_plan("rockchip", art, bare, rock).problem
    assert "librknnrt.so" in device_plan("rockchip", art, {**bare, "rknpu_driver": "/sys/module/rknpu"}, rock).problem
    plan = device_plan("rockchip", art, {**bare, "rknpu_driver": "/dev/rknpu", "rknn_library": "/usr/lib/librknnrt.so"},
                       rock)
    assert plan.problem is None and plan.accelerator == "npu" and plan.runner_args == ["--input-shape", "x:1,3,48,192"]
    with pytest.raises(OptionError, match="--dla-core is for Jetson"):
        device_plan("rockchip", art, bare, rock, dla_core=0)
    from edgesdk.targets import get_family
    assert "rknn-toolkit-lite2" in get_family("rockchip").runtime_missing("rknn", {"runtimes": {}})
    assert get_family("rockchip").runtimes == {"rknn": "rknn-toolkit-lite2", "onnx": "onnxruntime"}
    # an ONNX artifact (what a graph the toolkit cannot build falls back to) runs on the board's CPU cores
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"ONNX")
    plan = device_plan("rockchip", Artifact(onnx, {}), bare, rock)
    assert plan.problem is None and plan.accelerator is None and plan.runner_args == []


def test_an_rknn_without_its_build_cannot_be_simulated(tmp_path):
    from edgesdk.targets.rockchip_artifact import RKNNArtifact
    path = tmp_path / "m.rknn"
    path.write_bytes(b"RKNN not built here")
    with pytest.raises(RuntimeMissing, match="can only run on a Rockchip NPU"):
        RKNNArtifact(path).predict(np.zeros((1, 4), np.float32))


def test_toolkit_that_cannot_be_installed_is_said_and_the_board_gets_onnx(keras3_mnist, mnist_files, tmp_path):
    """No package index: rknn-toolkit2's environment cannot be made. Said so, nothing of it kept, and the board
    gets an int8 ONNX artifact for its CPU cores instead (its profile takes ONNX too); forced to .rknn, exit 6."""
    cache = tmp_path / "cache"
    env = {"EDGESDK_CACHE": str(cache), "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}
    out = tmp_path / "out"
    r = run_cli("convert", keras3_mnist, "-t", "rock5b", "-c", mnist_files["train"], "-o", out, "--format", "rknn",
                env=env)
    assert r.returncode == ConversionError.exit_code and "Traceback" not in r.stderr, r.stderr
    assert "creating the private rknn-toolkit2 environment for Rockchip NPU (.rknn) (first use" in r.stderr
    assert "Could not create the private rknn-toolkit2 environment" in r.stderr and "pip said" in r.stderr
    assert list(out.iterdir()) == []
    r = run_cli("convert", keras3_mnist, "-t", "rock5b", "-c", mnist_files["train"], "-o", out, "--json", env=env)
    assert r.returncode == 0 and "no rknn artifact: Could not create the private rknn-toolkit2" in r.stderr, r.stderr
    manifest = json.loads(open(json.loads(r.stdout)["manifest"]).read())
    assert manifest["format"] == "onnx" and manifest["format_fallback"]["wanted"] == "rknn"
    assert manifest["compatibility"]["family"] == "rockchip"
    assert any("not on the NPU" in n for n in manifest["compatibility"]["notes"])
    assert [p.name for p in (cache / "toolchains").iterdir() if not p.name.startswith(".")] == []


def test_two_input_pytorch_module_for_the_rock5b(gained_onet, tmp_path):
    """Several inputs: each calibrated and fed by its ONNX name (the pretrained O-Net behind an exposure gain)."""
    import torch
    model, x, gain, y = gained_onet
    options = ConvertOptions(gate=Thresholds(max_accuracy_drop=3))
    art = edgesdk.convert(model, "rock5b", example_input=(torch.zeros(1, 3, 48, 48), torch.ones(1, 1)),
                          calibration=(x[0::2], gain[0::2]), validation=((x[1::2], gain[1::2]), y[1::2]),
                          output_dir=tmp_path, quiet=True, options=options)
    v = art.manifest["validation"]
    # measured: accuracy 100 % on 100 labelled crops, every head above 15 dB
    assert v["reference_accuracy"] == 1.0 and v["artifact_accuracy"] >= 0.99, v
    assert all(o["sqnr_db"] > 15 for o in v["outputs"]), v["outputs"]
    assert [(i["name"], i["shape"]) for i in art.manifest["inputs"]] == [("input_0", [1, 3, 48, 48]),
                                                                         ("input_1", [1, 1])]
    # the gain matters: the same crops at another gain give other outputs
    from edgesdk.sources.inputs import Inputs
    from edgesdk.targets.rockchip_artifact import RKNNArtifact
    reader = RKNNArtifact(art.path)
    same = reader.predict(Inputs({"input_0": x[:8], "input_1": gain[:8]}))
    brighter = reader.predict(Inputs({"input_0": x[:8], "input_1": gain[:8] * 1.5}))
    assert not np.allclose(same[0], brighter[0], atol=1e-3)


def test_a_model_no_npu_precision_holds_gets_a_float_onnx_for_the_boards_cpu(tmp_path):
    """Basic Pitch's note posteriorgrams: the .rknn's int8 and fp16 decisions and the int8 ONNX's miss the
    gate (F1 of the notes' decisions against the source's), and the NPU runs no float. The board's CPU cores
    take ONNX, and a float ONNX passes there: that is made, both fallbacks on record."""
    import onnxruntime as ort

    from edgesdk import fixtures
    model = fixtures.fetch("basic_pitch")
    clips = fixtures.piano_clips()
    art = edgesdk.convert(str(model), target="rock5b", calibration=clips, output_dir=tmp_path, quiet=True)
    m = art.manifest
    assert art.format == "onnx" and m["recipe"]["quantization"] == "float"
    assert m["format_fallback"]["wanted"] == "rknn" and m["format_fallback"]["made"] == "onnx"
    assert m["precision_fallback"]["wanted"] == "int8" and m["precision_fallback"]["made"] == "float"
    # the notes' decisions (> 0.5) against the source's, computed here with the artifact as edgesdk.load runs it
    name = "StatefulPartitionedCall:1"
    notes = edgesdk.load(art.path).run(clips)[name] > 0.5
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    source = np.concatenate([sess.run([name], {sess.get_inputs()[0].name: clips[k:k + 1]})[0]
                             for k in range(len(clips))]) > 0.5
    assert source.sum() > 100 and 2 * (notes & source).sum() / (notes.sum() + source.sum()) > 0.99
