"""ARM CPU boards (Raspberry Pi and the like) and the local machine: TFLite with XNNPACK, or ONNX Runtime.

An int8 recipe means full integer: an op left in float is refused unless the
user allowed float fallback (it runs, in slower float kernels).
"""

from __future__ import annotations

from edgesdk.errors import ConversionError

FAMILY = "arm-cpu"


def float_compute_ops(float_ops: list) -> list:
    """The ops that make a graph float, without the QUANTIZE/DEQUANTIZE wrapped around them."""
    names = {o["op"] for o in float_ops}
    return sorted(names - {"QUANTIZE", "DEQUANTIZE"}) or sorted(names)


def check(info: dict, profile, recipe) -> dict:
    float_ops = info["coverage"]["float_ops"]
    notes = []
    if recipe.format == "onnx":
        # ONNX Runtime runs QDQ graphs with float islands natively; report them, refuse nothing.
        if float_ops and recipe.quantization == "int8":
            notes.append(f"ONNX Runtime runs {', '.join(sorted({o['op'] for o in float_ops}))} in float")
        return {"family": FAMILY, "status": "supported with fallbacks" if float_ops else "supported",
                "notes": notes}
    if float_ops and recipe.quantization == "int8":
        names = float_compute_ops(float_ops)
        if not recipe.allow_float_fallback:
            raise ConversionError(
                f"The model cannot be fully int8-quantized: the converter has no int8 kernel for "
                f"{', '.join(names)}, so it left {'it' if len(names) == 1 else 'them'} in float. Replace "
                f"those layers, or pass --allow-float-fallback to accept float ops on {profile.name}.")
        notes.append(f"float fallback allowed: {', '.join(names)} run in float "
                     f"({len(float_ops)} ops including QUANTIZE/DEQUANTIZE)")
    status = "supported with fallbacks" if float_ops and recipe.quantization == "int8" else "supported"
    return {"family": FAMILY, "status": status, "notes": notes}
