"""A detector head's merging tail, finished on the host: the artifact stops where boxes and scores meet.

A YOLO head joins pixel boxes (0..640) and 0..1 scores in one Concat; in one int8 tensor both get one
scale and the scores collapse. An ONNX artifact keeps that Concat in float (conversion._keep_detector_tail).
A TFLite artifact's outputs are int8 at its boundary, and the Edge TPU runs nothing in float, so there
the source graph is cut before the Concat: the artifact outputs the Concat's inputs, each with its own
scale, and the host joins them (the Concat and the reshapes or transposes after it: no arithmetic).
The manifest says how, in the artifact's own output names; validation joins them the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPING = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
PROBE_SAMPLES = 4  # what the artifact's outputs are matched to the cut graph's on


@dataclass(frozen=True)
class Tail:
    output: str    # the source output the host finishes
    pieces: tuple  # the Concat's inputs: what the artifact outputs instead
    axis: int      # the Concat's axis, counted from the front of the pieces' own shape
    then: tuple = ()  # what follows the Concat: ("Transpose", perm) or ("Reshape", shape with -1 first)
    shapes: tuple = ()  # each piece's shape (one sample), where the graph says it

    def splits(self, cells_axis: int) -> bool:
        """Whether the pieces are channel groups (boxes apart from scores), not runs of cells (levels)."""
        if len(self.shapes) != len(self.pieces) or any(None in s for s in self.shapes):
            return False
        marked = self.join({p: np.full(s, k, np.float32) for k, (p, s) in enumerate(zip(self.pieces, self.shapes))})
        return marked.ndim > cells_axis and bool(np.all(np.ptp(marked, axis=cells_axis) == 0))

    def join(self, pieces: dict) -> np.ndarray:
        """The source's output from the pieces (sample-first arrays, by piece name)."""
        y = np.concatenate([pieces[p] for p in self.pieces], axis=self.axis)
        for op, arg in self.then:
            y = y.transpose(arg) if op == "Transpose" else y.reshape(arg)
        return y


CELLS_AXIS = {"yolov8": 2, "yolov5": 1}  # (N, 4+nc, cells) and (N, cells, 5+nc)


def merged_outputs(reference: list, io, task: str) -> dict:
    """{output name: its cells axis} for the outputs a detection head merges boxes and scores in."""
    from .errors import EdgeSDKError
    from .tasks import pick
    try:
        heads = pick(task, reference, io)
    except EdgeSDKError:
        return {}
    return {io.output_names[h.outputs[0]]: CELLS_AXIS[h.params["layout"]] for h in heads
            if h.task == "detect" and h.params.get("layout") in CELLS_AXIS}


def find(onnx_path, outputs) -> tuple:
    """The Tail of each named output that a Concat makes (through reshapes and transposes only)."""
    import onnx
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # without shapes, only tails with no reshape in them are found
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.output)}
    constants = {i.name for i in graph.initializer}
    tails = []
    for out in sorted(outputs):
        steps, node = [], producer.get(out)
        while node is not None and node.op_type in SHAPING:
            if node.op_type == "Transpose":
                perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
                rank = len(shapes.get(node.output[0]) or [])
                if not perm and not rank:
                    break
                steps.append(("Transpose", tuple(perm[0] if perm else range(rank - 1, -1, -1))))
            elif node.op_type != "Identity":
                shape = shapes.get(node.output[0])
                if not shape or None in shape[1:]:
                    break
                steps.append(("Reshape", (-1,) + tuple(shape[1:])))
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Concat" or len(node.input) < 2 or set(node.input) & constants:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        rank = len(shapes.get(node.output[0]) or [])
        if axis < 0:
            if not rank:
                continue
            axis += rank
        sizes = tuple(tuple(shapes.get(p) or (None,)) for p in node.input)
        tails.append(Tail(out, tuple(node.input), axis, tuple(reversed(steps)), sizes))
    return tuple(tails)


def cut(onnx_path, dst, tails) -> list:
    """The graph without the tails: its outputs are the others, then each tail's pieces. Returns their names."""
    import onnx
    from onnx import helper
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    graph = model.graph
    finished = {t.output for t in tails}
    names = [o.name for o in graph.output if o.name not in finished]
    for t in tails:
        names += [p for p in t.pieces if p not in names]
    known = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    outputs = [known[n] if n in known else helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
               for n in names]
    needed, kept = set(names), []
    for node in reversed(graph.node):  # only what the new outputs need
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    del graph.output[:]
    graph.output.extend(outputs)
    weights = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    onnx.save(model, str(dst))
    return names


def cut_source(source, outputs: tuple) -> tuple:
    """(the cut float ONNX's path, its tails, its output names) for an ONNX source, made once per source."""
    key = ("host_tail", tuple(outputs))
    if key not in source.derived:
        tails = find(source.float_onnx, set(outputs))
        work = tempfile.TemporaryDirectory(prefix="edgesdk-cut-")
        path = Path(work.name) / "cut.onnx"
        names = cut(source.float_onnx, path, tails)
        source.derived[key] = (path, tails, names, work)
    return source.derived[key][:3]


def plan(source, reference: list, io, task: str) -> tuple:
    """The source outputs whose merging tail the host should finish: () when there is none to cut."""
    if not source.float_onnx or source.stateful or source.output_axes:
        return ()
    merged = merged_outputs(reference, io, task)
    # a YOLOv5/YOLOX head's last Concat joins the levels' cells, each level still merged: nothing to cut
    return tuple(t.output for t in find(source.float_onnx, merged) if t.splits(merged[t.output])) if merged else ()


class Finished:
    """An artifact of the cut graph read as the source: its outputs matched by value to the cut graph's
    (converters rename and reorder them), the pieces joined as the source's tail joins them."""

    def __init__(self, art, source, outputs: tuple, probe_source, probe_artifact):
        from .onnx_artifact import ONNXArtifact
        from .validation import match_outputs
        path, self.tails, names = cut_source(source, outputs)
        self.art, self.names = art, list(source.output_names)
        reference = ONNXArtifact(path).predict(probe_source)
        _, matched = match_outputs(reference, names, art.predict(probe_artifact), list(art.output_names))
        # cut output name -> (the artifact's output index, NHWC map to turn back)
        self.where = {n: (list(art.output_names).index(m["artifact_name"]), m.get("layout") == "NHWC")
                      for n, m in zip(names, matched)}

    @property
    def output_names(self) -> list:
        return self.names

    def predict(self, x, progress=None, output_axes=None) -> list:
        raw = self.art.predict(x, progress=progress)
        got = {n: raw[j].transpose(0, 3, 1, 2) if turned else raw[j] for n, (j, turned) in self.where.items()}
        tails = {t.output: t for t in self.tails}
        return [tails[n].join(got) if n in tails else got[n] for n in self.names]

    def describe(self) -> list:
        """How a user joins the artifact's outputs, in its own output names (for the manifest)."""
        art_names = list(self.art.output_names)
        rows = []
        for t in self.tails:
            turned = sorted({art_names[self.where[p][0]] for p in t.pieces if self.where[p][1]})
            rows.append({"output": t.output, "concat": [art_names[self.where[p][0]] for p in t.pieces],
                         "axis": t.axis, "then": [[op, list(arg)] for op, arg in t.then],
                         **({"nhwc_to_nchw_first": turned} if turned else {})})
        return rows

    def __getattr__(self, name):
        return getattr(self.art, name)


def read_as_source(art, source, recipe, x_source, x_artifact):
    """The artifact as validation reads it: joined by its host tail when its graph was cut."""
    if not recipe.host_tail:
        return art
    return Finished(art, source, recipe.host_tail, x_source[:PROBE_SAMPLES], x_artifact[:PROBE_SAMPLES])
