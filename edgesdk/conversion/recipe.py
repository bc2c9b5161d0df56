"""The recipe: every choice that shapes an artifact, from user options over profile defaults."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, replace

from edgesdk.errors import OptionError
from edgesdk.judge.tasks import TASKS, Thresholds
from edgesdk.profiles import DeviceProfile, IO_DTYPES, QUANTIZATIONS
from edgesdk.sources.data import Preprocess
from edgesdk.targets import get_family
from .options import ACTIVATIONS, CALIBRATION_METHODS, WEIGHT_ROUNDING, ConvertOptions

RESOLVED = Thresholds().resolved()

# what an artifact with int16 activations takes and returns: ONNX keeps float32 outside its Q/DQ pairs;
# TFLite's 16x8 graphs are int16 end to end, as ai-edge-quantizer makes them
INT16_IO = {"onnx": "float32", "tflite": "int16"}


@dataclass(frozen=True)
class Recipe:
    format: str
    quantization: str
    input_dtype: str
    output_dtype: str
    per_channel: bool
    calibration_samples: int
    sparsity: float = 0.0
    epochs: int = 2
    distill: bool = False  # fine-tune with the float source as teacher (soft targets beside the labels)
    batch_size: int = 32
    learning_rate: float = 1e-3
    task: str = "auto"
    gate: Thresholds = RESOLVED  # every threshold with its value (Thresholds.resolved)
    allow_float_fallback: bool = False
    calibration_method: str = "auto"
    exclude_nodes: tuple = ()
    exclude_op_types: tuple = ()
    layout: str = "NHWC"          # what the artifact takes for 4-D inputs; "source" keeps the model's
    preprocess: Preprocess = Preprocess()
    # How validation runs int8 ONNX: "exact" as the device computes it (ONNX Runtime's QDQ reference),
    # or "host" with this machine's kernels, when the target is this machine or they compute as the device
    # does (host_int8_is_exact).
    int8_arithmetic: str = "exact"
    # converters/weight_rounding.py: "nearest" (the plain quantizers) or "corrected" (kernel sums, bias correction:
    # +5 dB on EfficientNet-Lite0's photos, -2 dB on PP-OCR's text crops; on the TFLite routes then the int8
    # graph's biases too, converters/int8_bias.py: +1.1 dB more), or "auto": nearest, and corrected too
    # where int8 costs something, the one that measures better kept (conversion._choose_rounding)
    weight_rounding: str = "auto"
    # source outputs whose post-processing (a detector head's decode and the Concat of boxes and scores) the
    # artifact leaves to the host: its graph is cut before it (host_tail.py); set by conversion, not by the user
    host_tail: tuple = ()
    # the artifact comes from the source trained quantization-aware: asked for (--qat), or the recovery
    # ladder's training rung
    qat: bool = False
    # int8 weights with "int16" activations (ONNX Runtime's QInt16, TFLite's 16x8):
    # asked for (--activations int16), or the recovery ladder's rung before float, where the target runs them
    activations: str = "int8"

    def with_int16_activations(self, **changes) -> "Recipe":
        """This recipe with int16 activations, and the boundary dtype such artifacts have. mse ranges are
        int8's (int16's 65,536 steps lose nothing to the full range): min/max, as the quantizer makes it."""
        io = INT16_IO[self.format]
        method = "minmax" if self.calibration_method == "mse" else self.calibration_method
        return replace(self, activations="int16", input_dtype=io, output_dtype=io,
                       **{"calibration_method": method, **changes})

    def thresholds(self) -> Thresholds:
        return self.gate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["exclude_nodes"], d["exclude_op_types"] = list(self.exclude_nodes), list(self.exclude_op_types)
        d["host_tail"] = list(self.host_tail)
        return d


CPUINFO = "/proc/cpuinfo"


def host_int8_is_exact() -> bool:
    """Whether ONNX Runtime's fused int8 kernels on this machine accumulate products in int32 as ARM CPUs and
    TensorRT do, so int8 ONNX is judged with them (3x faster than the QDQ graph as written: EfficientNet-Lite0's
    200 photos in 1.1 s, not 3.1; 17.51 dB against 17.55 as written). x86 CPUs with AVX512-VNNI do; with AVX2
    alone, pairs of products are added in int16 and saturate (9.2 dB there)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    try:
        with open(CPUINFO) as f:
            return any(line.startswith("flags") and "avx512_vnni" in line.split() for line in f)
    except OSError:
        return False


def make_recipe(profile: DeviceProfile, options: ConvertOptions | None = None) -> Recipe:
    """The recipe for `profile` from what the user asked (`options`), each choice checked against the target."""
    options = options or ConvertOptions()
    q, training, inputs = options.quantize, options.training, options.inputs
    fmt, quant, input_dtype, output_dtype = q.format, q.quantization, q.input_dtype, q.output_dtype
    calibration_method, weight_rounding, activations = q.calibration_method, q.weight_rounding, q.activations
    allow_float_fallback, qat, task = q.allow_float_fallback, training.qat, options.task
    epochs, batch_size, learning_rate = training.epochs, training.batch_size, training.learning_rate
    spec = profile.artifact
    fmt = fmt or spec.format
    if fmt not in spec.formats:
        raise OptionError(f"Profile '{profile.name}' ({profile.family}) takes {' or '.join(spec.formats)} "
                          f"artifacts, not {fmt}. Drop --format or choose another target.")
    quant = quant or spec.quantization
    if quant not in QUANTIZATIONS:
        raise OptionError(f"Unknown quantization '{quant}'; expected one of {', '.join(QUANTIZATIONS)}.")
    family = get_family(profile.family)
    if quant not in family.computes_in(fmt):
        raise OptionError(f"{profile.name} ({family.name}) computes {fmt} only in "
                          f"{' or '.join(family.computes_in(fmt))}; {quant} cannot run on it. Drop --quantization.")
    for label, value in (("input dtype", input_dtype), ("output dtype", output_dtype)):
        if value is not None and value not in IO_DTYPES:
            raise OptionError(f"Unknown {label} '{value}'; expected one of {', '.join(IO_DTYPES)}.")
    if fmt == "onnx":
        # QDQ ONNX keeps float32 at the graph boundary; the int8 lives between Q/DQ pairs.
        if "int8" in (input_dtype, output_dtype) or "uint8" in (input_dtype, output_dtype):
            raise OptionError("ONNX artifacts take and return float32 (int8 lives inside, between "
                              "QuantizeLinear/DequantizeLinear); drop --input-dtype/--output-dtype.")
        input_dtype = output_dtype = "float32"
    in_dt = input_dtype or (spec.input_dtype if quant == "int8" else "float32")
    out_dt = output_dtype or (spec.output_dtype if quant == "int8" else "float32")
    if calibration_method not in CALIBRATION_METHODS:
        raise OptionError(f"Unknown calibration method '{calibration_method}'; expected one of "
                          f"{', '.join(CALIBRATION_METHODS)}.")
    if weight_rounding not in WEIGHT_ROUNDING:
        raise OptionError(f"Unknown weight rounding '{weight_rounding}'; expected one of "
                          f"{', '.join(WEIGHT_ROUNDING)}.")
    if quant != "int8" and (in_dt != "float32" or out_dt != "float32"):
        raise OptionError(f"Integer input/output types need int8 quantization; with {quant} they are float32.")
    try:
        prune = float(training.prune or 0.0)
    except (TypeError, ValueError):
        raise OptionError(f"Sparsity must be a number in [0, 1), got {training.prune!r}.") from None
    if not 0.0 <= prune < 1.0:
        raise OptionError(f"Sparsity must be in [0, 1) (e.g. 0.5 for half the weights zero), got {prune:g}.")
    if epochs < 1 or batch_size < 1:
        raise OptionError("--epochs and --batch-size must be at least 1.")
    if learning_rate <= 0:
        raise OptionError(f"--learning-rate must be positive, got {learning_rate:g}.")
    if qat and quant != "int8":
        raise OptionError(f"--qat trains the model for int8; this artifact is {quant}. Drop --qat or "
                          f"--quantization.")
    if qat and weight_rounding == "corrected":
        raise OptionError("--qat learns the weights' int8 rounding in training, and --weight-rounding corrected "
                          "would round the trained kernels again: drop one of them.")
    if activations not in ACTIVATIONS:
        raise OptionError(f"Unknown activations '{activations}'; expected one of {', '.join(ACTIVATIONS)}.")
    if activations == "int16":
        if quant != "int8":
            raise OptionError(f"--activations int16 goes with int8 weights; this artifact is {quant}. Drop "
                              f"--activations or --quantization.")
        if fmt not in family.int16_activations:
            raise OptionError(f"{profile.name} ({family.name}) does not run int16 activations in {fmt} artifacts; "
                              f"drop --activations (the recovery ladder keeps layers in float where it can).")
        if fmt == "tflite" and {input_dtype, output_dtype} - {None}:
            raise OptionError("TFLite artifacts with int16 activations (16x8) take and return int16 (the scale "
                              "and zero point are in the manifest); drop --input-dtype/--output-dtype.")
        if calibration_method == "mse":
            raise OptionError("--calibration-method mse narrows int8 activation ranges; int16 activations keep "
                              "the full min/max range (65,536 steps lose nothing to it): drop one of them.")
        in_dt = out_dt = INT16_IO[fmt]
    if allow_float_fallback and not family.runs_float_ops(fmt):
        raise OptionError(f"{profile.name} ({family.name}) cannot run float ops; --allow-float-fallback "
                          f"does not apply to it.")
    if task not in TASKS:
        raise OptionError(f"Unknown task '{task}'; expected one of {', '.join(TASKS)}.")
    gate = options.gate.resolved()
    exclude_nodes, exclude_op_types = tuple(q.exclude_nodes or ()), tuple(q.exclude_op_types or ())
    if exclude_nodes or exclude_op_types:
        if not family.runs_float_ops(fmt):
            raise OptionError(f"{profile.name} ({family.name}) runs only int8 ops; nothing can be excluded from "
                              f"quantization for it.")
        if fmt == "tflite" and not allow_float_fallback:
            raise OptionError("Excluded layers run in float, so a TFLite artifact is no longer full-integer: "
                              "add --allow-float-fallback to accept that.")
    samples = q.calibration_samples or spec.calibration_samples
    if samples < 1:
        raise OptionError("--calibration-samples must be at least 1.")
    layout = spec.layout or ("NHWC" if fmt == "tflite" else "source")
    arithmetic = "host" if profile.device.arch == platform.machine() or host_int8_is_exact() else "exact"
    if qat:  # the training learns the rounding; the trained model's kernels are not rounded again
        weight_rounding = "nearest"
    return Recipe(layout=layout, int8_arithmetic=arithmetic, weight_rounding=weight_rounding, format=fmt,
                  qat=bool(qat), activations=activations, quantization=quant, input_dtype=in_dt, output_dtype=out_dt,
                  per_channel=spec.per_channel, calibration_samples=samples, sparsity=prune, epochs=epochs,
                  distill=bool(training.distill), batch_size=batch_size, learning_rate=learning_rate,
                  allow_float_fallback=allow_float_fallback, calibration_method=calibration_method,
                  exclude_nodes=exclude_nodes, exclude_op_types=exclude_op_types, preprocess=inputs.preprocess,
                  task=task, gate=gate)
