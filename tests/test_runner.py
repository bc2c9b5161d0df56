"""The standalone runner: statistics shared with the host, and its contract as a separate program."""

import ast
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from edgesdk.targets import runner_path
from edgesdk.targets.runner import summarize


def test_summarize_matches_numpy_percentiles():
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 3.0, size=997).tolist()
    s = summarize(values)
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(values, q), abs=1e-3)
    assert s["mean"] == pytest.approx(np.mean(values), abs=1e-3)
    assert s["std"] == pytest.approx(np.std(values), abs=1e-3)
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


def test_summarize_single_value():
    assert summarize([2.5]) == {"min": 2.5, "mean": 2.5, "p50": 2.5, "p90": 2.5, "p95": 2.5, "p99": 2.5,
                                "max": 2.5, "std": 0.0}


def test_latencies_stream_in_bounded_memory_with_exact_moments():
    from edgesdk.targets.runner import Latencies
    rng = np.random.default_rng(2)
    values = rng.gamma(2.0, 3.0, size=60000)
    lat = Latencies(keep=5000)
    for v in values:
        lat.add(float(v))
    s = lat.summary()
    assert len(lat.sample) == 5000 and lat.count == 60000
    assert s["mean"] == pytest.approx(values.mean(), abs=1e-3) and s["std"] == pytest.approx(values.std(), abs=1e-3)
    assert s["min"] == pytest.approx(values.min(), abs=1e-4) and s["max"] == pytest.approx(values.max(), abs=1e-4)
    for q in (50, 90, 99):  # from the sample: the true value's rank is within the stated error
        rank = (values < s[f"p{q}"]).mean() * 100
        assert abs(rank - q) <= 100 * 1.645 * 0.5 / 5000 ** 0.5 * 1.5, (q, rank)
    assert "estimated" in lat.describe()["percentiles"] and lat.describe()["samples"] == 60000
    few = Latencies(keep=5000)
    for v in values[:997]:
        few.add(float(v))
    assert few.summary() == summarize(values[:997].tolist()) and few.describe()["percentiles"] == "exact"


def test_runner_is_standalone():
    """Stdlib + numpy + a runtime only: no edgesdk import, parseable by Python 3.8's grammar."""
    source = runner_path().read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "edgesdk" not in imported
    assert imported <= {"argparse", "json", "math", "os", "platform", "re", "shutil", "subprocess", "sys",
                        "tempfile", "threading", "time", "resource", "numpy", "onnxruntime", "importlib",
                        "rknnlite", "random"}


def _run(*args):
    return subprocess.run([sys.executable, str(runner_path()), *map(str, args)], capture_output=True, text=True)


def test_a_long_run_of_a_tiny_model_keeps_a_bounded_sample():
    """2 s of a 45 KB wake-word model are hundreds of thousands of inferences: every one counted, a bounded
    sample kept (a list of them all took a device's runner to 3.9 GB)."""
    from edgesdk import fixtures
    r = _run(fixtures.fetch("okay_nabu"), "--duration", "2")
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["runs"] > 40000, doc.get("runs")
    assert len(doc["latencies_ms"]) == 20000 and doc["latency_sample"]["samples"] == doc["runs"]
    assert len(r.stdout) < 1_000_000  # (its peak RSS is the parent's here: Linux keeps it across fork and exec)


def test_runner_reports_its_own_peak_memory_not_its_parents():
    """A runner started by a large process (a conversion's recovery ladder times its rungs) reports the memory it
    held itself: ru_maxrss counted the parent's 600 MB in the child too."""
    child = (f"import sys; sys.path.insert(0, {str(runner_path().parent)!r}); import runner; "
             "print(runner.peak_rss_mb())")
    parent = ("import subprocess, sys\nheld = bytearray(600 << 20)\nheld[::4096] = bytes(len(held[::4096]))\n"
              "held[::4096] = b'\\1' * len(held[::4096])\n"
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True, "
              "check=True).stdout)")
    peak = float(subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                                check=True).stdout)
    assert 1 < peak < 100, peak


def test_runner_reports_missing_model_as_json(tmp_path):
    r = _run(tmp_path / "nope.tflite")
    doc = json.loads(r.stdout)
    assert r.returncode != 0 and doc == {"ok": False, "kind": "not_found", "error": doc["error"]}


def test_runner_rejects_bad_options(tmp_path):
    r = _run(tmp_path / "x.tflite", "--runs", "0")
    assert r.returncode != 0 and json.loads(r.stdout)["kind"] == "bad_option"


def test_runner_names_what_to_install_when_runtime_is_missing(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"\0" * 16)
    r = _run(f, "--runtime", "tflite_runtime")  # not installed in this venv
    doc = json.loads(r.stdout)
    assert doc["kind"] == "runtime_missing" and "pip install" in doc["error"]


def test_runner_refuses_a_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"this is not a flatbuffer")
    doc = json.loads(_run(f).stdout)
    assert doc["ok"] is False and doc["kind"] == "load_failed"


TRTEXEC_OUTPUT = """&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --onnx=model.onnx --int8
[11/22/2026-07:00:01] [I] === Model Options ===
[11/22/2026-07:00:01] [I] Format: ONNX
[11/22/2026-07:00:40] [I] Engine built in 38.417 sec.
[11/22/2026-07:00:44] [I] === Performance summary ===
[11/22/2026-07:00:44] [I] Throughput: 1398.27 qps
[11/22/2026-07:00:44] [I] Latency: min = 0.6543 ms, max = 1.8813 ms, mean = 0.7011 ms, median = 0.6899 ms, percentile(90%) = 0.7312 ms, percentile(95%) = 0.7620 ms, percentile(99%) = 0.9841 ms
[11/22/2026-07:00:44] [I] Enqueue Time: min = 0.2108 ms, max = 0.6111 ms, mean = 0.2405 ms, median = 0.2370 ms, percentile(90%) = 0.2561 ms, percentile(95%) = 0.2664 ms, percentile(99%) = 0.3372 ms
[11/22/2026-07:00:44] [I] H2D Latency: min = 0.0166 ms, max = 0.0401 ms, mean = 0.0189 ms, median = 0.0183 ms, percentile(90%) = 0.0205 ms, percentile(95%) = 0.0217 ms, percentile(99%) = 0.0286 ms
[11/22/2026-07:00:44] [I] GPU Compute Time: min = 0.6211 ms, max = 1.8324 ms, mean = 0.6643 ms, median = 0.6541 ms, percentile(90%) = 0.6930 ms, percentile(95%) = 0.7219 ms, percentile(99%) = 0.9336 ms
[11/22/2026-07:00:44] [I] Total Host Walltime: 3.00155 s
&&&& PASSED TensorRT.trtexec [TensorRT v8502] # trtexec --onnx=model.onnx --int8
"""


def test_parse_trtexec_summary():
    from edgesdk.targets.runner import parse_trtexec
    p = parse_trtexec(TRTEXEC_OUTPUT, [{"latencyMs": 0.7, "computeMs": 0.66}, {"latencyMs": 0.69}])
    assert p["runtime_version"] == "8.5.2" and p["init_ms"] == 38417.0 and p["passed"]
    assert p["summary"] == {"min": 0.6543, "max": 1.8813, "mean": 0.7011, "p50": 0.6899, "p90": 0.7312,
                            "p95": 0.762, "p99": 0.9841}
    assert p["throughput_qps"] == 1398.27 and p["latencies_ms"] == [0.7, 0.69]
    assert parse_trtexec("&&&& RUNNING TensorRT.trtexec [TensorRT v100300]\n")["runtime_version"] == "10.3.0"


FAKE_TRTEXEC = """#!/usr/bin/env python3
# Stand-in for TensorRT's trtexec (NVIDIA GPUs only): same flags, same output format, fixed timings.
# It builds int8 engines only, so an fp16 build fails as a real one can.
import json, sys
out = open(sys.argv[0] + ".out").read()
if "--help" in sys.argv:
    print(out.splitlines()[0])
    sys.exit(0)
open(sys.argv[0] + ".calls", "a").write(" ".join(sys.argv[1:]) + "\\n")
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if "--saveEngine" in args:
    if "--int8" not in sys.argv:
        print("[E] Error[4]: this stand-in builds int8 engines only")
        sys.exit(1)
    open(args["--saveEngine"], "w").write("int8 engine of " + args["--onnx"])
    print(out)
    sys.exit(0)
assert open(args["--loadEngine"]).read().startswith("int8 engine")
n = int(args["--iterations"])
json.dump([{"startComputeMs": i, "computeMs": 0.5 + 0.001 * i, "latencyMs": 0.6 + 0.001 * i} for i in range(n)],
          open(args["--exportTimes"], "w"))
print(out.replace("Engine built in 38.417 sec", "Engine loaded in 0.25 sec"))
"""


def _jetson_sysfs(root, layout):
    """A Jetson's power monitor as its kernel shows it: hwmon (JetPack 5+) or IIO (JetPack 4), 5 V x 1.2 A in."""
    if layout == "hwmon":
        d = root / "class/hwmon/hwmon1"
        files = {"name": "ina3221", "in1_label": "VDD_IN", "in1_input": "5000", "curr1_input": "1200",
                 "in2_label": "VDD_CPU_GPU_CV", "in2_input": "5000", "curr2_input": "400"}
    else:
        d = root / "bus/iio/devices/iio:device0"
        files = {"name": "ina3221x", "rail_name_0": "POM_5V_IN", "in_voltage0_input": "5000",
                 "in_current0_input": "1200", "rail_name_1": "POM_5V_GPU", "in_voltage1_input": "5000",
                 "in_current1_input": "300"}
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n")
    return root


@pytest.mark.parametrize("layout", ["hwmon", "iio"])
def test_power_rails_on_each_jetpack(tmp_path, monkeypatch, layout):
    from edgesdk.targets import runner
    monkeypatch.setattr(runner, "SYSFS", str(_jetson_sysfs(tmp_path, layout)))
    rails = runner.power_rails()
    main = "VDD_IN" if layout == "hwmon" else "POM_5V_IN"
    assert len(rails) == 2 and main in rails
    sampler = runner.PowerSampler()
    assert sampler.rail[0] == main
    with sampler:
        time.sleep(0.2)
    report = sampler.report(2.0)
    assert report["available"] and report["mean_power_w"] == 6.0 and report["energy_per_inference_mj"] == 12.0


def test_runner_uses_trtexec_when_present(tmp_path):
    import os
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(FAKE_TRTEXEC)
    trtexec.chmod(0o755)
    (tmp_path / "trtexec.out").write_text(TRTEXEC_OUTPUT)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes are only read by trtexec here")
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
           "EDGESDK_SYSFS": str(_jetson_sysfs(tmp_path / "sys", "hwmon"))}
    run = lambda *a: subprocess.run([sys.executable, str(runner_path()), str(model), *a],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    doc = json.loads(run("--runs", "40", "--precision", "int8").stdout)
    assert doc["ok"] and doc["runtime"] == "tensorrt" and doc["runtime_version"] == "8.5.2"
    assert doc["runs"] == 40 and doc["latency_ms"]["min"] == 0.6 and doc["latency_ms"]["max"] == 0.639
    assert doc["delegate"] == "trtexec int8" and doc["init_ms"] == 250.0
    assert doc["engine"] == {"file": "m.trt8.5.2-int8.engine", "cached": False, "build_ms": 38417.0}
    assert doc["energy"]["available"] and doc["energy"]["rail"] == "VDD_IN" and doc["energy"]["mean_power_w"] == 6.0
    doc = json.loads(run("--runs", "10", "--precision", "int8").stdout)
    assert doc["ok"] and doc["engine"]["cached"] and doc["engine"]["build_ms"] is None
    calls = (tmp_path / "trtexec.calls").read_text().splitlines()
    assert sum("--saveEngine" in c for c in calls) == 1 and sum("--loadEngine" in c for c in calls) == 2
    # layers left out of Q/DQ (a detector's head) may run in fp16, not only fp32
    assert "--int8 --fp16" in next(c for c in calls if "--saveEngine" in c)
    r = run("--precision", "fp16")
    doc = json.loads(r.stdout)
    assert r.returncode != 0 and doc["kind"] == "run_failed" and "could not build the engine" in doc["error"]
    assert sorted(p.name for p in tmp_path.glob("m.*")) == ["m.onnx", "m.trt8.5.2-int8.engine"]  # no partial engine


def test_runner_says_where_trtexec_lives_when_it_is_asked_for_and_absent(tmp_path):
    r = _run(tmp_path / "absent.onnx", "--runtime", "trtexec")
    assert json.loads(r.stdout)["kind"] == "not_found"
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    doc = json.loads(_run(model, "--runtime", "trtexec").stdout)
    assert doc["kind"] == "runtime_missing" and "/usr/src/tensorrt/bin" in doc["error"]


def test_edge_tpu_delegate_missing_is_a_clear_error():
    from edgesdk import fixtures
    doc = json.loads(_run(fixtures.fetch("okay_nabu"), "--delegate", "edgetpu").stdout)
    assert doc["kind"] == "runtime_missing" and "libedgetpu" in doc["error"]


def _dynamic_onnx(path):
    from onnx import TensorProto, helper, save
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_dynamic_dims_need_a_shape_and_get_the_one_given(tmp_path):
    model = _dynamic_onnx(tmp_path / "dyn.onnx")
    doc = json.loads(_run(model, "--runs", "2").stdout)
    assert doc["kind"] == "bad_option" and "Input 'x' has dynamic dims" in doc["error"]
    assert "positions 0, 2, 3" in doc["error"] and "--input-shape x:N,3,N,N" in doc["error"]
    doc = json.loads(_run(model, "--runs", "2", "--input-shape", "x:2,3,64,48").stdout)
    assert doc["ok"] and doc["inputs"] == [{"name": "x", "shape": [2, 3, 64, 48], "dtype": "float32"}]
    doc = json.loads(_run(model, "--runs", "2", "--input-shape", "1,3,32,32").stdout)  # the only input: no name
    assert doc["ok"] and doc["inputs"][0]["shape"] == [1, 3, 32, 32]
    doc = json.loads(_run(model, "--runs", "2", "--input-shape", "x:1,4,32,32").stdout)
    assert doc["kind"] == "bad_option" and "changes fixed dim(s) [1]" in doc["error"]
    from edgesdk import OptionError, benchmark
    assert benchmark(model, runs=2, input_shape=["x:1,3,16,16"]).raw["inputs"][0]["shape"] == [1, 3, 16, 16]
    with pytest.raises(OptionError, match="dynamic dims"):
        benchmark(model, runs=2)
    from edgesdk.devices.deploy import deploy
    res = deploy(str(model), "local", runs=2, warmup=0, input_shape="x:1,3,8,8", workdir=str(tmp_path / "w"))
    assert res.raw["inputs"][0]["shape"] == [1, 3, 8, 8]


FAKE_RKNNLITE = '''
# Stand-in for rknn-toolkit-lite2 (aarch64 boards with a Rockchip NPU only): its API, a fixed 2 ms inference.
import json, os, time
import numpy as np
LOG = os.environ["RKNNLITE_LOG"]
class RKNNLite:
    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 3, 7
    def __init__(self, verbose=False):
        self.calls = []
    def load_rknn(self, path):
        return 0 if open(path, "rb").read(4) == b"RKNN" else -1
    def init_runtime(self, core_mask=0):
        open(LOG, "a").write(json.dumps({"core_mask": core_mask}) + "\\n")
        return 0
    def inference(self, inputs, data_format=None):
        open(LOG, "a").write(json.dumps({"shapes": [list(x.shape) for x in inputs], "data_format": data_format})
                             + "\\n")
        time.sleep(0.002)
        return [np.zeros((1, 2), np.float32)]
'''


def test_runner_times_an_rknn_on_the_npu_cores_it_is_given(tmp_path):
    import os
    pkg = tmp_path / "site" / "rknnlite" / "api"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(FAKE_RKNNLITE)
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "RKNNLITE_LOG": str(log)}
    model = tmp_path / "m.rknn"
    model.write_bytes(b"RKNN model bytes")
    run = lambda *a: subprocess.run([sys.executable, str(runner_path()), str(model), *a],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    doc = json.loads(run("--runs", "5", "--warmup", "1", "--threads", "3", "--input-shape", "x:1,3,48,192").stdout)
    assert doc["ok"] and doc["format"] == "rknn" and doc["runtime"] == "rknnlite" and doc["delegate"] == "npu x3"
    assert doc["runs"] == 5 and doc["latency_ms"]["min"] >= 2.0 and doc["inputs"][0]["shape"] == [1, 3, 48, 192]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0] == {"core_mask": 7}  # three cores: NPU_CORE_0_1_2
    assert calls[1] == {"shapes": [[1, 3, 48, 192]], "data_format": ["nchw"]} and len(calls) == 1 + 1 + 1 + 5
    log.unlink()
    doc = json.loads(run("--runs", "2", "--threads", "1", "--input-shape", "x:1,2").stdout)
    assert doc["ok"] and json.loads(log.read_text().splitlines()[0]) == {"core_mask": 0}  # the runtime's choice
    doc = json.loads(run("--runs", "2").stdout)  # the manifest's shapes come from deploy; without them, said so
    assert doc["kind"] == "bad_option" and "--input-shape" in doc["error"]
    env["PYTHONPATH"] = str(tmp_path / "nothing")
    doc = json.loads(run("--runs", "2", "--input-shape", "x:1,2").stdout)
    assert doc["kind"] == "runtime_missing" and "rknn-toolkit-lite2" in doc["error"]


def test_probe_reports_what_the_family_looks_for(tmp_path):
    lib = tmp_path / "libthing.so.1"
    lib.write_bytes(b"")
    r = subprocess.run([sys.executable, str(runner_path()), "--probe", f"--look=thing_library=/nope.so,{lib}",
                        "--look=driver=/sys/module/no_such_driver"], capture_output=True, text=True)
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["thing_library"] == str(lib) and doc["driver"] is None
    assert "edgetpu_library" not in doc  # nothing looked for that no family asked about
