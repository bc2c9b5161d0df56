"""A network's first layers run on the host in float, where the target computes nothing in float.

The Edge TPU runs int8 only, so the ladder's float regions are not for it. A real YOLOv8n loses most of its int8
accuracy in its stem, the high-resolution maps of its first convolutions (their SiLU outputs span -0.3..166
where most channels stay under 40): for coral-usb, made whole, detection recall 0.83 and precision 0.89 against
the float model (96 face mosaics, 548 detections, scores 8.4 dB); its head's DFL and sigmoids moved to the host
as well changed nothing (0.82); its stem on the host: recall 0.99, precision 0.96, 22 dB. So when int8 misses
the gate on such a family (after its ladder, with no higher precision it computes in), the source's float ONNX
graph is cut after its stem (mixed_precision.stem: the first tenth of the weight layers): the host runs the stem
as a small float ONNX graph written beside the artifact (NAME.PROFILE.stem.onnx), and the artifact is the rest
of the network, calibrated and validated on the stem's float outputs. `edgesdk.load` runs both, so a user's
program calls one thing. The stem is a small share of the arithmetic (YOLOv8n at 320: 86 of 1,013 million
multiply-adds, its first 6 of 64 convolutions, on 16 and 32 channels).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

STEM_CHUNK = 16  # samples per step of the stem's float run (YOLOv8n at 320: 13 MB of maps per sample)


@dataclass
class Stem:
    graph: Path     # the stem's float ONNX graph: the source's inputs in, the cut out
    rest: Path      # the rest of the network: the cut in, the source's outputs out
    inputs: tuple   # the source's input names
    outputs: tuple  # where the graph is cut: what the stem hands the artifact
    label: str      # what the stem is, in words
    keepalive: object = None


def cut(onnx_path) -> Stem | None:
    """The float ONNX graph at `onnx_path` in two, after its stem; None where there is no stem to cut (a small
    network, nodes without names, an input that later layers read too, an output made inside the stem)."""
    import onnx
    from onnx.utils import extract_model
    from .mixed_precision import stem
    found = stem(onnx_path, "onnx")
    if found is None or not all(found.nodes):
        return None
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None  # the cut's shapes must be known: the artifact is built for them
    graph, inside = model.graph, set(found.nodes)
    constants = {i.name for i in graph.initializer}
    inputs = tuple(i.name for i in graph.input if i.name not in constants)
    made = {o for n in graph.node if n.name in inside for o in n.output}
    outputs = {o.name for o in graph.output}
    cut_at = []
    for n in graph.node:
        if n.name in inside:
            continue
        for i in n.input:
            if i in inputs:
                return None  # a later layer reads the input itself
            if i in made and i not in cut_at:
                cut_at.append(i)
    shaped = {v.name: v for v in graph.value_info}
    if not cut_at or made & outputs or not all(
            i in shaped and shaped[i].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            and all(d.dim_value > 0 for d in shaped[i].type.tensor_type.shape.dim) for i in cut_at):
        return None
    work = tempfile.TemporaryDirectory(prefix="edgesdk-stem-")
    head, rest = Path(work.name) / "stem.onnx", Path(work.name) / "rest.onnx"
    extract_model(str(onnx_path), str(head), list(inputs), cut_at)
    extract_model(str(onnx_path), str(rest), cut_at, [o.name for o in graph.output])
    return Stem(head, rest, inputs, tuple(cut_at), found.named, work)


def feed(stem: Stem, ds, bar=None):
    """`ds` (a Dataset in the source's layout) as the artifact is fed it: the stem's float outputs, a chunk at a
    time, its labels kept."""
    import numpy as np
    from edgesdk.artifacts.runtime import ONNXEngine
    from edgesdk.sources.inputs import Inputs
    engine = ONNXEngine(stem.graph)
    parts = []
    for i in range(0, len(ds), STEM_CHUNK):
        parts.append(engine.predict(ds.x[i:i + STEM_CHUNK]))
        if bar:
            bar(min(i + STEM_CHUNK, len(ds)), len(ds))
    maps = [np.concatenate([p[k] for p in parts]) for k in range(len(stem.outputs))]
    return replace(ds, x=maps[0] if len(maps) == 1 else Inputs(dict(zip(stem.outputs, maps))))


def stem_file(final: Path) -> Path:
    """Where the stem of an artifact made with one lives: NAME.PROFILE.stem.onnx beside it."""
    return final.with_suffix(".stem.onnx")
