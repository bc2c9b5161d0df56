"""A target family that lives outside the package, as a third party's would: a made-up NPU board.

It plugs in through the `edgesdk.targets` entry point only (the tests write a
dist-info naming it). Its rules are small but real: int8 TFLite only, no float
ops, parameters must fit the NPU's SRAM (a key it adds to [accelerator]), and a
compile step that writes a blob beside the artifact.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from edgesdk.artifacts.formats import ArtifactFormat
from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
from edgesdk.errors import ConversionError
from edgesdk.targets import Compiled, DevicePlan, TargetFamily


class ToyBlobReader(TFLiteArtifact):
    """A .toyblob is the toy NPU's compiled form: a TFLite flatbuffer, bytes reversed (what compile writes)."""

    def __init__(self, path, **kwargs):
        self._plain = tempfile.NamedTemporaryFile(suffix=".tflite")
        self._plain.write(Path(path).read_bytes()[::-1])
        self._plain.flush()
        super().__init__(self._plain.name, **kwargs)


class ToyNPU(TargetFamily):
    name = "toy-npu"
    description = "a made-up NPU board (tests)"
    formats = ("tflite",)
    artifact_formats = (ArtifactFormat("toyblob", "toy_family:ToyBlobReader", benchmarks_here=False,
                                       where_it_runs="a .toyblob runs only on the toy NPU's board."),)
    quantizations = ("int8",)
    float_ops = False
    accelerator_kinds = ("npu",)
    accelerator_keys = {"sram_kb": (int, 512)}
    representative = "toy-board"
    runtimes = {"tflite": "ai-edge-litert"}
    setup_note = "The toy NPU's driver is not on any package index."
    device_options = {"npu_core": "toy NPU boards"}
    profile_dir = Path(__file__).parent / "profiles"

    def validate_profile(self, artifact, accelerator):
        if artifact.input_dtype != "int8":
            return f"the toy NPU takes int8 inputs, not {artifact.input_dtype}"
        return None

    def check(self, info, profile, recipe=None):
        report = {"family": self.name, "profile": profile.name, "status": "supported", "fallbacks": [],
                  "notes": []}
        if info["format"] != "tflite" or info["coverage"]["float_ops"]:
            message = f"{profile.name} runs int8 TFLite only"
            if recipe is not None:
                raise ConversionError(message)
            return {**report, "status": "unsupported", "notes": [message]}
        params_kb = info["reader"].parameter_bytes() / 1024
        sram = profile.accelerator.sram_kb
        report["sram"] = {"parameters_kb": round(params_kb, 1), "sram_kb": sram}
        if params_kb > sram:
            message = f"parameters ({params_kb:.0f} KB) do not fit the NPU's {sram} KB SRAM"
            if recipe is not None:
                raise ConversionError(message + ": prune the model or pick a board with more SRAM.")
            return {**report, "status": "unsupported", "notes": [message]}
        report["notes"].append(f"parameters {params_kb:.0f} KB of {sram} KB SRAM")
        return report

    def compile(self, artifact, report, work, progress):
        progress.step("compiling for the toy NPU")
        blob = work / (artifact.stem + ".toy.bin")
        data = artifact.read_bytes()
        blob.write_bytes(data[::-1])
        record = {"input_sha256": hashlib.sha256(data).hexdigest(), "blob": blob.name,
                  "sram_kb": report["sram"]["sram_kb"]}
        (work / (artifact.stem + ".toy.log")).write_text(json.dumps(record))
        return Compiled([blob, work / (artifact.stem + ".toy.log")], "toy_compiler", record)

    def device_plan(self, artifact, probe, profile, npu_core=None, **options):
        return DevicePlan(artifact.path, ["--delegate", "none"], accelerator=f"toy-npu{npu_core or 0}")


FAMILY = ToyNPU()
