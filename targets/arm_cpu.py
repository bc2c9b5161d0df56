"""ARM CPU boards (Raspberry Pi and the like) and the local machine: TFLite with XNNPACK, or ONNX Runtime.

What XNNPACK takes is measured, not guessed: the artifact is loaded with the
delegate and the nodes left outside it are counted (they run in the slower
reference kernels). An int8 recipe means full integer: an op left in float is
refused at conversion unless the user allowed float fallback.
"""

from __future__ import annotations

from edgesdk.errors import ConversionError, OptionError

from . import DevicePlan, TargetFamily


def float_compute_ops(float_ops: list) -> list:
    """The ops that make a graph float, without the QUANTIZE/DEQUANTIZE wrapped around them."""
    names = {o["op"] for o in float_ops}
    return sorted(names - {"QUANTIZE", "DEQUANTIZE"}) or sorted(names)


NAME = "arm-cpu"


def check(info: dict, profile, recipe=None) -> dict:
    """Compatibility of an artifact with an ARM CPU profile; with a recipe, also its int8 promise."""
    fmt = info["format"]
    float_ops = info["coverage"]["float_ops"]
    notes, fallbacks = [], []
    if fmt == "onnx":
        # ONNX Runtime runs QDQ graphs with float islands natively; report them, refuse nothing.
        if float_ops and info.get("quantized"):
            fallbacks = sorted({o["op"] for o in float_ops})
            notes.append(f"ONNX Runtime runs {', '.join(fallbacks)} in float")
        return {"family": NAME, "profile": profile.name, "status": _status(fallbacks), "fallbacks": fallbacks,
                "notes": notes}
    if float_ops and recipe is None and info.get("quantized"):
        names = float_compute_ops(float_ops)
        notes.append(f"{', '.join(names)} compute in float (not full-integer)")
        fallbacks += names
    if float_ops and recipe is not None and recipe.quantization == "int8":
        names = float_compute_ops(float_ops)
        if not recipe.allow_float_fallback:
            raise ConversionError(
                f"The model cannot be fully int8-quantized: the converter has no int8 kernel for "
                f"{', '.join(names)}, so it left {'it' if len(names) == 1 else 'them'} in float. Replace "
                f"those layers, or pass --allow-float-fallback to accept float ops on {profile.name}.")
        notes.append(f"float fallback allowed: {', '.join(names)} run in float "
                     f"({len(float_ops)} ops including QUANTIZE/DEQUANTIZE)")
        fallbacks += names
    report = {"family": NAME, "profile": profile.name, "notes": notes}
    reader = info.get("reader")
    if reader is not None and hasattr(reader, "xnnpack_delegation"):
        try:
            xnn = reader.xnnpack_delegation()
        except Exception as exc:  # e.g. custom ops the runtime lacks
            return {**report, "status": "unsupported", "fallbacks": fallbacks,
                    "notes": notes + [f"the TFLite runtime cannot load it: {exc}"]}
        report["xnnpack"] = xnn
        if xnn["not_delegated"]:
            left = ", ".join(f"{k} x{v}" for k, v in xnn["not_delegated"].items())
            notes.append(f"XNNPACK takes {xnn['delegated']} of {xnn['ops']} ops in {xnn['partitions']} "
                         f"partition(s); {left} run in the reference kernels")
            fallbacks += [k for k in xnn["not_delegated"] if k not in fallbacks]
        else:
            notes.append(f"XNNPACK takes all {xnn['ops']} ops")
    report["status"] = _status(fallbacks)
    report["fallbacks"] = fallbacks
    return report


def _status(fallbacks) -> str:
    return "supported with fallbacks" if fallbacks else "supported"


DELEGATES = ("xnnpack", "none")  # LiteRT's default XNNPACK delegate, or its built-in kernels alone


def device_plan(artifact, profile, delegate=None) -> DevicePlan:
    """The artifact on the CPU; TFLite with XNNPACK (the runtime's default) or without it."""
    if delegate is None or delegate == "xnnpack":
        return DevicePlan(artifact.path)
    if delegate not in DELEGATES:
        raise OptionError(f"delegate={delegate} is not one {profile.name} runs; it takes {' or '.join(DELEGATES)}.")
    if artifact.path.suffix != ".tflite":
        raise OptionError(f"delegate={delegate} is for TFLite artifacts; {artifact.path.name} runs on ONNX Runtime.")
    return DevicePlan(artifact.path, ["--delegate", delegate])


class ArmCPU(TargetFamily):
    name = NAME
    description = "ARM CPU boards (Raspberry Pi and the like) and this machine: LiteRT with XNNPACK, ONNX Runtime"
    representative = "rpi4"
    device_options = {"delegate": "ARM CPU boards' TFLite (xnnpack or none)"}
    check = staticmethod(check)

    def device_plan(self, artifact, probe, profile, delegate=None, **options):
        return device_plan(artifact, profile, delegate)

    def execution_variants(self, fmt, profile):
        # XNNPACK is not always the faster: its int8 kernels lose to the built-in ones on some models and CPUs
        return [("no XNNPACK", {"delegate": "none"})] if fmt == "tflite" else []


FAMILY = ArmCPU()
