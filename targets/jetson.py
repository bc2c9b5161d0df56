"""NVIDIA Jetson: ONNX artifacts built into TensorRT engines on the device (int8 QDQ or fp16)."""

from __future__ import annotations

FAMILY = "jetson"


def check(info: dict, profile, recipe) -> dict:
    acc = profile.accelerator
    notes = [f"JetPack {acc.jetpack}, TensorRT {acc.tensorrt}"]
    if recipe.quantization == "int8":
        notes.append("int8 QDQ: build the engine with trtexec --int8 (scales come from the Q/DQ nodes)")
    elif recipe.quantization == "fp16":
        notes.append("fp32 ONNX: TensorRT builds the engine in fp16 on the device (trtexec --fp16)")
    if acc.dla_cores:
        notes.append(f"{acc.dla_cores} DLA core(s) available")
    float_ops = info["coverage"]["float_ops"]
    status = "supported"
    if float_ops and recipe.quantization == "int8":
        status = "supported with fallbacks"
        notes.append(f"TensorRT runs {', '.join(sorted({o['op'] for o in float_ops}))} outside int8")
    return {"family": FAMILY, "status": status, "notes": notes}
