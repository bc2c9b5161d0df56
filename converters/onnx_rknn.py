"""Route: any source -> float ONNX -> .rknn for Rockchip NPUs, with rknn-toolkit2's own int8 quantization.

rknn-toolkit2 pins numpy <= 1.26, onnx <= 1.18, protobuf <= 4.25 and torch <= 2.4, so it runs in a
private environment the SDK manages (edgesdk.toolchains): installed without its declared dependencies,
beside the versions it works with, and the main stack's CPU torch (it imports torch, its ONNX path does
not need an old one). Keras and PyTorch sources reach ONNX through their ONNX routes' float export.

The toolkit's simulator runs only a model built in the same process, so each build stays alive in a
worker (edgesdk.toolchains.Worker) registered under the artifact's sha256: the gate then runs the very
model that was written, through RKNNArtifact. The build's layer table says where each op runs (NPU or
CPU) and in which data type; the Rockchip family judges it.
"""

from __future__ import annotations

import atexit
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgesdk import toolchains
from edgesdk.errors import ConversionError
from edgesdk.sources.inputs import feed_rows
from edgesdk.util import sha256_file

from .float_onnx import float_onnx
from .route import Route

ALGORITHMS = {"minmax": "normal", "entropy": "kl_divergence"}
DIAGNOSIS_HINT = ("try --calibration-method entropy (rknn-toolkit2's KL-divergence calibration), or more "
                  "representative calibration data")

RKNN = toolchains.Toolchain(
    "rknn-toolkit2",
    ("numpy==1.26.4", "onnx==1.18.0", "protobuf==4.25.4", "onnxruntime==1.22.1", "scipy", "psutil",
     "ruamel.yaml", "tqdm", "opencv-python-headless", "fast-histogram",
     # what `import torch` needs, torch itself coming without its (CUDA) dependencies below
     "typing-extensions", "sympy", "networkx", "jinja2", "filelock", "fsspec"),
    "Rockchip NPU (.rknn)", "about 1.5 GB and 2 minutes, once",
    no_deps=("rknn-toolkit2==2.5.0", "torch==2.13.0"))
WORKER = Path(__file__).with_name("rknn_worker.py")
# a build past this is stuck in the toolkit's graph passes (Basic Pitch from its SavedModel: over 10 minutes of
# transpose swaps, still going); the route's failure lets a board that takes ONNX get that instead
BUILD_TIMEOUT_S = 600
KEEP_BUILDS = 3  # live simulator sessions (the recovery ladder builds several); the oldest is closed


@dataclass
class Build:
    """A model the toolkit built and still holds: what the reader needs to run and describe it."""

    worker: toolchains.Worker
    onnx: str
    inputs: list          # [{"name", "shape", "dtype"}]
    outputs: list
    layers: list = field(default_factory=list)
    toolkit: str = ""
    platform: str = ""


_BUILDS: "OrderedDict[str, Build]" = OrderedDict()


def build_for(sha256: str) -> Build | None:
    """The live build behind an .rknn file with this sha256, if this process made it."""
    return _BUILDS.get(sha256)


def _graph_io(path: Path) -> tuple:
    from edgesdk.artifacts.onnx_artifact import ONNXArtifact
    io = ONNXArtifact(path).io()
    return io["inputs"], io["outputs"]


def prepare_source(source, recipe, calibration, step=None):
    """The private toolchain, made before the first conversion (minutes, said so)."""
    toolchains.ensure(RKNN, step)


def convert(source, recipe, calibration, progress=None, profile=None) -> bytes:
    if recipe.quantization not in ("int8", "fp16"):
        raise ConversionError(f"Rockchip NPUs run int8 or fp16, not {recipe.quantization}.")
    if source.stateful:
        raise ConversionError(f"'{source.name}' carries a recurrent state ({', '.join(source.stateful)}); the .rknn "
                              f"route does not validate state fed back step by step yet. Convert it for another "
                              f"target, or export the model without the state input.")
    platform = profile.accelerator.platform if profile is not None else "rk3588"
    onnx_path = float_onnx(source)
    if recipe.host_tail:  # the NPU's outputs are int8 at the boundary, like a TFLite artifact's: cut the head
        from edgesdk.conversion.host_tail import cut_source
        onnx_path = cut_source(source, recipe.host_tail)[0]
    inputs, outputs = _graph_io(onnx_path)
    if any(d < 1 for i in inputs for d in i["shape"]):
        raise ConversionError(f"The ONNX form of '{source.name}' has open input sizes "
                              f"({', '.join(str(i['shape']) for i in inputs)}); an .rknn needs them fixed: "
                              f"pass --input-shape.")
    worker = toolchains.Worker(RKNN, WORKER)
    try:
        request = {"op": "build", "onnx": str(onnx_path), "platform": platform,
                   "quantize": recipe.quantization == "int8", "per_channel": recipe.per_channel,
                   "algorithm": ALGORITHMS.get(recipe.calibration_method, "normal"),
                   "out": str(worker.work / "model.rknn")}
        if recipe.quantization == "int8":
            request["dataset"] = str(_dataset(calibration.x[:recipe.calibration_samples],
                                              [i["name"] for i in inputs], worker.work))
        reply = worker.call(request, timeout=BUILD_TIMEOUT_S, waiting=progress and (lambda seconds: progress(
            0, 1, label=f"rknn-toolkit2 {'quantizing and ' if request['quantize'] else ''}building "
                        f"({seconds:.0f} s)")))
        data = Path(reply["rknn"]).read_bytes()
    except BaseException:
        worker.close()
        raise
    _register(sha256_file(Path(reply["rknn"])), Build(worker, str(onnx_path), inputs, outputs, reply["layers"],
                                                      reply["toolkit"], platform))
    return data


def _dataset(x, names: list, work: Path) -> Path:
    """The toolkit's calibration list: a line per sample, its .npy per input (batch 1) in the graph's order."""
    folder = work / "calibration"
    folder.mkdir(exist_ok=True)
    lines = []
    for i in range(len(x)):
        row = feed_rows(x, i, i + 1, names)
        paths = [folder / f"{i}_{k}.npy" for k in range(len(names))]
        for path, name in zip(paths, names):
            np.save(path, np.asarray(row[name], dtype=np.float32))
        lines.append(" ".join(str(p) for p in paths))
    listing = work / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def _register(sha: str, build: Build) -> None:
    old = _BUILDS.pop(sha, None)
    if old is not None:
        old.worker.close()
    _BUILDS[sha] = build
    while len(_BUILDS) > KEEP_BUILDS:
        _, oldest = _BUILDS.popitem(last=False)
        oldest.worker.close()


def close_all() -> None:
    while _BUILDS:
        _, build = _BUILDS.popitem()
        build.worker.close()


atexit.register(close_all)  # each live build is a worker process


# Keras and PyTorch sources through their float ONNX export
ROUTE = Route(
    format="rknn", sources={"onnx": {"onnx": "onnx"}, "keras": {"tensorflow": "keras", "tf2onnx": "onnx", "onnx": "onnx"},
                            "torch": {"torch": "torch", "onnxscript": "torch", "onnx": "onnx"}},
    convert=convert, prepare_source=prepare_source,
    calibration_methods=("minmax", "entropy"),  # the toolkit's "normal" and "kl_divergence"
    multi_input=True,  # every input fed by its ONNX name, in the graph's order
    cuts_tails=True,  # a detector head's post-processing can be left to the host (edgesdk.conversion.host_tail)
    diagnosis_hint=DIAGNOSIS_HINT)
