"""ARM CPU boards (Raspberry Pi and the like) and the local machine: TFLite with XNNPACK, or ONNX Runtime.

Float ops are allowed (they run, just slower); the report names them.
"""

from __future__ import annotations

FAMILY = "arm-cpu"


def check(info: dict, profile) -> dict:
    float_ops = info["coverage"]["float_ops"]
    status = "supported" if not float_ops else "supported with fallbacks"
    notes = []
    if float_ops and profile.artifact.quantization == "int8":
        names = sorted({o["op"] for o in float_ops})
        notes.append(f"{len(float_ops)} op(s) compute in float: {', '.join(names)}")
    return {"family": FAMILY, "status": status, "notes": notes}
