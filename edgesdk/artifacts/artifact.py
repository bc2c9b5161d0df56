"""An artifact on disk and its manifest (a JSON sidecar that says how it was made)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from edgesdk.errors import ModelLoadError

MANIFEST_SCHEMA = 1
TOOLS = ("edgesdk", "tensorflow", "tf-keras", "keras", "tensorflow-model-optimization", "ai-edge-litert",
         "numpy", "onnx", "onnxruntime", "torch")


def tool_versions(names=TOOLS) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def manifest_path_for(artifact_path) -> Path:
    p = Path(artifact_path)
    return p.with_name(p.name + ".json")


@dataclass
class Artifact:
    path: Path
    manifest: dict = field(default_factory=dict)
    cached: bool = False

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)

    @property
    def format(self) -> str:
        return self.manifest.get("format") or self.path.suffix.lstrip(".")

    @property
    def validation(self) -> dict:
        return self.manifest.get("validation", {})

    @property
    def sparsity(self):
        return self.manifest.get("sparsity", {}).get("artifact")

    @classmethod
    def open(cls, path) -> "Artifact":
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"Artifact '{path}' does not exist.")
        manifest = {}
        mp = manifest_path_for(path)
        if mp.is_file():
            try:
                manifest = json.loads(mp.read_text())
            except (OSError, ValueError):
                manifest = {}
        return cls(path, manifest)

    def summary(self) -> dict:
        """The object `convert --json` prints."""
        m = self.manifest
        v = m.get("validation", {})
        return {
            "artifact": str(self.path),
            "manifest": str(self.manifest_path),
            "format": m.get("format"),
            "target": m.get("profile", {}).get("name"),
            "family": m.get("profile", {}).get("family"),
            "quantization": m.get("recipe", {}).get("quantization"),
            "size_bytes": m.get("size", {}).get("bytes"),
            "size_gzip_bytes": m.get("size", {}).get("gzip_bytes"),
            "sparsity": m.get("sparsity", {}).get("artifact"),
            "inputs": m.get("inputs", []),
            "outputs": m.get("outputs", []),
            "validation": {k: v.get(k) for k in ("samples", "task", "top1_agreement", "reference_accuracy",
                                                  "artifact_accuracy", "sqnr_db", "cosine", "verdict", "passed")},
            "recovery": m.get("recovery"),  # the rungs tried when plain int8 missed the gate, and the one kept
            "aware_training": m.get("quantization", {}).get("aware_training"),  # what QAT trained, if it did
            "cached": self.cached,
        }


def write_json_atomic(path: Path, data: dict) -> None:
    from edgesdk.util import temp_path_in
    tmp = temp_path_in(path.parent, path.name)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
