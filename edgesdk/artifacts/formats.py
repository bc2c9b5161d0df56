"""Artifact formats: the file's suffix, its reader, and where it runs.

TFLite and ONNX are built in. A target family that brings its own format (Rockchip's .rknn) declares it in its
`artifact_formats`, with the reader beside the family, so a new family with a new format touches no core
module. Readers are found by name ("module:Class") and imported only when a file of theirs is opened.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from edgesdk.errors import ModelLoadError


@dataclass(frozen=True)
class ArtifactFormat:
    name: str  # also the suffix: NAME.PROFILE.<name>
    # "module:Class": Class(path, num_threads=1, delegates=False, exact=False) with io(), ops(), coverage(),
    # tensor_dtypes(), predict(): what inspect, the gate and edgesdk.load read the file with
    reader: str
    benchmarks_here: bool = True  # the standalone runner times it on this machine (`edgesdk bench`)
    where_it_runs: str = ""      # said when it does not: where to measure it instead
    lists_ops: bool = True       # its reader lists the graph's ops: none means a damaged file

    def open(self, path, **kwargs):
        module, _, cls = self.reader.partition(":")
        return getattr(importlib.import_module(module), cls)(path, **kwargs)


BUILTIN = {f.name: f for f in (ArtifactFormat("tflite", "edgesdk.artifacts.tflite_artifact:TFLiteArtifact"),
                               ArtifactFormat("onnx", "edgesdk.artifacts.onnx_artifact:ONNXArtifact"))}


def known() -> dict:
    """Every format by name: the built-in ones, then those the installed families add."""
    from edgesdk.targets import families
    found = dict(BUILTIN)
    for family in families().values():
        for fmt in family.artifact_formats:
            found.setdefault(fmt.name, fmt)
    return found


def format_of(path, fmt: str | None = None) -> ArtifactFormat:
    """The format of `path` (by `fmt`, or by its suffix); one no family knows is a ModelLoadError."""
    name = (fmt or Path(path).suffix.lstrip(".")).lower()
    if name in BUILTIN:  # no family need load for the common formats
        return BUILTIN[name]
    formats = known()
    if name not in formats:
        names = [f".{n}" for n in formats]
        raise ModelLoadError(f"'{path}' is not an artifact edgesdk reads ({', '.join(names[:-1])} or {names[-1]} "
                             f"files).")
    return formats[name]
