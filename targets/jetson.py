"""NVIDIA Jetson: ONNX artifacts that TensorRT builds into an engine on the device (int8 QDQ or fp16).

The ONNX ops are checked against what the profile's TensorRT version parses
(onnx-tensorrt's operator list): ops it cannot parse fail the engine build.
Where the profile has DLA cores, the share of compute ops the DLA can take is
noted (the rest falls back to the GPU, at a cost in transfers).
"""

from __future__ import annotations

from edgesdk.errors import ConversionError, OptionError

from . import DevicePlan, TargetFamily

NAME = "jetson"
SETUP_NOTE = ("The GPU runs artifacts through TensorRT's trtexec, which comes with JetPack (/usr/src/tensorrt/bin); "
              "the onnxruntime wheel installed here runs on the CPU only.")

# ONNX ops the TensorRT ONNX parser does not implement (onnx-tensorrt operators.md).
UNSUPPORTED = frozenset({
    "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "ConcatFromSequence", "ConvInteger",
    "DynamicQuantizeLinear", "MatMulInteger", "QLinearConv", "QLinearMatMul", "Multinomial", "Optional",
    "OptionalGetElement", "OptionalHasElement", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer",
    "Unique", "Bernoulli", "Col2Im", "ImageDecoder", "RegexFullMatch", "StringConcat", "StringSplit",
    "MelWeightMatrix", "STFT", "DFT", "BlackmanWindow", "HammingWindow", "HannWindow",
})
# Ops TensorRT parses natively only from the version given (older ones fail or need a plugin).
ADDED_IN = {"LayerNormalization": (8, 6), "GroupNormalization": (10, 0), "GridSample": (8, 5),
            "Attention": (10, 13), "RotaryEmbedding": (10, 13)}
# The layers whose inputs carry Q/DQ in a Jetson artifact (TensorRT's recommended placement): int8 kernels
# that run fused with the elementwise ops after them, in fp16
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Layer kinds the DLA executes; anything else falls back to the GPU.
DLA_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
                     "GlobalMaxPool", "Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "PRelu",
                     "BatchNormalization", "Add", "Sub", "Mul", "Max", "Min", "Concat", "LRN", "Softmax",
                     "Resize", "Transpose", "Reshape", "Flatten", "QuantizeLinear", "DequantizeLinear"})


def _version(text: str) -> tuple:
    parts = [int(p) for p in text.split(".")[:2] if p.isdigit()]
    return tuple(parts + [0] * (2 - len(parts)))


def check(info: dict, profile, recipe=None) -> dict:
    if info["format"] != "onnx":
        message = (f"The Jetson profiles ({profile.name}) take ONNX artifacts that TensorRT builds on the device, "
                   f"not {info['format']}.")
        if recipe is not None:
            raise ConversionError(message)
        return {"family": NAME, "profile": profile.name, "status": "unsupported", "notes": [message],
                "fallbacks": []}
    acc = profile.accelerator
    trt = _version(acc.tensorrt or "10.0")
    ops = info["coverage"]["op_histogram"]
    notes = [f"JetPack {acc.jetpack}, TensorRT {acc.tensorrt}"]
    failing = sorted(op for op in ops if op in UNSUPPORTED)
    too_new = sorted(op for op in ops if op in ADDED_IN and trt < ADDED_IN[op])
    if info.get("quantized"):
        notes.append("int8 QDQ: build the engine with trtexec --int8 --fp16 (scales come from the Q/DQ nodes; "
                     "layers kept out of Q/DQ run in fp16)")
    elif info["tensor_dtypes"].get("float16"):
        notes.append("fp16 ONNX: build the engine with trtexec --fp16")
    else:
        notes.append("fp32 ONNX: build the engine with trtexec --fp16 for speed, or as is in fp32")
    status, fallbacks = "supported", []
    # e.g. the Jetson Nano: Maxwell (sm_53) has no int8 path, and a Q/DQ network needs one
    no_int8 = bool(info.get("quantized")) and profile.artifact.quantization != "int8"
    if no_int8:
        notes.append(f"{profile.name}'s GPU has no int8 support in TensorRT; convert with --quantization "
                     f"{profile.artifact.quantization}")
    if failing or too_new or no_int8:
        status = "unsupported"
        if failing:
            notes.append(f"TensorRT's ONNX parser has no {', '.join(failing)}: the engine build fails")
        if too_new:
            notes.append(f"TensorRT {acc.tensorrt} predates native {', '.join(too_new)} (needs "
                         + ", ".join(f"{op} >= {'.'.join(map(str, ADDED_IN[op]))}" for op in too_new) + ")")
        if recipe is not None:
            raise ConversionError(f"{profile.name} cannot run this model: {'; '.join(notes[-1:])}. Replace those "
                                  f"ops, or choose a Jetson with a newer JetPack.")
    # the elementwise ops between weighted layers run in fp16 by design (no Q/DQ on them); a weighted layer
    # without Q/DQ on its inputs is what runs outside int8
    float_layers = [o for o in info["coverage"]["float_ops"] if o["op"] in WEIGHTED_OPS]
    if float_layers and info.get("quantized") and status == "supported":
        status = "supported with fallbacks"
        fallbacks = sorted({o["op"] for o in float_layers})
        notes.append(f"TensorRT runs {len(float_layers)} {'/'.join(fallbacks)} layer(s) in fp16, outside int8")
    report = {"family": NAME, "profile": profile.name, "status": status, "fallbacks": fallbacks,
              "notes": notes}
    if acc.dla_cores:
        compute = {op: n for op, n in ops.items() if op not in ("QuantizeLinear", "DequantizeLinear")}
        on_dla = sum(n for op, n in compute.items() if op in DLA_OPS)
        total = sum(compute.values()) or 1
        off = sorted(op for op in compute if op not in DLA_OPS)
        report["dla"] = {"cores": acc.dla_cores, "eligible_ops": on_dla, "ops": total, "gpu_fallback": off}
        notes.append(f"DLA ({acc.dla_cores} cores) can take {on_dla} of {total} ops"
                     + (f"; {', '.join(off)} fall back to the GPU" if off else ""))
    return report


def device_plan(artifact, probe: dict, profile, dla_core=None) -> DevicePlan:
    """An ONNX artifact built into a TensorRT engine by trtexec, at the manifest's precision, on GPU or DLA."""
    cores = profile.accelerator.dla_cores if profile.accelerator else 0
    if dla_core is not None and not 0 <= dla_core < cores:
        raise OptionError(f"--dla-core {dla_core}: {profile.name} has "
                          + (f"DLA cores 0-{cores - 1}." if cores else "no DLA."))
    if artifact.path.suffix != ".onnx":
        return DevicePlan(artifact.path, problem=f"a {artifact.path.suffix} artifact runs on the Jetson's CPU; "
                          f"convert with --format onnx for TensorRT")
    if not probe.get("runtimes", {}).get("trtexec"):
        return DevicePlan(artifact.path, problem="TensorRT's trtexec is not on the device (JetPack installs it "
                          "under /usr/src/tensorrt/bin): install JetPack's TensorRT")
    quant = artifact.manifest.get("recipe", {}).get("quantization", "")
    args = ["--precision", {"int8": "int8", "fp16": "fp16"}.get(quant, "fp32")]
    if dla_core is not None:
        args += ["--dla-core", dla_core]
    return DevicePlan(artifact.path, args, accelerator="gpu" if dla_core is None else f"dla{dla_core}")


class Jetson(TargetFamily):
    name = NAME
    description = "NVIDIA Jetson: TensorRT engines built on the device from ONNX"
    formats = ("onnx",)
    int16_activations = ()  # TensorRT's Q/DQ layers take int8 (and fp8/int4), not int16
    accelerator_kinds = ("gpu",)
    accelerator_keys = {"dla_cores": (int, 0), "jetpack": (str, ""), "tensorrt": (str, "")}
    representative = "jetson-orin-nano"
    runtimes = {"onnx": "onnxruntime"}
    setup_note = SETUP_NOTE
    device_options = {"dla_core": "Jetson modules with a DLA"}
    check = staticmethod(check)

    def quantizer_settings(self, profile, fmt):
        if fmt != "onnx":
            return {}
        # TensorRT's int8 is symmetric (zero points other than 0 are rejected), its biases float, and it
        # wants Q/DQ on the inputs of weighted layers only: it fuses a layer with the elementwise ops after
        # it and runs those in fp16, where a Q/DQ on their outputs only rounds again
        return {"activation_symmetric": True, "float_bias": True, "quantize_inputs_of": WEIGHTED_OPS}

    def device_plan(self, artifact, probe, profile, dla_core=None, **options):
        return device_plan(artifact, probe, profile, dla_core)

    def execution_variants(self, fmt, profile):
        # the DLA frees the GPU and draws less power, and is slower on most models: measured, not assumed
        cores = profile.accelerator.dla_cores if profile.accelerator else 0
        return [("DLA0", {"dla_core": 0})] if fmt == "onnx" and cores else []


FAMILY = Jetson()
