#!/usr/bin/env python3
"""edgesdk on-device runner: load one model, time it, print one JSON document.

Standalone on purpose: it is copied to the device and run there with nothing
but the standard library, numpy and whichever runtime the device has
(ai_edge_litert, tflite_runtime or tensorflow.lite for .tflite; onnxruntime
for .onnx). Python >= 3.8. It never imports edgesdk; the host imports
`summarize` from here so both sides compute statistics the same way.

Exit status 0 with {"ok": true, ...}; otherwise {"ok": false, "kind": ...,
"error": ...} and a non-zero status.
"""

import argparse
import json
import math
import os
import platform
import sys
import time

SCHEMA_VERSION = 1
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


def peak_rss_mb():
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


def _random_input(np, rng, shape, dtype):
    shape = [int(d) if int(d) > 0 else 1 for d in shape]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.standard_normal(shape).astype(dtype)


class TFLiteModel:
    format = "tflite"

    def __init__(self, path, threads, runtime, delegate):
        import numpy as np
        self.np = np
        self.runtime, self.runtime_version, mod = _tflite_interpreter_class(runtime)
        kwargs = {"model_path": path, "num_threads": threads}
        self.delegate = "xnnpack"
        if delegate == "none":
            resolver = getattr(mod, "OpResolverType", None) or getattr(
                getattr(mod, "experimental", None), "OpResolverType", None)
            if resolver is None:
                raise RunnerFailure("bad_option", "This TFLite runtime cannot disable XNNPACK.")
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            self.delegate = "none"
        try:
            self.interpreter = mod.Interpreter(**kwargs)
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


# --- ONNX --------------------------------------------------------------------

class ONNXModel:
    format = "onnx"

    def __init__(self, path, threads, runtime, delegate):
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
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
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

    def _shape(self, inp):
        return [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]

    def describe(self):
        return [{"name": i.name, "shape": self._shape(i), "dtype": self.np.dtype(t).name}
                for i, t in zip(self.inputs, self.dtypes)]

    def make_feed(self, rng):
        return [_random_input(self.np, rng, self._shape(i), t) for i, t in zip(self.inputs, self.dtypes)]

    def run(self, feed):
        return self.session.run(None, {i.name: v for i, v in zip(self.inputs, feed)})


# --- measurement -------------------------------------------------------------

def measure(path, runs=50, warmup=5, threads=1, duration=None, runtime="auto", delegate="auto", seed=0):
    import numpy as np
    if not os.path.isfile(path):
        raise RunnerFailure("not_found", "Model file %s does not exist on this device." % path)
    rss_start = peak_rss_mb()
    kind = ONNXModel if path.endswith(".onnx") else TFLiteModel
    t0 = time.perf_counter()
    model = kind(path, threads, runtime, delegate)
    init_ms = (time.perf_counter() - t0) * 1000.0
    rng = np.random.default_rng(seed)
    feed = model.make_feed(rng)
    t0 = time.perf_counter()
    model.run(feed)
    first_ms = (time.perf_counter() - t0) * 1000.0
    for _ in range(warmup):
        model.run(feed)
    latencies = []
    clock = time.perf_counter
    deadline = clock() + duration if duration else None
    while True:
        t0 = clock()
        model.run(feed)
        latencies.append((clock() - t0) * 1000.0)
        if deadline is not None:
            if clock() >= deadline and len(latencies) >= 1:
                break
        elif len(latencies) >= runs:
            break
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
        "runs": len(latencies),
        "duration_s": duration,
        "inputs": model.describe(),
        "init_ms": round(init_ms, 4),
        "first_inference_ms": round(first_ms, 4),
        "latency_ms": summarize(latencies),
        "latencies_ms": [round(v, 4) for v in latencies],
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_start,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description="Time one .tflite or .onnx model and print JSON.")
    p.add_argument("model")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--duration", type=float, default=None, help="seconds; overrides --runs")
    p.add_argument("--runtime", default="auto",
                   choices=["auto", "ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime"])
    p.add_argument("--delegate", default="auto", choices=["auto", "xnnpack", "none"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        if a.runs < 1 or a.warmup < 0 or a.threads < 1 or (a.duration is not None and a.duration <= 0):
            raise RunnerFailure("bad_option", "runs and threads must be >= 1, warmup >= 0, duration > 0.")
        result = measure(a.model, a.runs, a.warmup, a.threads, a.duration, a.runtime, a.delegate, a.seed)
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
