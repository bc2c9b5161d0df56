#!/usr/bin/env python3
"""edgesdk on-device runner: load one model, time it, print one JSON document.

Standalone on purpose: it is copied to the device and run there with nothing
but the standard library, numpy and whichever runtime the device has
(ai_edge_litert, tflite_runtime or tensorflow.lite for .tflite; TensorRT's
trtexec, else onnxruntime, for .onnx; rknn-toolkit-lite2 for .rknn). Python >= 3.8. It never imports
edgesdk; the host imports `summarize` from here so both sides compute
statistics the same way.

Exit status 0 with {"ok": true, ...}; otherwise {"ok": false, "kind": ...,
"error": ...} and a non-zero status.
"""

import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

SCHEMA_VERSION = 1
# Where the kernel's device files are; a test points this at a tree recorded from a board.
SYSFS = os.environ.get("EDGESDK_SYSFS", "/sys")
PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(latencies_ms):
    """min/mean/p50/p90/p95/p99/max/std (population) of a list of milliseconds."""
    values = sorted(float(v) for v in latencies_ms)
    n = len(values)
    mean = sum(values) / n
    stats = {"min": values[0], "mean": mean}
    for q in PERCENTILES:
        stats["p%d" % q] = percentile(values, q)
    stats["max"] = values[-1]
    stats["std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return {k: round(v, 4) for k, v in stats.items()}


class Latencies:
    """Latencies as they come, in bounded memory: count, min, max, mean and std exact (Welford), and a uniform
    sample of at most `keep` of them (reservoir sampling, seeded) for the percentiles. A 3 s run of a tiny
    model makes millions of samples; a list of them all took a device's runner to 3.9 GB. Up to `keep`
    samples the percentiles are exact; past it each is estimated from the sample, its rank within about
    1/sqrt(keep) (0.6 percentile points at 90 % confidence for 20,000), which the summary states."""

    def __init__(self, keep=20000, seed=0):
        self.keep, self.rng = keep, random.Random(seed)
        self.sample, self.count, self.mean, self.m2 = [], 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, ms):
        self.count += 1
        delta = ms - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (ms - self.mean)
        self.min, self.max = min(self.min, ms), max(self.max, ms)
        if len(self.sample) < self.keep:
            self.sample.append(ms)
        else:
            j = self.rng.randrange(self.count)
            if j < self.keep:
                self.sample[j] = ms

    def summary(self):
        stats = summarize(self.sample)
        stats.update({"min": round(self.min, 4), "max": round(self.max, 4), "mean": round(self.mean, 4),
                      "std": round(math.sqrt(self.m2 / self.count), 4)})
        return stats

    def describe(self):
        """How the percentiles were found: from every sample, or from a uniform sample of them."""
        if self.count <= self.keep:
            return {"samples": self.count, "kept": self.count, "percentiles": "exact"}
        return {"samples": self.count, "kept": len(self.sample),
                "percentiles": "estimated from a uniform sample: rank within %.1f percentile points (90 %%)"
                               % (100 * 1.645 * 0.5 / math.sqrt(len(self.sample)))}


def peak_rss_mb():
    """This process's own peak resident memory. On Linux the kernel's high-water mark of this process's memory
    (VmHWM): getrusage's ru_maxrss also counts what the parent held when it started us (exec keeps the forked
    copy's peak), so a runner started by a 2 GB host process would report 2 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 2)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # not on every platform
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 2)


class RunnerFailure(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


# --- TFLite ------------------------------------------------------------------

def _tflite_interpreter_class(preference):
    """The first TFLite runtime that imports, in the order devices usually have them."""
    candidates = [
        ("ai_edge_litert", "ai_edge_litert.interpreter"),
        ("tflite_runtime", "tflite_runtime.interpreter"),
        ("tensorflow", "tensorflow.lite"),
    ]
    if preference != "auto":
        candidates = [c for c in candidates if c[0] == preference]
    tried = []
    for name, module in candidates:
        try:
            mod = __import__(module, fromlist=["Interpreter"])
            version = _version_of(name)
            return name, version, mod
        except Exception as exc:  # ImportError, or a runtime built against another numpy
            tried.append("%s (%s)" % (name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    raise RunnerFailure(
        "runtime_missing",
        "No TFLite runtime could be imported on this device; tried: %s. Install one with "
        "`python3 -m pip install ai-edge-litert` (or tflite-runtime on Python < 3.9)." % "; ".join(tried))


def _version_of(dist):
    try:
        from importlib.metadata import version
        return version(dist.replace("_", "-"))
    except Exception:
        return "unknown"


def parse_input_shapes(text):
    """'x:1,3,640,640;state:2,1,128' -> {'x': [1, 3, 640, 640], ...}; a bare '1,3,640,640' -> {None: [...]}."""
    shapes = {}
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, dims = part.rpartition(":")
        try:
            shapes[name or None] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise RunnerFailure("bad_option", "--input-shape %r: dims must be integers, e.g. "
                                "images:1,3,640,640" % part)
        if any(d < 1 for d in shapes[name or None]):
            raise RunnerFailure("bad_option", "--input-shape %r: every dim must be at least 1" % part)
    return shapes


def fixed_shape(name, dims, shapes, n_inputs):
    """The shape to feed an input: the one asked for, else its own with a dynamic batch taken as 1. Any other
    dynamic dim has no honest default: the error names it."""
    given = shapes.get(name, shapes.get(None) if n_inputs == 1 else None)
    if given is not None:
        if len(given) != len(dims):
            raise RunnerFailure("bad_option", "--input-shape for %s has %d dims; the model's input has %d (%s)"
                                % (name, len(given), len(dims), dims))
        clash = [i for i, (g, d) in enumerate(zip(given, dims)) if isinstance(d, int) and d > 0 and g != d]
        if clash:
            raise RunnerFailure("bad_option", "--input-shape for %s changes fixed dim(s) %s of %s"
                                % (name, clash, dims))
        return list(given)
    dynamic = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
    if [i for i in dynamic if i != 0]:
        raise RunnerFailure("bad_option", "Input '%s' has dynamic dims %s (positions %s): pass --input-shape "
                            "%s:%s" % (name, dims, ", ".join(map(str, dynamic)), name,
                                       ",".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in dims)))
    return [d if isinstance(d, int) and d > 0 else 1 for d in dims]


def _random_input(np, rng, shape, dtype):
    shape = [int(d) if int(d) > 0 else 1 for d in shape]
    if np.issubdtype(dtype, np.integer) and np.dtype(dtype).itemsize > 1:
        # ids and counts (int32/int64): 0 and 1 are valid in any vocabulary; timing does not depend on them
        return rng.integers(0, 2, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):  # quantized int8/uint8: any value
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.standard_normal(shape).astype(dtype)


class TFLiteModel:
    format = "tflite"

    def __init__(self, path, threads, runtime, delegate, shapes=None):
        import numpy as np
        self.np = np
        self.runtime, self.runtime_version, mod = _tflite_interpreter_class(runtime)
        kwargs = {"model_path": path, "num_threads": threads}
        self.delegate = "xnnpack"
        if delegate == "edgetpu":
            load = getattr(mod, "load_delegate", None)
            library = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib"}.get(platform.system(),
                                                                                      "edgetpu.dll")
            try:
                kwargs["experimental_delegates"] = [load(library)]
            except Exception as exc:
                raise RunnerFailure("runtime_missing", "The Edge TPU delegate (%s) could not be loaded: %s. Install "
                                    "libedgetpu1-std from Coral's package repository and plug the device in."
                                    % (library, exc))
            self.delegate = "edgetpu"
        if delegate == "none":
            resolver = getattr(mod, "OpResolverType", None) or getattr(
                getattr(mod, "experimental", None), "OpResolverType", None)
            if resolver is None:
                raise RunnerFailure("bad_option", "This TFLite runtime cannot disable XNNPACK.")
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            self.delegate = "none"
        try:
            self.interpreter = mod.Interpreter(**kwargs)
        except Exception as exc:
            raise RunnerFailure("load_failed", "The TFLite runtime could not load %s: %s" % (path, exc))
        details = self.interpreter.get_input_details()
        for d in details:
            dims = [int(v) for v in d.get("shape_signature", d["shape"])]
            want = fixed_shape(d["name"], dims, shapes or {}, len(details))
            if want != [int(v) for v in d["shape"]]:
                self.interpreter.resize_tensor_input(d["index"], want, strict=False)
        try:
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise RunnerFailure("load_failed", "The TFLite runtime could not load %s: %s" % (path, exc))
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def describe(self):
        return [{"name": d["name"], "shape": [int(s) for s in d["shape"]],
                 "dtype": self.np.dtype(d["dtype"]).name} for d in self.inputs]

    def make_feed(self, rng):
        return [_random_input(self.np, rng, d["shape"], d["dtype"]) for d in self.inputs]

    def run(self, feed):
        for detail, value in zip(self.inputs, feed):
            self.interpreter.set_tensor(detail["index"], value)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self.outputs]

    def timer(self, feed):
        """What the timed loop calls: the input stays set, as in benchmark_model; only invoke() is timed."""
        for detail, value in zip(self.inputs, feed):
            self.interpreter.set_tensor(detail["index"], value)
        return self.interpreter.invoke


# --- ONNX --------------------------------------------------------------------

class ONNXModel:
    format = "onnx"

    def __init__(self, path, threads, runtime, delegate, shapes=None):
        import numpy as np
        self.np = np
        try:
            import onnxruntime as ort
        except Exception as exc:
            raise RunnerFailure(
                "runtime_missing",
                "onnxruntime could not be imported on this device (%s). Install it with "
                "`python3 -m pip install onnxruntime`." % exc)
        self.runtime, self.runtime_version = "onnxruntime", ort.__version__
        self.delegate = "CPUExecutionProvider"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            # nodes kept in float on purpose stay float (ONNX Runtime's WeightBiasQuantization would
            # re-quantize their weights per tensor at load time)
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=["WeightBiasQuantization"])
        except Exception as exc:
            raise RunnerFailure("load_failed", "onnxruntime could not load %s: %s" % (path, exc))
        self.inputs = self.session.get_inputs()
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
                 "tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
                 "tensor(bool)": np.bool_, "tensor(double)": np.float64}
        self.dtypes = []
        for i in self.inputs:
            if i.type not in types:
                raise RunnerFailure("load_failed", "Input %s has unsupported type %s." % (i.name, i.type))
            self.dtypes.append(types[i.type])
        self.shapes = [fixed_shape(i.name, list(i.shape), shapes or {}, len(self.inputs)) for i in self.inputs]

    def _shape(self, inp):
        return self.shapes[self.inputs.index(inp)]

    def describe(self):
        return [{"name": i.name, "shape": self._shape(i), "dtype": self.np.dtype(t).name}
                for i, t in zip(self.inputs, self.dtypes)]

    def make_feed(self, rng):
        return [_random_input(self.np, rng, self._shape(i), t) for i, t in zip(self.inputs, self.dtypes)]

    def run(self, feed):
        return self.session.run(None, {i.name: v for i, v in zip(self.inputs, feed)})

    def timer(self, feed):
        named = {i.name: v for i, v in zip(self.inputs, feed)}
        return lambda: self.session.run(None, named)


# --- Rockchip NPU (RKNNLite) ---------------------------------------------------------

# one core: the runtime picks it (single-core SoCs such as the RK3566 take no mask); more: the RK3588's
RKNN_CORE_MASKS = {1: "NPU_CORE_AUTO", 2: "NPU_CORE_0_1", 3: "NPU_CORE_0_1_2"}


class RKNNModel:
    """An .rknn on the board's NPU through rknn-toolkit-lite2; threads picks how many NPU cores run it."""
    format = "rknn"

    def __init__(self, path, threads, runtime, delegate, shapes=None):
        import numpy as np
        self.np = np
        try:
            from rknnlite.api import RKNNLite
        except Exception as exc:
            raise RunnerFailure("runtime_missing", "rknn-toolkit-lite2 could not be imported on this device (%s). "
                                "Run `edgesdk device setup` with a Rockchip profile." % exc)
        self.runtime, self.runtime_version = "rknnlite", _version_of("rknnlite") or _dist_version("rknn-toolkit-lite2")
        cores = min(max(threads, 1), 3)
        self.delegate = "npu x%d" % cores
        self.rknn = RKNNLite(verbose=False)
        if self.rknn.load_rknn(path) != 0:
            raise RunnerFailure("load_failed", "RKNNLite could not load %s." % path)
        mask = getattr(RKNNLite, RKNN_CORE_MASKS[cores], None)
        status = self.rknn.init_runtime(core_mask=mask) if mask is not None else self.rknn.init_runtime()
        if status != 0:
            raise RunnerFailure("runtime_missing", "RKNNLite could not start the NPU (status %s): the board needs "
                                "Rockchip's rknpu driver and librknnrt.so." % status)
        named = shapes or {}
        if not named:
            raise RunnerFailure("bad_option", "an .rknn needs --input-shape (the manifest's; deploy passes it).")
        self.shapes = [list(v) for v in named.values()]
        self.names = list(named)

    def describe(self):
        return [{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(self.names, self.shapes)]

    def make_feed(self, rng):
        return [rng.standard_normal(s).astype(self.np.float32) for s in self.shapes]

    def _formats(self, feed):
        # 4-D inputs come as the ONNX graph had them, which RKNN calls nchw whatever the axes mean
        return ["nchw" if len(x.shape) == 4 else "nhwc" for x in feed]

    def run(self, feed):
        return self.rknn.inference(inputs=feed, data_format=self._formats(feed))

    def timer(self, feed):
        formats = self._formats(feed)
        return lambda: self.rknn.inference(inputs=feed, data_format=formats)


def _dist_version(dist):
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:
        return None


# --- TensorRT (trtexec) ----------------------------------------------------------

TRTEXEC_PLACES = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/bin/trtexec")  # JetPack puts it in the first


def find_trtexec():
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_PLACES if os.access(p, os.X_OK)), None)


_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+)%\))\s*=\s*([\d.eE+-]+)\s*ms")


def _trt_version(digits):
    """TensorRT's packed version: 8502 -> 8.5.2, 100300 -> 10.3.0."""
    if len(digits) == 4:
        return "%d.%d.%d" % (int(digits[0]), int(digits[1]), int(digits[2:]))
    if len(digits) == 6:
        return "%d.%d.%d" % (int(digits[:2]), int(digits[2:4]), int(digits[4:]))
    return digits


def parse_trtexec(stdout, times=None):
    """trtexec's summary (and --exportTimes records when given) in the runner's result shape."""
    out = {}
    m = re.search(r"TensorRT v(\d+)", stdout)
    if m:
        out["runtime_version"] = _trt_version(m.group(1))
    m = re.search(r"Engine built in ([\d.]+) sec", stdout)
    if m:
        out["init_ms"] = round(float(m.group(1)) * 1000.0, 4)
    m = re.search(r"Engine loaded in ([\d.]+) sec", stdout)
    if m:
        out["load_ms"] = round(float(m.group(1)) * 1000.0, 4)
    for line in stdout.splitlines():
        if "] Latency:" in line or line.strip().startswith("Latency:"):
            stats = {}
            for name, pct, value in _STAT.findall(line):
                key = ("p" + pct) if pct else {"median": "p50"}.get(name, name)
                stats[key] = float(value)
            out["summary"] = stats
        m = re.search(r"Throughput:\s*([\d.]+)\s*qps", line)
        if m:
            out["throughput_qps"] = float(m.group(1))
    if times:
        out["latencies_ms"] = [float(t.get("latencyMs", t.get("computeMs", 0.0))) for t in times]
    out["passed"] = "&&&& PASSED" in stdout
    return out


def trtexec_version(trtexec):
    """TensorRT's version as trtexec states it (its banner), or None."""
    try:
        out = subprocess.run([trtexec, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"TensorRT v(\d+)", out)
    return _trt_version(m.group(1)) if m else None


def _trtexec(cmd):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    return proc, parse_trtexec(proc.stdout)


def _trt_shapes(input_shapes):
    """--shapes for trtexec: it needs each dynamic input by name."""
    shapes = parse_input_shapes(input_shapes)
    if None in shapes:
        raise RunnerFailure("bad_option", "trtexec needs --input-shape with input names (name:1,3,640,640).")
    return ["--shapes=" + ",".join("%s:%s" % (n, "x".join(map(str, d))) for n, d in sorted(shapes.items()))] \
        if shapes else []


def build_engine(trtexec, path, precision, dla_core, shapes=()):
    """The TensorRT engine for this artifact, built once per TensorRT version, precision and DLA core and
    kept beside the artifact: (engine path, build ms or None when it was already there)."""
    version = trtexec_version(trtexec) or "unknown"
    engine = "%s.trt%s-%s%s%s.engine" % (os.path.splitext(path)[0], version, precision or "fp32",
                                         "" if dla_core is None else "-dla%d" % dla_core,
                                         "" if not shapes else "-" + re.sub(r"[^0-9A-Za-z]+", "_", shapes[0][9:]))
    if os.path.exists(engine):
        return engine, None
    part = "%s.%d.part" % (engine, os.getpid())  # swept by deploy if this process dies mid-build
    cmd = [trtexec, "--onnx=%s" % path, "--saveEngine=%s" % part, "--iterations=1", "--warmUp=0", "--duration=0"]
    cmd += list(shapes)
    if precision == "int8":  # what stays out of Q/DQ (a detector's head kept float) runs in fp16, not fp32
        cmd += ["--int8", "--fp16"]
    elif precision == "fp16":
        cmd.append("--fp16")
    if dla_core is not None:
        cmd += ["--useDLACore=%d" % dla_core, "--allowGPUFallback"]
    t0 = time.perf_counter()
    try:
        proc, parsed = _trtexec(cmd)
        if proc.returncode != 0 or not parsed["passed"] or not os.path.exists(part):
            tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
            raise RunnerFailure("run_failed", "trtexec could not build the engine (exit %d): %s"
                                % (proc.returncode, tail))
        os.replace(part, engine)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return engine, round(parsed.get("init_ms") or (time.perf_counter() - t0) * 1000.0, 4)


def measure_trtexec(trtexec, path, runs, warmup, duration, precision, dla_core, input_shapes=None):
    shapes = _trt_shapes(input_shapes)
    engine, built_ms = build_engine(trtexec, path, precision, dla_core, shapes)
    fd, times_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [trtexec, "--loadEngine=%s" % engine, "--iterations=%d" % runs, "--avgRuns=1",
           "--warmUp=%d" % max(200, warmup * 20), "--duration=%d" % (duration or 0),
           "--exportTimes=%s" % times_path] + shapes
    if dla_core is not None:
        cmd += ["--useDLACore=%d" % dla_core]
    try:
        with PowerSampler() as power:  # the timed runs only, not the engine build
            proc, parsed = _trtexec(cmd)
        try:
            with open(times_path) as f:
                times = json.load(f)
        except (OSError, ValueError):
            times = None
    finally:
        if os.path.exists(times_path):
            os.unlink(times_path)
    parsed = parse_trtexec(proc.stdout, times)
    if proc.returncode != 0 or not parsed["passed"]:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise RunnerFailure("run_failed", "trtexec failed (exit %d): %s" % (proc.returncode, tail))
    times_ms = parsed.get("latencies_ms")
    if not times_ms:
        raise RunnerFailure("run_failed", "trtexec printed no per-iteration times (--exportTimes).")
    latencies = Latencies()
    for v in times_ms:
        latencies.add(v)
    stats = latencies.summary()
    return {
        "ok": True, "schema": SCHEMA_VERSION, "model": os.path.basename(path), "format": "onnx",
        "runtime": "tensorrt", "runtime_version": parsed.get("runtime_version", "unknown"),
        "delegate": "trtexec %s%s" % (precision or "fp32", "" if dla_core is None else " DLA%d" % dla_core),
        "threads": 1, "warmup": 0, "warmup_ms": max(200, warmup * 20), "runs": latencies.count,
        "duration_s": duration, "inputs": [], "init_ms": parsed.get("load_ms", parsed.get("init_ms", 0.0)),
        "engine": {"file": os.path.basename(engine), "cached": built_ms is None, "build_ms": built_ms},
        "first_inference_ms": round(times_ms[0], 4), "latency_ms": stats,
        "latencies_ms": [round(v, 4) for v in latencies.sample], "latency_sample": latencies.describe(),
        "trtexec_summary": parsed.get("summary", {}),
        "throughput_qps": parsed.get("throughput_qps"), "energy": power.report(stats["mean"]),
        "peak_rss_mb": None, "rss_before_load_mb": None,
        "python": platform.python_version(), "machine": platform.machine(),
    }


# --- probe -------------------------------------------------------------------------

def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _command(argv):
    exe = shutil.which(argv[0]) or next((p for p in ("/usr/bin/" + argv[0], "/opt/vc/bin/" + argv[0])
                                         if os.access(p, os.X_OK)), None)
    if exe is None:
        return None
    try:
        return subprocess.run([exe] + argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _importable(name, load=True):
    """The version of a module that imports here (TensorFlow is only looked up: importing it takes seconds)."""
    try:
        if load:
            __import__(name)
        else:
            import importlib.util
            if importlib.util.find_spec(name) is None:
                return None
        return _version_of(name)
    except Exception:
        return None


def probe(looks=()):
    """What the device is and the conditions it measures under: stored beside every result.

    looks: ("name=/a/path,/another", ...) what the profile's target family needs here (a library, a
    driver); each name is reported with the first of its paths that exists, or None."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    model = None
    for key in ("model name", "Model", "Hardware", "CPU part"):
        m = re.search(r"^%s\s*:\s*(.+)$" % re.escape(key), cpuinfo, re.M)
        if m:
            model = m.group(1).strip()
            break
    meminfo = _read("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    os_release = _read("/etc/os-release") or ""
    m_os = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', os_release, re.M)
    cpu0 = SYSFS + "/devices/system/cpu/cpu0/cpufreq/"
    temps = []
    thermal = SYSFS + "/class/thermal"
    for zone in sorted(os.listdir(thermal)) if os.path.isdir(thermal) else []:
        value = _read("%s/%s/temp" % (thermal, zone))
        if value and value.lstrip("-").isdigit():
            temps.append({"zone": _read("%s/%s/type" % (thermal, zone)) or zone,
                          "celsius": int(value) / 1000.0})
    runtimes = {name: _importable(name) for name in ("numpy", "ai_edge_litert", "tflite_runtime", "onnxruntime",
                                                     "rknnlite")}
    runtimes["tensorflow"] = _importable("tensorflow", load=False)
    runtimes["trtexec"] = find_trtexec()
    throttled = _command(["vcgencmd", "get_throttled"])
    found = {}
    for look in looks:
        name, _, paths = look.partition("=")
        found[name] = next((p for p in paths.split(",") if p and os.path.exists(p)), None)
    return {
        **found,
        "ok": True, "schema": SCHEMA_VERSION, "machine": platform.machine(), "cpu_model": model,
        "cores": os.cpu_count(), "memory_mb": int(m.group(1)) // 1024 if m else None,
        "os": m_os.group(1) if m_os else platform.platform(), "kernel": platform.release(),
        "python": platform.python_version(), "runtimes": runtimes,
        "governor": _read(cpu0 + "scaling_governor"),
        "cur_freq_mhz": int(_read(cpu0 + "scaling_cur_freq")) // 1000 if (_read(cpu0 + "scaling_cur_freq") or "").isdigit() else None,
        "max_freq_mhz": int(_read(cpu0 + "cpuinfo_max_freq")) // 1000 if (_read(cpu0 + "cpuinfo_max_freq") or "").isdigit() else None,
        "temperatures": temps,
        "throttled": throttled.split("=", 1)[-1] if throttled else None,
        "power_mode": _command(["nvpmodel", "-q"]),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# --- energy ------------------------------------------------------------------------

def _monitors(root):
    for dev in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        base = os.path.join(root, dev)
        if (_read(os.path.join(base, "name")) or "") in ("ina3221", "ina3221x"):
            yield base


def power_rails():
    """Board power monitors the kernel exposes (the INA3221 on Jetson modules): {label: (mV file, mA file)}.

    JetPack 5 and newer expose them through hwmon (in1_label, in1_input, curr1_input); JetPack 4 (Nano,
    TX2, Xavier on L4T 32) through IIO (rail_name_0, in_voltage0_input, in_current0_input)."""
    rails = {}
    for base in _monitors(SYSFS + "/class/hwmon"):
        for ch in range(1, 4):
            label = _read(os.path.join(base, "in%d_label" % ch))
            volt, curr = os.path.join(base, "in%d_input" % ch), os.path.join(base, "curr%d_input" % ch)
            if label and os.path.exists(volt) and os.path.exists(curr):
                rails[label] = (volt, curr)
    for base in _monitors(SYSFS + "/bus/iio/devices"):
        for ch in range(3):
            label = _read(os.path.join(base, "rail_name_%d" % ch))
            volt, curr = (os.path.join(base, "in_voltage%d_input" % ch), os.path.join(base, "in_current%d_input" % ch))
            if label and os.path.exists(volt) and os.path.exists(curr):
                rails[label] = (volt, curr)
    return rails


class PowerSampler:
    """Samples the total input rail every 20 ms while the timed runs execute."""

    def __init__(self):
        rails = power_rails()
        name = next((n for n in rails if n.upper() in ("VDD_IN", "POM_5V_IN", "VDD_IN_SYS")), None)
        self.rail = (name, rails[name]) if name else None
        self.samples = []
        self._stop = None

    def __enter__(self):
        if self.rail:
            import threading
            self._stop = threading.Event()

            def loop():
                while not self._stop.is_set():
                    v, i = _read(self.rail[1][0]), _read(self.rail[1][1])
                    if v and i:
                        self.samples.append(float(v) * float(i) / 1e6)  # mV * mA -> W
                    self._stop.wait(0.02)
            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._stop:
            self._stop.set()
            self._thread.join()

    def report(self, mean_latency_ms):
        if not self.rail:
            return {"available": False, "reason": "no INA3221 power monitor exposed by this device"}
        if not self.samples:
            return {"available": False, "reason": "the power monitor returned no samples"}
        watts = sum(self.samples) / len(self.samples)
        return {"available": True, "rail": self.rail[0], "mean_power_w": round(watts, 3), "samples": len(self.samples),
                "energy_per_inference_mj": round(watts * mean_latency_ms, 4)}


# --- measurement -------------------------------------------------------------

def measure(path, runs=50, warmup=5, threads=1, duration=None, runtime="auto", delegate="auto", seed=0,
            precision=None, dla_core=None, input_shapes=None):
    if not os.path.isfile(path):
        raise RunnerFailure("not_found", "Model file %s does not exist on this device." % path)
    if path.endswith(".onnx") and runtime in ("auto", "trtexec"):
        trtexec = find_trtexec()
        if trtexec:
            return measure_trtexec(trtexec, path, runs, warmup, duration, precision, dla_core, input_shapes)
        if runtime == "trtexec":
            raise RunnerFailure("runtime_missing", "trtexec is not on this device (JetPack installs it in "
                                "/usr/src/tensorrt/bin); install TensorRT or use --runtime onnxruntime.")
    import numpy as np
    rss_start = peak_rss_mb()
    kind = ONNXModel if path.endswith(".onnx") else RKNNModel if path.endswith(".rknn") else TFLiteModel
    t0 = time.perf_counter()
    model = kind(path, threads, runtime, delegate, parse_input_shapes(input_shapes))
    init_ms = (time.perf_counter() - t0) * 1000.0
    rng = np.random.default_rng(seed)
    feed = model.make_feed(rng)
    t0 = time.perf_counter()
    model.run(feed)
    first_ms = (time.perf_counter() - t0) * 1000.0
    step = model.timer(feed)
    for _ in range(warmup):
        step()
    latencies = Latencies(seed=seed)
    clock = time.perf_counter
    deadline = clock() + duration if duration else None
    with PowerSampler() as power:
        while True:
            t0 = clock()
            step()
            latencies.add((clock() - t0) * 1000.0)
            if deadline is not None:
                if clock() >= deadline and latencies.count >= 1:
                    break
            elif latencies.count >= runs:
                break
    stats = latencies.summary()
    return {
        "ok": True,
        "schema": SCHEMA_VERSION,
        "model": os.path.basename(path),
        "format": model.format,
        "runtime": model.runtime,
        "runtime_version": model.runtime_version,
        "delegate": model.delegate,
        "threads": threads,
        "warmup": warmup,
        "runs": latencies.count,
        "duration_s": duration,
        "inputs": model.describe(),
        "init_ms": round(init_ms, 4),
        "first_inference_ms": round(first_ms, 4),
        "latency_ms": stats,
        "latencies_ms": [round(v, 4) for v in latencies.sample],  # every one, or a uniform sample of them
        "latency_sample": latencies.describe(),
        "energy": power.report(stats["mean"]),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_start,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description="Time one .tflite, .onnx or .rknn model and print JSON.")
    p.add_argument("model", nargs="?")
    p.add_argument("--probe", action="store_true", help="describe this device instead of timing a model")
    p.add_argument("--look", action="append", default=[], metavar="NAME=PATH[,PATH]",
                   help="with --probe: report NAME as the first of these paths that exists (repeatable)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--duration", type=float, default=None, help="seconds; overrides --runs")
    p.add_argument("--runtime", default="auto",
                   choices=["auto", "ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime", "trtexec"])
    p.add_argument("--precision", default=None, choices=["int8", "fp16", "fp32"],
                   help="trtexec engine precision (ONNX on TensorRT)")
    p.add_argument("--dla-core", type=int, default=None, help="trtexec --useDLACore")
    p.add_argument("--delegate", default="auto", choices=["auto", "xnnpack", "edgetpu", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", default=None,
                   help="shapes for dynamic inputs: name:1,3,640,640;other:1,16 (a bare shape for a single input)")
    a = p.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a.look)))
        return 0
    if not a.model:
        p.error("a model path is required (or --probe)")
    try:
        if a.runs < 1 or a.warmup < 0 or a.threads < 1 or (a.duration is not None and a.duration <= 0):
            raise RunnerFailure("bad_option", "runs and threads must be >= 1, warmup >= 0, duration > 0.")
        result = measure(a.model, a.runs, a.warmup, a.threads, a.duration, a.runtime, a.delegate, a.seed,
                         a.precision, a.dla_core, a.input_shape)
    except RunnerFailure as exc:
        print(json.dumps({"ok": False, "kind": exc.kind, "error": str(exc)}))
        return 3
    except ImportError as exc:
        print(json.dumps({"ok": False, "kind": "runtime_missing",
                          "error": "numpy could not be imported (%s); install it with "
                                   "`python3 -m pip install numpy`." % exc}))
        return 3
    except Exception as exc:  # the model crashed the runtime mid-run
        print(json.dumps({"ok": False, "kind": "run_failed", "error": "%s: %s" % (type(exc).__name__, exc)}))
        return 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
