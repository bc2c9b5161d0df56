"""Coral Edge TPU: every op must be 8-bit integer, shapes static, batch 1.

The Edge TPU compiler (edgetpu_compiler) exists only for x86-64 Linux, from
Coral's own package repository. Without it the checked, compile-ready int8
artifact is kept and the report says so.
"""

from __future__ import annotations

import shutil

from edgesdk.errors import ConversionError

from .arm_cpu import float_compute_ops

FAMILY = "edgetpu"


def check(info: dict, profile, recipe) -> dict:
    float_ops = info["coverage"]["float_ops"]
    if float_ops:
        names = float_compute_ops(float_ops)
        raise ConversionError(
            f"The Edge TPU ({profile.name}) runs only fully int8 models, but this artifact computes "
            f"{', '.join(names)} in float (the converter has no int8 kernel for it, so it wrapped it in "
            f"DEQUANTIZE/QUANTIZE). Replace those layers with int8-friendly ones before converting.")
    for t in info["io"]["inputs"] + info["io"]["outputs"]:
        if any(d < 1 for d in t["shape"]):
            raise ConversionError(f"The Edge TPU needs static shapes; tensor '{t['name']}' has shape "
                                  f"{t['shape']}. Fix the input shape before converting.")
        if t["shape"] and t["shape"][0] != 1:
            raise ConversionError(f"The Edge TPU runs batch 1; tensor '{t['name']}' has batch {t['shape'][0]}.")
    notes = []
    params_mb = info.get("size_bytes", 0) / 2**20
    cache = profile.accelerator.on_chip_memory_mb or 8.0
    if params_mb > cache:
        notes.append(f"the model ({params_mb:.1f} MB) exceeds the {cache:g} MB on-chip cache: weights will "
                     f"stream from host memory each inference")
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        notes.append("edgetpu_compiler is not on PATH (it ships only for x86-64 Linux, from Coral's package "
                     "repository): kept the checked, compile-ready int8 artifact; compile it with "
                     "`edgetpu_compiler ARTIFACT` before deploying")
    return {"family": FAMILY, "status": "supported", "notes": notes, "compiler": compiler}
