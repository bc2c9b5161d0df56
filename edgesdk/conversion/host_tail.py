"""A detector head's post-processing, finished on the host: the artifact stops where boxes and scores meet.

A YOLO head decodes boxes to pixels (grid, stride, exp) and joins them with 0..1 scores in one Concat;
in int8 that one tensor gets one scale and the scores collapse, and a decode in int8 (exp of a coarse
input, pixels at a 1.6 px step) costs small boxes their overlap. An ONNX artifact keeps the Concat in
float (pipeline._detector_tail). A TFLite artifact's outputs are int8 at its boundary and the
Edge TPU runs nothing in float, so there the source graph is cut before its tail: the shape and
arithmetic ops after the network's last layers (no weights, no activations), back from each merged
output. The artifact outputs the branches, each with its own scale; the tail is written beside it as a
small float ONNX graph, which validation and the user's program run on the host. Keras and PyTorch
sources are cut in their float ONNX export; their routes then stop the framework's own model at the
tensors whose values match that export's cut points (route.cut).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

# what a head's post-processing is made of: shapes, joins and elementwise arithmetic, no weights
TAIL_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat", "Slice", "Split",
            "Gather", "Add", "Sub", "Mul", "Div", "Exp", "Constant"}
PROBE_SAMPLES = 4  # what the artifact's outputs are matched to the cut graph's on


@dataclass(frozen=True)
class Tail:
    outputs: tuple  # the source outputs the host finishes
    inputs: tuple   # where the graph is cut: what the artifact outputs instead
    ops: tuple      # the tail's op types, for the manifest


def find(onnx_path, outputs) -> Tail | None:
    """The post-processing behind the named outputs: every op of TAIL_OPS whose results only the tail uses,
    grown back from the outputs. None when there is no Concat in it or nothing to cut from."""
    import onnx
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # then no cut point's type is known, and nothing is cut
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    users = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(id(n))
    finals = set(outputs) & set(producer)
    tail = {id(producer[o]): producer[o] for o in finals if producer[o].op_type in TAIL_OPS}
    graph_outputs = {o.name for o in graph.output}
    grown = True
    while grown:
        grown = False
        for node in list(tail.values()):
            for i in node.input:
                p = producer.get(i)
                if p is None or id(p) in tail or p.op_type not in TAIL_OPS:
                    continue
                # a node whose results the network also uses, or that is an output itself, stays in it
                if all(u in tail for o in p.output for u in users.get(o, [])) \
                        and not (set(p.output) & (graph_outputs - finals)):
                    tail[id(p)] = p
                    grown = True
    made = {o for n in tail.values() for o in n.output}
    constants = {i.name for i in graph.initializer}
    cut = []
    for n in graph.node:  # graph order: the cut points in the order the network makes them
        if id(n) in tail:
            cut += [i for i in n.input if i and i not in made and i not in constants and i not in cut]
    inputs = {i.name for i in graph.input}
    floats = {v.name for v in list(graph.value_info) + list(graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    # the artifact outputs float maps only: a shape computed at run time (Shape -> Gather) is no cut point
    if not any(n.op_type == "Concat" for n in tail.values()) or not cut or set(cut) & inputs \
            or not set(cut) <= floats:
        return None
    return Tail(tuple(sorted(finals)), tuple(cut), tuple(sorted({n.op_type for n in tail.values()})))


def split(onnx_path, tail: Tail, head_path, tail_path) -> list:
    """The source graph in two: the head (outputs: the others, then the cut points) and the tail (inputs:
    the cut points, outputs: the finished ones). Returns the head's output names."""
    import onnx
    from onnx.utils import extract_model
    graph = onnx.load(str(onnx_path)).graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    names = [o.name for o in graph.output if o.name not in tail.outputs] + list(tail.inputs)
    extract_model(str(onnx_path), str(head_path), inputs, names)
    extract_model(str(onnx_path), str(tail_path), list(tail.inputs), list(tail.outputs))
    return names


def cut_source(source, outputs: tuple) -> tuple:
    """(the head's ONNX path, the tail's ONNX path, the Tail, the head's output names) for the source's float
    ONNX graph, made once per source."""
    from edgesdk.converters.float_onnx import float_onnx
    key = ("host_tail", tuple(outputs))
    if key not in source.derived:
        graph = float_onnx(source)
        tail = find(graph, set(outputs))
        work = tempfile.TemporaryDirectory(prefix="edgesdk-cut-")
        head, rest = Path(work.name) / "head.onnx", Path(work.name) / "tail.onnx"
        names = split(graph, tail, head, rest)
        source.derived[key] = (head, rest, tail, names, work)
    return source.derived[key][:4]


def plan(source, reference: list, io, task: str) -> tuple:
    """The source outputs whose post-processing the host should finish: () when there is none to cut. A Keras
    or PyTorch source is exported to float ONNX for it (once) only when a head merges boxes and scores."""
    if source.stateful or source.output_axes:
        return ()
    from edgesdk.converters.float_onnx import float_onnx
    from .mixed_precision import merged_heads
    merged = {io.output_names[i] for i in merged_heads(reference, io, task)}
    tail = find(float_onnx(source), merged) if merged else None
    return tail.outputs if tail else ()


CUT_MATCH = 1e-3  # a cut point's value, relative to its largest magnitude: the runtimes agree far closer


def match_cut_points(values: list, wanted: list) -> list:
    """For each wanted cut point, the index of the first of `values` (a framework model's intermediate
    tensors, in graph order) with its shape and values; a channels-last map matches its channels-first
    cut point. ValueError names the first cut point without a match."""
    import numpy as np
    found = []
    for k, w in enumerate(wanted):
        scale = float(np.abs(w).max()) or 1.0
        hit = next((i for i, v in enumerate(values)
                    for turned in ((v,) + ((v.transpose(0, 3, 1, 2),) if v.ndim == 4 else ()))
                    if turned.shape == w.shape and float(np.abs(turned - w).max()) <= CUT_MATCH * scale), None)
        if hit is None:
            raise ValueError(f"no tensor of the model matches cut point {k} {tuple(w.shape)} of its ONNX export")
        found.append(hit)
    return found


def cut_points(source, outputs: tuple, x) -> list:
    """What the cut graph outputs on `x` (source layout), in its output order: the values a route that cuts
    its framework's own model (not the ONNX graph) finds its cut points by."""
    from edgesdk.artifacts.onnx_artifact import ONNXArtifact
    return ONNXArtifact(cut_source(source, outputs)[0]).predict(x)


class Finished:
    """An artifact of the cut graph read as the source: its outputs matched by value to the head graph's
    (converters rename and reorder them), then the tail run on them in float."""

    def __init__(self, art, source, outputs: tuple, probe_source, probe_artifact):
        from edgesdk.artifacts.onnx_artifact import ONNXArtifact
        from edgesdk.judge.validation import match_outputs
        head, tail_path, self.tail, names = cut_source(source, outputs)
        self.art, self.names, self.tail_path = art, list(source.output_names), tail_path
        self.rest = ONNXArtifact(tail_path)
        reference = ONNXArtifact(head).predict(probe_source)
        _, matched = match_outputs(reference, names, art.predict(probe_artifact), list(art.output_names))
        # head output name -> (the artifact's output index, an NHWC map to turn back)
        self.where = {n: (list(art.output_names).index(m["artifact_name"]), m.get("layout") == "NHWC")
                      for n, m in zip(names, matched)}

    @property
    def output_names(self) -> list:
        return self.names

    def predict(self, x, progress=None, output_axes=None) -> list:
        from edgesdk.sources.inputs import Inputs
        raw = self.art.predict(x, progress=progress)
        got = {n: raw[j].transpose(0, 3, 1, 2) if turned else raw[j] for n, (j, turned) in self.where.items()}
        finished = dict(zip(self.tail.outputs, self.rest.predict(Inputs({n: got[n] for n in self.tail.inputs}))))
        return [finished[n] if n in finished else got[n] for n in self.names]

    def describe(self) -> dict:
        """How a user finishes the artifact's outputs (for the manifest): the tail graph's inputs by the
        artifact's own output names."""
        art_names = list(self.art.output_names)
        feed = {n: art_names[self.where[n][0]] for n in self.tail.inputs}
        turned = [n for n in self.tail.inputs if self.where[n][1]]
        return {"outputs": list(self.tail.outputs), "ops": list(self.tail.ops), "feed": feed,
                **({"nhwc_to_nchw_first": turned} if turned else {})}

    def __getattr__(self, name):
        return getattr(self.art, name)


def read_as_source(art, source, recipe, x_source, x_artifact):
    """The artifact as validation reads it: finished by its host tail when its graph was cut."""
    if not recipe.host_tail:
        return art
    return Finished(art, source, recipe.host_tail, x_source[:PROBE_SAMPLES], x_artifact[:PROBE_SAMPLES])
