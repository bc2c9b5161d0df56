"""NVIDIA Jetson: ONNX artifacts built into TensorRT engines on the device (int8 QDQ or fp16)."""

from __future__ import annotations

FAMILY = "jetson"


def check(info: dict, profile, recipe) -> dict:
    acc = profile.accelerator
    notes = [f"JetPack {acc.jetpack}, TensorRT {acc.tensorrt}"]
    if acc.dla_cores:
        notes.append(f"{acc.dla_cores} DLA core(s) available")
    return {"family": FAMILY, "status": "supported", "notes": notes}
