"""Target families on real artifacts: Edge TPU partitioning and compiler logs, XNNPACK counts, TensorRT ops."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, ModelLoadError, ProfileError, Thresholds, fixtures
from edgesdk.artifacts.inspection import inspect
from edgesdk.targets.edgetpu import parse_compiler_log

from conftest import run_cli

DATA = Path(__file__).parent / "data"


# --- what tune measures besides the default (quick) ---------------------------------

def test_execution_variants_come_from_the_family():
    from edgesdk.profiles import load_profile
    from edgesdk.tuning import candidates

    def names(profile, framework="keras", quant="int8"):
        return [c.name for c in candidates(framework, load_profile(profile), quantizations=[quant])[0]]
    assert names("rpi4") == ["tflite int8", "tflite int8 no XNNPACK", "onnx int8"]
    assert names("jetson-xavier-nx", "onnx", "fp16") == ["onnx fp16", "onnx fp16 DLA0"]
    assert names("jetson-orin-nano", "onnx", "fp16") == ["onnx fp16"]  # no DLA on it
    assert names("coral-usb") == ["tflite int8"]
    dla = candidates("onnx", load_profile("jetson-xavier-nx"), quantizations=["fp16"])[0][1]
    assert dla.options == {"dla_core": 0} and dla.base.name == "onnx fp16"


# --- compiler logs (quick) -------------------------------------------------------

def test_parse_compiler_log_with_cpu_fallback():
    log = parse_compiler_log((DATA / "edgetpu_compiler_partial.log").read_text())
    assert log["version"] == "16.0.384591198" and log["compiled"] and log["compile_ms"] == 1153
    assert log["total_operations"] == 112 and log["operations_on_edgetpu"] == 111 and log["operations_on_cpu"] == 1
    assert log["edgetpu_subgraphs"] == 1
    assert log["on_chip_memory_used_bytes"] == int(6.62 * 2**20)
    assert log["off_chip_memory_used_bytes"] == 0
    ops = {o["op"]: o for o in log["operators"]}
    assert len(log["operators"]) == 8 and ops["CONV_2D"]["count"] == 55 and ops["CONV_2D"]["mapped"]
    assert not ops["CUSTOM"]["mapped"] and ops["CUSTOM"]["status"] == "Operation is working on an unsupported data type"
    assert sum(o["count"] for o in log["operators"]) == 112


def test_parse_compiler_log_all_mapped():
    log = parse_compiler_log((DATA / "edgetpu_compiler_full.log").read_text())
    assert log["compiled"] and log["operators"] == []
    assert log["operations_on_edgetpu"] == 65 and log["operations_on_cpu"] == 0
    assert log["output_model"] == "mobilenet_v2_1.0_224_quant_edgetpu.tflite"


def test_parse_compiler_log_failure():
    log = parse_compiler_log("Edge TPU Compiler version 16.0.384591198\nERROR: Didn't find op for builtin opcode "
                             "'FULLY_CONNECTED' version '12'\n\nModel not compiled.\n")
    assert log["compiled"] is False


# --- profiles ---------------------------------------------------------------------

@pytest.mark.parametrize("family, fmt", [("edgetpu", "onnx"), ("jetson", "tflite")])
def test_profile_family_and_format_must_agree(tmp_path, family, fmt):
    f = tmp_path / "p.toml"
    f.write_text(f'name = "x"\ndescription = "x"\nfamily = "{family}"\n[device]\narch = "aarch64"\ncpu = "A53"\n'
                 f'cores = 4\nmemory_mb = 1024\n[artifact]\nformat = "{fmt}"\nquantization = "int8"\n'
                 f'input_dtype = "int8"\noutput_dtype = "int8"\nthreads = 1\n')
    with pytest.raises(ProfileError, match=f"family '{family}' cannot run {fmt} artifacts"):
        edgesdk.load_profile(str(f))


# --- real artifacts ---------------------------------------------------------------

@pytest.mark.slow
def test_blazeface_float_model():
    r = inspect(fixtures.fetch("blazeface"))
    assert r["format"] == "tflite" and not r["quantized"]
    assert r["inputs"][0]["shape"] == [1, 128, 128, 3] and r["inputs"][0]["dtype"] == "float32"
    assert sorted(o["shape"] for o in r["outputs"]) == [[1, 896, 1], [1, 896, 16]]
    assert r["op_histogram"]["DEQUANTIZE"] == 74 and r["tensor_dtypes"]["float16"] == 74  # fp16 weights
    v = {c["family"]: c for c in r["compatibility"]}
    assert v["arm-cpu"]["xnnpack"] == {"ops": 164, "delegated": 164, "partitions": 1, "not_delegated": {}}
    assert v["edgetpu"]["status"] == "unsupported" and "float" in v["edgetpu"]["notes"][0]
    assert v["jetson"]["status"] == "unsupported"


@pytest.mark.slow
def test_micro_wakeword_with_resource_variables():
    r = inspect(fixtures.fetch("okay_nabu"))
    assert r["subgraphs"] == 2 and r["tensor_dtypes"]["resource"] == 6
    assert r["inputs"][0]["dtype"] == "int8" and r["outputs"][0]["dtype"] == "uint8"
    # six variables, each with a handle in the step graph and one in the CALL_ONCE initialiser subgraph
    assert r["float_ops"] == 0 and r["ops"] == 73 and r["op_histogram"]["VAR_HANDLE"] == 12
    v = {c["family"]: c for c in r["compatibility"]}
    xnn = v["arm-cpu"]["xnnpack"]
    assert xnn["ops"] == 61 and xnn["delegated"] < 61
    assert xnn["not_delegated"]["ASSIGN_VARIABLE"] == 6 and xnn["not_delegated"]["CALL_ONCE"] == 1
    # CALL_ONCE (variable initialisation) comes first: the compiler's one cut leaves everything on the CPU
    part = v["edgetpu"]["partition"]
    assert part["first_unmapped"]["op"] == "CALL_ONCE" and part["ops_on_edgetpu"] == 0


def _custom_op_copy(src: Path, dst: Path, op: str = "FULLY_CONNECTED"):
    """A real model with one builtin op turned into a custom op, as third-party models ship them."""
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers
    model = schema.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == getattr(schema.BuiltinOperator, op):
            code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
            code.customCode = b"VendorDense"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))


@pytest.mark.slow
def test_inspect_reports_custom_ops_by_name(tmp_path):
    f = tmp_path / "custom.tflite"
    _custom_op_copy(fixtures.fetch("okay_nabu"), f)
    r = run_cli("inspect", f, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["custom_ops"] == ["VendorDense"] and doc["op_histogram"]["CUSTOM:VendorDense"] == 1
    v = {c["family"]: c for c in doc["compatibility"]}
    assert v["arm-cpu"]["status"] == "unsupported" and "VendorDense" in " ".join(v["arm-cpu"]["notes"])


def test_inspect_refuses_what_it_cannot_parse(tmp_path):
    trunc = tmp_path / "t.tflite"
    trunc.write_bytes(fixtures.fetch("okay_nabu").read_bytes()[:3000])
    junk = tmp_path / "j.tflite"
    junk.write_bytes(os.urandom(5000))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for f, needle in ((trunc, "damaged TFLite file"), (junk, "not a TFLite model"), (text, "is not an artifact edgesdk reads")):
        r = run_cli("inspect", f)
        assert r.returncode == ModelLoadError.exit_code and needle in r.stderr and "Traceback" not in r.stderr


# --- conversions judged by the families ------------------------------------------

def _leaky_model():
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    import keras
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.LeakyReLU(0.1)(x)  # int8 in TFLite, but not an Edge TPU operation
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inp, out)


@pytest.mark.slow
def test_edgetpu_split_at_an_unsupported_op_mid_graph(tmp_path):
    x = np.random.default_rng(0).random((120, 16, 16, 3), np.float32)
    # an untrained model on noise: only the partition is under test, not agreement
    options = ConvertOptions(gate=Thresholds(min_agreement=0))
    art = edgesdk.convert(_leaky_model(), target="coral-usb", calibration=x, output_dir=tmp_path, quiet=True,
                          options=options)
    c = art.manifest["compatibility"]
    assert c["status"] == "supported with fallbacks"
    part = c["partition"]
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    ops = [op["op_name"] for op in TFLiteArtifact(art.path).ops()]
    # uint8 in -> QUANTIZE to int8, two convolutions on the Edge TPU, then the cut
    assert ops[:4] == ["QUANTIZE", "CONV_2D", "CONV_2D", "LEAKY_RELU"]
    assert part["first_unmapped"]["op"] == "LEAKY_RELU" and part["first_unmapped"]["index"] == 3
    assert part["ops_on_edgetpu"] == 3 and part["ops_on_cpu"] == len(ops) - 3 > 0
    assert 0 < part["parameter_fraction_on_edgetpu"] < 1
    assert c["memory"]["fits_on_chip"] and c["memory"]["parameters_mb"] < 0.1


FAKE_COMPILER = """#!/bin/sh
# Stand-in for Coral's edgetpu_compiler (x86-64 Linux only, from Coral's own package repository):
# same arguments, same output format, copies the model instead of compiling it.
out=.; while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done
in="$1"; stem=$(basename "$in" .tflite)
cp "$in" "$out/${stem}_edgetpu.tflite"; echo "operation log" > "$out/${stem}_edgetpu.log"
cat <<LOG
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 12 ms.

Input model: $in
Input size: 6.25KiB
Output model: $out/${stem}_edgetpu.tflite
Output size: 40.10KiB
On-chip memory used for caching model parameters: 5.25KiB
On-chip memory remaining for caching model parameters: 7.93MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 7
Operation log: $out/${stem}_edgetpu.log
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
LOG
"""


@pytest.mark.slow
def test_edgetpu_compiler_is_run_when_on_path(tmp_path, monkeypatch, keras3_mnist, mnist_files):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(FAKE_COMPILER)
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    art = edgesdk.convert(str(keras3_mnist), target="coral-usb", calibration=mnist_files["train"], output_dir=out,
                          quiet=True)
    log = art.manifest["edgetpu_compiler"]
    assert log["compiled"] and log["total_operations"] == 7 and log["operations_on_edgetpu"] == 7
    assert log["path"] == "mnist.coral-usb_edgetpu.tflite"
    assert sorted(p.name for p in out.iterdir()) == [
        "mnist.coral-usb.tflite", "mnist.coral-usb.tflite.json", "mnist.coral-usb_edgetpu.compiler.log",
        "mnist.coral-usb_edgetpu.log", "mnist.coral-usb_edgetpu.tflite"]
    assert "Edge TPU Compiler version" in (out / "mnist.coral-usb_edgetpu.compiler.log").read_text()


@pytest.mark.slow
def test_edgetpu_refuses_dynamic_shapes(keras3_mnist, mnist_files, tmp_path):
    import keras
    sm = tmp_path / "sm"
    keras.saving.load_model(keras3_mnist).export(str(sm), verbose=False)  # a plain SavedModel: dynamic batch
    with pytest.raises(edgesdk.ConversionError, match="dynamic shape"):
        edgesdk.convert(str(sm), target="coral-usb", calibration=mnist_files["train"], output_dir=tmp_path / "o",
                        quiet=True)
    assert list((tmp_path / "o").iterdir()) == []


def _onnx_with(op_type, path, domain="", **attrs):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node(op_type, ["x", "scale", "bias"] if op_type == "LayerNormalization" else ["x"], ["y"],
                            domain=domain, **attrs)
    inits = []
    if op_type == "LayerNormalization":
        inits = [helper.make_tensor("scale", TensorProto.FLOAT, [8], [1.0] * 8),
                 helper.make_tensor("bias", TensorProto.FLOAT, [8], [0.0] * 8)]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tensorrt_version_decides_layer_normalization(tmp_path):
    f = _onnx_with("LayerNormalization", tmp_path / "ln.onnx")
    r = inspect(f, ["jetson-nano", "jetson-orin-nano"])
    nano, orin = r["compatibility"]
    assert nano["status"] == "unsupported" and "LayerNormalization >= 8.6" in " ".join(nano["notes"])
    assert orin["status"] == "supported"


def test_tensorrt_parser_gaps(tmp_path):
    f = _onnx_with("Unique", tmp_path / "u.onnx")
    (orin,) = inspect(f, ["jetson-orin-nano"])["compatibility"]
    assert orin["status"] == "unsupported" and "has no Unique" in " ".join(orin["notes"])


@pytest.mark.slow
def test_jetson_dla_and_nano_int8(keras3_mnist, mnist_files, tmp_path):
    options = ConvertOptions(gate=Thresholds(max_accuracy_drop=3))
    art = edgesdk.convert(str(keras3_mnist), target="jetson-xavier-nx", calibration=mnist_files["train"],
                          output_dir=tmp_path, quiet=True, options=options)  # about DLA, not accuracy
    dla = art.manifest["compatibility"]["dla"]
    assert dla["cores"] == 2 and dla["eligible_ops"] == dla["ops"] - len(dla["gpu_fallback"])
    (nano,) = inspect(art.path, ["jetson-nano"])["compatibility"]
    assert nano["status"] == "unsupported" and "no int8 support" in " ".join(nano["notes"])


@pytest.mark.slow
def test_check_reports_every_family_before_converting(keras3_mnist, tmp_path):
    r = run_cli("check", keras3_mnist, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    fams = {t["family"]: t for t in doc["targets"]}
    assert set(fams) == {"arm-cpu", "edgetpu", "jetson", "rockchip"}
    assert fams["arm-cpu"]["xnnpack"]["not_delegated"] == {"SOFTMAX": 1}
    assert fams["edgetpu"]["status"] == "supported" and fams["jetson"]["status"] == "supported"
    assert fams["rockchip"]["format"] == "rknn" and fams["rockchip"]["npu"]["ops_on_npu"] >= 5
    assert fams["jetson"]["format"] == "onnx"
    assert list(tmp_path.iterdir()) == []  # nothing written where the user looks


@pytest.mark.slow
def test_check_names_what_blocks_each_family(tmp_path):
    from edgesdk.conversion.check import check_model
    import keras
    inp = keras.Input((8,))
    h = keras.layers.Lambda(lambda t: keras.ops.erf(t))(keras.layers.Dense(8)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))
    fams = {t["family"]: t for t in check_model(model)["targets"]}
    assert fams["edgetpu"]["status"] == "unsupported" and "Erf" in fams["edgetpu"]["notes"][0]
    # the Pi takes ONNX too: the model reaches it there, and the TFLite route's reason is kept
    arm = fams["arm-cpu"]["formats"]
    assert arm["tflite"]["status"] == "unsupported" and "Erf" in arm["tflite"]["reason"]
    assert arm["onnx"]["status"] != "unsupported" and fams["arm-cpu"]["format"] == "onnx"
    assert fams["arm-cpu"]["status"] == arm["onnx"]["status"]
    assert fams["jetson"]["status"] == "supported"  # ONNX has Erf and TensorRT parses it
    leaky = {t["family"]: t for t in check_model(_leaky_model())["targets"]}
    assert leaky["edgetpu"]["status"] == "supported with fallbacks"
    assert leaky["edgetpu"]["partition"]["first_unmapped"]["op"] == "LEAKY_RELU"


# --- what a device runs: each family's plan against the device's probe (quick) ---------------

def test_device_plans_check_the_accelerator_against_the_probe(tmp_path):
    from edgesdk import OptionError
    from edgesdk.artifacts.artifact import Artifact
    from edgesdk.profiles import load_profile
    from edgesdk.targets import device_plan
    tfl, onnx = tmp_path / "m.tflite", tmp_path / "m.onnx"
    for p in (tfl, onnx):
        p.write_bytes(b"model")
    art = lambda p, q="int8": Artifact(p, {"recipe": {"quantization": q}})  # noqa: E731
    bare = {"runtimes": {"ai_edge_litert": True, "trtexec": None}, "edgetpu_library": None}
    coral = load_profile("coral-usb")
    assert "edgetpu_compiler was not available" in device_plan("edgetpu", art(tfl), bare, coral).problem
    (tmp_path / "m_edgetpu.tflite").write_bytes(b"compiled")
    assert "no libedgetpu" in device_plan("edgetpu", art(tfl), bare, coral).problem
    plan = device_plan("edgetpu", art(tfl), {**bare, "edgetpu_library": "/usr/lib/aarch64-linux-gnu/libedgetpu.so.1"},
                       coral)
    assert plan.problem is None and plan.path.name == "m_edgetpu.tflite" and plan.accelerator == "edgetpu"
    assert plan.runner_args == ["--delegate", "edgetpu"]

    orin, xavier = load_profile("jetson-orin-nano"), load_profile("jetson-xavier-nx")
    assert "trtexec is not on the device" in device_plan("jetson", art(onnx), bare, orin).problem
    jp = {**bare, "runtimes": {"trtexec": "/usr/src/tensorrt/bin/trtexec"}}
    plan = device_plan("jetson", art(onnx, "fp16"), jp, orin)
    assert plan.problem is None and plan.runner_args == ["--precision", "fp16"] and plan.accelerator == "gpu"
    plan = device_plan("jetson", art(onnx), jp, xavier, dla_core=1)
    assert plan.runner_args == ["--precision", "int8", "--dla-core", 1] and plan.accelerator == "dla1"
    with pytest.raises(OptionError, match="has no DLA"):
        device_plan("jetson", art(onnx), jp, orin, dla_core=0)
    with pytest.raises(OptionError, match="DLA cores 0-1"):
        device_plan("jetson", art(onnx), jp, xavier, dla_core=2)
    for family, name in (("edgetpu", "coral-usb"), ("arm-cpu", "rpi4")):
        with pytest.raises(OptionError, match="--dla-core is for Jetson"):
            device_plan(family, art(tfl), bare, load_profile(name), dla_core=0)
    plan = device_plan("arm-cpu", art(tfl), bare, load_profile("rpi4"))
    assert plan.path == tfl and plan.runner_args == [] and plan.problem is None and plan.accelerator is None


# --- control flow: ops inside If/Loop/Scan bodies count like any other -----------------------

@pytest.mark.slow
def test_silero_vad_ops_inside_if_branches_are_counted():
    r = inspect(fixtures.fetch("silero_vad"))
    assert [i["name"] for i in r["inputs"]] == ["input", "state", "sr"]
    assert r["ops"] == 689 and r["subgraphs"] == 51  # 5 nodes at the top level, the network in If branches
    hist = r["op_histogram"]
    assert hist["If"] == 25 and hist["LSTM"] == 4 and hist["Conv"] == 12


def test_an_op_a_target_lacks_inside_a_branch_blocks_it(tmp_path):
    from onnx import TensorProto, helper, save
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [4])  # noqa: E731
    window = helper.make_graph([helper.make_node("HannWindow", ["n"], ["w0"]),
                                helper.make_node("Add", ["x", "x"], ["a"])], "then", [], [out("a")])
    plain = helper.make_graph([helper.make_node("Relu", ["x"], ["b"])], "else", [], [out("b")])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", TensorProto.INT32, [], [4])),
         helper.make_node("If", ["c"], ["y"], then_branch=window, else_branch=plain)], "g", [x, c], [y])
    path = tmp_path / "branchy.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    r = inspect(path, ["jetson-orin-nano"])
    assert r["ops"] == 5 and r["subgraphs"] == 3 and r["op_histogram"]["HannWindow"] == 1
    jetson = r["compatibility"][0]
    assert jetson["status"] == "unsupported" and any("HannWindow" in n for n in jetson["notes"])


@pytest.mark.slow
def test_tflite_while_body_ops_are_counted(tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def repeat(x):
        return tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, tf.nn.relu(v * 2.0 + 1.0)), (0, x))[1]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([repeat.get_concrete_function()], repeat)
    path = tmp_path / "loop.tflite"
    path.write_bytes(converter.convert())
    r = inspect(path, ["rpi4"])
    hist = r["op_histogram"]
    assert r["subgraphs"] == 3 and hist["WHILE"] == 1  # the step graph, the loop's condition and body
    # the body's MUL and ADD (ReLU fused into it) and the counter's ADD and LESS: 4 of the 5 ops live in subgraphs
    assert hist == {"ADD": 2, "LESS": 1, "MUL": 1, "WHILE": 1} and r["ops"] == 5
    assert r["float_ops"] == 3  # WHILE, MUL and the float ADD; the int32 counter is not float compute
