"""ARM CPU boards (Raspberry Pi and the like) and the local machine: TFLite with XNNPACK, or ONNX Runtime.

What XNNPACK takes is measured, not guessed: the artifact is loaded with the
delegate and the nodes left outside it are counted (they run in the slower
reference kernels). An int8 recipe means full integer: an op left in float is
refused at conversion unless the user allowed float fallback.
"""

from __future__ import annotations

from edgesdk.errors import ConversionError

from . import TargetFamily


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


class ArmCPU(TargetFamily):
    name = NAME
    description = "ARM CPU boards (Raspberry Pi and the like) and this machine: LiteRT with XNNPACK, ONNX Runtime"
    representative = "rpi4"
    check = staticmethod(check)


FAMILY = ArmCPU()
