"""Coral Edge TPU: every op 8-bit integer, static shapes, batch 1, and only the ops the compiler maps.

Before compiling, the graph is checked against the operations Coral documents
as supported (Edge TPU compiler 16): the compiler cuts the graph once, at the
first op it cannot map, and everything after that runs on the CPU, even ops
it could map. Parameters beyond the 8 MB on-chip cache stream from host
memory every inference.

edgetpu_compiler exists only for x86-64 Linux, from Coral's own package
repository. When it is on PATH it is run, its log kept and parsed; otherwise
the checked, compile-ready int8 artifact is kept and the report says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from edgesdk.errors import ConversionError

from . import Compiled, DevicePlan, TargetFamily
from .arm_cpu import float_compute_ops

NAME = "edgetpu"
SETUP_NOTE = ("The Edge TPU also needs libedgetpu, a system library that no wheel carries: install "
              "libedgetpu1-std from Coral's package repository on the device and plug the accelerator in.")

# Coral's list of operations the Edge TPU compiler maps, by TFLite builtin name.
SUPPORTED_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE",
    "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE",
    "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
SOFTMAX_MAX_ELEMENTS = 16000


def op_problem(reader, op) -> str | None:
    """Why the compiler would not map this op, or None."""
    name = op["op_name"]
    if name.startswith("CUSTOM:"):
        return f"custom op {name[7:]}"
    if name not in SUPPORTED_OPS:
        return f"{name} is not an Edge TPU operation"
    for i in op["inputs"] + op["outputs"]:
        if i < 0:
            continue
        dtype = reader.tensor_type(i)
        if dtype in ("float32", "float16"):
            return f"{name} computes in {dtype}"
        if reader.constant(i) is not None:  # weights (4-D conv filters) are fine
            continue
        shape = [int(d) for d in reader.graph.tensors[i].shape]
        if len([d for d in shape[:-3] if d > 1]):
            return f"{name} has a tensor of shape {shape}: only the 3 innermost dimensions may exceed 1"
    if name == "SOFTMAX":
        shape = [int(d) for d in reader.graph.tensors[op["inputs"][0]].shape]
        size = 1
        for d in shape:
            size *= d
        if size > SOFTMAX_MAX_ELEMENTS:
            return f"SOFTMAX over {size} elements (the Edge TPU takes at most {SOFTMAX_MAX_ELEMENTS})"
    return None


def partition(reader) -> dict:
    """Where the compiler's single cut falls, and how much of the model runs on the Edge TPU."""
    ops = reader.ops()
    first, reason = None, None
    for op in ops:
        problem = op_problem(reader, op)
        if problem is not None:
            first, reason = op, problem
            break
    weights_before = weights_total = 0
    sizes: dict = {}
    for op in ops:
        for i in op["inputs"]:
            if i >= 0 and i not in sizes:
                value = reader.constant(i)
                sizes[i] = 0 if value is None else int(value.size)
        n = sum(sizes[i] for i in op["inputs"] if i >= 0)
        weights_total += n
        if first is None or op["index"] < first["index"]:
            weights_before += n
    on_tpu = len(ops) if first is None else first["index"]
    return {"ops": len(ops), "ops_on_edgetpu": on_tpu, "ops_on_cpu": len(ops) - on_tpu,
            "first_unmapped": None if first is None else {"index": first["index"], "op": first["op_name"],
                                                          "reason": reason},
            "parameter_fraction_on_edgetpu": round(weights_before / weights_total, 4) if weights_total else 1.0}


def check(info: dict, profile, recipe=None) -> dict:
    if info["format"] != "tflite":
        message = f"The Edge TPU ({profile.name}) runs TFLite models only, not {info['format']}."
        if recipe is not None:
            raise ConversionError(message)
        return {"family": NAME, "profile": profile.name, "status": "unsupported", "notes": [message],
                "fallbacks": []}
    reader = info["reader"]
    float_ops = info["coverage"]["float_ops"] + info["coverage"]["io_conversion_ops"]
    if float_ops:
        names = float_compute_ops(float_ops)
        message = (f"The Edge TPU ({profile.name}) runs only fully int8 models, but this artifact computes "
                   f"{', '.join(names)} in float. Quantize the whole model with full-integer calibration, "
                   f"or replace those layers.")
        if recipe is not None:
            raise ConversionError(message)
        return {"family": NAME, "profile": profile.name, "status": "unsupported", "notes": [message],
                "fallbacks": names}
    for t in info["io"]["inputs"] + info["io"]["outputs"]:
        problem = None
        if any(d < 1 for d in t["shape"]):
            problem = f"tensor '{t['name']}' has a dynamic shape {t['shape']}; the Edge TPU needs static shapes"
        elif t["shape"] and t["shape"][0] != 1:
            problem = f"tensor '{t['name']}' has batch {t['shape'][0]}; the Edge TPU runs batch 1"
        if problem:
            if recipe is not None:
                raise ConversionError(f"{problem}. Fix the input shape before converting.")
            return {"family": NAME, "profile": profile.name, "status": "unsupported", "notes": [problem],
                    "fallbacks": []}
    part = partition(reader)
    notes, fallbacks = [], []
    if part["first_unmapped"]:
        f = part["first_unmapped"]
        notes.append(f"the graph splits at op {f['index']} ({f['reason']}): {part['ops_on_edgetpu']} of "
                     f"{part['ops']} ops ({part['parameter_fraction_on_edgetpu']:.0%} of the parameters) run on "
                     f"the Edge TPU, the remaining {part['ops_on_cpu']} on the CPU")
        fallbacks.append(f["op"])
    params_mb = reader.parameter_bytes() / 2**20
    cache = profile.accelerator.on_chip_memory_mb or 8.0
    memory = {"parameters_mb": round(params_mb, 3), "on_chip_cache_mb": cache,
              "fits_on_chip": params_mb <= cache}
    if params_mb > cache:
        notes.append(f"parameters ({params_mb:.1f} MB) exceed the {cache:g} MB on-chip cache: the rest streams "
                     f"from host memory every inference")
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        notes.append("edgetpu_compiler is not on PATH (it ships only for x86-64 Linux, from Coral's package "
                     "repository): the checked int8 artifact is compile-ready; compile it with "
                     "`edgetpu_compiler -s ARTIFACT` before deploying")
    return {"family": NAME, "profile": profile.name, "status": "supported with fallbacks" if fallbacks
            else "supported", "fallbacks": fallbacks, "notes": notes, "partition": part, "memory": memory,
            "compiler": compiler}


# --- the compiler -------------------------------------------------------------

_SIZE = re.compile(r"^([\d.]+)\s*([KMG]?i?B)$")


def _bytes(text: str) -> int | None:
    m = _SIZE.match(text.strip())
    if not m:
        return None
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}[m.group(2)]
    return int(float(m.group(1)) * scale)


def parse_compiler_log(text: str) -> dict:
    """edgetpu_compiler's stdout (with -s): summary figures and the per-operator mapping table."""
    out: dict = {"operators": []}
    keys = {
        "Edge TPU Compiler version": "version", "Input model": "input_model", "Output model": "output_model",
        "Input size": "input_size", "Output size": "output_size",
        "On-chip memory used for caching model parameters": "on_chip_memory_used",
        "On-chip memory remaining for caching model parameters": "on_chip_memory_remaining",
        "Off-chip memory used for streaming uncached model parameters": "off_chip_memory_used",
        "Number of Edge TPU subgraphs": "edgetpu_subgraphs", "Total number of operations": "total_operations",
        "Number of operations that will run on Edge TPU": "operations_on_edgetpu",
        "Number of operations that will run on CPU": "operations_on_cpu", "Operation log": "operation_log",
    }
    in_table = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("Edge TPU Compiler version"):
            out["version"] = line.rsplit(" ", 1)[-1]
            continue
        if line.startswith("Model compiled successfully"):
            out["compiled"] = True
            m = re.search(r"in (\d+) ms", line)
            if m:
                out["compile_ms"] = int(m.group(1))
            continue
        if re.match(r"^Operator\s+Count\s+Status$", line):
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\S+)\s+(\d+)\s+(.+)$", line)
            if m:
                out["operators"].append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3).strip(),
                                         "mapped": m.group(3).strip() == "Mapped to Edge TPU"})
                continue
            in_table = False
        key, sep, value = line.partition(":")
        if sep and key in keys:
            value = value.strip()
            field = keys[key]
            if field.endswith(("size", "_used", "_remaining")):
                out[field + "_bytes"] = _bytes(value)
            elif field in ("edgetpu_subgraphs", "total_operations", "operations_on_edgetpu", "operations_on_cpu"):
                out[field] = int(value)
            else:
                out[field] = value
    out.setdefault("compiled", False)
    if "total_operations" in out and "operations_on_edgetpu" not in out and out["compiled"]:
        out["operations_on_edgetpu"] = out["total_operations"]  # printed only when some ops fall to the CPU
        out["operations_on_cpu"] = 0
    return out


def compile_model(artifact: Path, out_dir: Path, timeout: int = 180) -> dict:
    """Run edgetpu_compiler -s; returns the parsed log (with the raw text and the output path)."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        raise ConversionError("edgetpu_compiler is not on PATH.")
    proc = subprocess.run([compiler, "-s", "-o", str(out_dir), str(artifact)], capture_output=True, text=True,
                          timeout=timeout + 30)
    log = parse_compiler_log(proc.stdout)
    log["log"] = proc.stdout + proc.stderr
    if proc.returncode != 0 or not log["compiled"]:
        raise ConversionError(f"edgetpu_compiler failed (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    log["path"] = str(out_dir / (artifact.stem + "_edgetpu.tflite"))
    return log


def device_plan(artifact, probe: dict, profile) -> DevicePlan:
    """The compiled model on the Edge TPU, or the reason it cannot run there."""
    compiled = artifact.path.with_name(artifact.path.stem + "_edgetpu.tflite")
    if not compiled.is_file():
        return DevicePlan(artifact.path, problem=f"there is no {compiled.name} beside the artifact: "
                          f"edgetpu_compiler was not available when it was converted (install it from Coral's "
                          f"package repository and convert again)")
    if not probe.get("edgetpu_library"):
        return DevicePlan(artifact.path, problem="the device has no libedgetpu: install libedgetpu1-std from "
                          "Coral's package repository there and plug the accelerator in")
    return DevicePlan(compiled, ["--delegate", "edgetpu"], accelerator="edgetpu")


def compile_step(artifact: Path, report: dict, work: Path, progress) -> Compiled | None:
    """edgetpu_compiler on the validated artifact when check() found it; its log kept beside the result."""
    if not report.get("compiler"):
        return None
    progress.step("compiling for the Edge TPU (edgetpu_compiler)")
    out = work / "out"
    out.mkdir()
    log = compile_model(artifact, out)
    (out / (artifact.stem + "_edgetpu.compiler.log")).write_text(log.pop("log"))
    log["path"] = artifact.stem + "_edgetpu.tflite"
    return Compiled(sorted(out.iterdir()), "edgetpu_compiler", log)


class EdgeTPU(TargetFamily):
    name = NAME
    description = "Coral Edge TPU: full-int8 TFLite, compiled by edgetpu_compiler"
    formats = ("tflite",)
    quantizations = ("int8",)
    float_ops = False  # the compiler maps int8 ops only; anything else splits the graph onto the CPU
    int16_activations = ()
    accelerator_kinds = ("edgetpu",)
    accelerator_keys = {"on_chip_memory_mb": (float, 8.0)}
    representative = "coral-usb"
    runtimes = {"tflite": "ai-edge-litert"}
    setup_note = SETUP_NOTE
    probe_files = {"edgetpu_library": ("/usr/lib/aarch64-linux-gnu/libedgetpu.so.1",
                                       "/usr/lib/x86_64-linux-gnu/libedgetpu.so.1",
                                       "/usr/lib/arm-linux-gnueabihf/libedgetpu.so.1")}
    check = staticmethod(check)

    def compile(self, artifact, report, work, progress):
        return compile_step(artifact, report, work, progress)

    def device_plan(self, artifact, probe, profile, **options):
        return device_plan(artifact, probe, profile)


FAMILY = EdgeTPU()
