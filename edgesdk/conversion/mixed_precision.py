"""What may stay out of int8, and how to make the trial artifacts that keep it there.

Shared by the detector-head default, the measured diagnosis and the recovery
ladder: a `Candidate` is a set of nodes and op types to keep in float; a
`Trials` object re-quantizes the source with a candidate applied, through the
route that made the artifact (for ONNX, from the float export already beside
the source, so nothing is exported twice).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgesdk.errors import EdgeSDKError

# ops that only move, re-label or re-type values: the op that made an output's values sits behind them
PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
                "Identity", "QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE"}
# the weight-heavy ops that int8 pays off on; "every op type but these" is the widest useful exclusion
WEIGHT_OPS = {"onnx": {"Conv", "ConvTranspose", "MatMul", "Gemm"},
              "tflite": {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}}
NOT_OPS = {"QuantizeLinear", "DequantizeLinear", "QUANTIZE", "DEQUANTIZE"}
CONCATS = {"Concat", "CONCATENATION"}
# detector heads that put pixel boxes and 0..1 scores in one tensor (one int8 scale would crush the scores)
MERGED_HEADS = {"yolov8", "yolov5"}


@dataclass(frozen=True)
class Candidate:
    """Nodes and op types kept in float, or the whole graph's activations in int16; `op` is the node's
    type, for messages."""

    nodes: tuple = ()
    op_types: tuple = ()
    op: str = ""
    int16: bool = False
    float_input: bool = False  # the artifact takes float32: its first layers, kept float, read the input whole
    named: str = ""            # what the nodes are, in words, when they are many (the input boundary)

    def __add__(self, other: "Candidate") -> "Candidate":
        return Candidate(tuple(dict.fromkeys(self.nodes + other.nodes)),
                         tuple(dict.fromkeys(self.op_types + other.op_types)), int16=self.int16 or other.int16,
                         float_input=self.float_input or other.float_input,
                         # a named part keeps its words, a part without a name is said by its nodes
                         named="; ".join(c.named or "; ".join(c.nodes) for c in (self, other) if c.named or c.nodes)
                         if self.named or other.named else "")

    @property
    def label(self) -> str:
        if self.named:  # hundreds of node names say less than what they are
            return "; ".join([self.named] + ([f"op types {','.join(self.op_types)}"] if self.op_types else [])
                             + ["int16 activations"] * self.int16)
        parts = [f"{n}{f' ({self.op})' if self.op and len(self.nodes) == 1 else ''}" for n in self.nodes]
        if self.op_types:
            parts.append(f"op types {','.join(self.op_types)}")
        return "; ".join(parts + ["int16 activations"] * self.int16)

    @property
    def what(self) -> str:
        return "int16 activations" if self.int16 and not (self.nodes or self.op_types) else "kept in float"

    @property
    def flags(self) -> str:
        """The options that apply it by hand."""
        parts = ([f"--exclude-nodes {','.join(self.nodes)}"] if self.nodes else []) + \
                ([f"--exclude-op-types {','.join(self.op_types)}"] if self.op_types else []) + \
                (["--activations int16"] if self.int16 else []) + \
                (["--input-dtype float32"] if self.float_input else [])
        return " ".join(parts)

    def applied(self, recipe):
        recipe = recipe.with_int16_activations() if self.int16 else recipe
        if self.float_input:
            recipe = replace(recipe, input_dtype="float32")
        if not (self.nodes or self.op_types):
            return recipe
        return replace(recipe, exclude_nodes=tuple(dict.fromkeys(tuple(recipe.exclude_nodes) + self.nodes)),
                       exclude_op_types=tuple(dict.fromkeys(tuple(recipe.exclude_op_types) + self.op_types)),
                       allow_float_fallback=True)


class Trials:
    """Re-quantize the source with a different recipe, through the route that made the artifact."""

    def __init__(self, source, recipe, profile, calib, bar=None):
        """bar: a progress callback(i, n) each re-quantization draws as it calibrates (never a silent minute)."""
        from edgesdk.converters import get_route
        self.format = recipe.format
        route = get_route(source.framework, recipe.format)
        self.excludes = route.excludes_layers
        self.hint, self.measured_hint = route.diagnosis_hint, route.hint_after_measuring
        self.calibration_methods = route.calibration_methods
        self.int16, self.int16_keeps_float = route.int16_activations, route.int16_keeps_float
        # the route again, reusing what its first conversion made (an ONNX route's float graph)
        self._convert = lambda r: route.again(source, r, calib, progress=bar, profile=profile)
        self._debug = lambda path, x, r: route.worst_layers(source, r, calib, path, x)
        from edgesdk.targets import get_family
        family = get_family(profile.family)
        self.excludes = self.excludes and family.runs_float_ops(recipe.format)  # the Edge TPU runs no float
        # int8 weights with int16 activations: where the route makes them and the target's runtime runs them
        self.int16 = self.int16 and recipe.format in family.int16_activations and recipe.activations == "int8"
        # the layers whose inputs alone carry Q/DQ, where the family places them so (TensorRT); None: every op
        self.quantized_ops = family.quantizer_settings(profile, recipe.format).get("quantize_inputs_of")
        self._source, self._made = source, {}

    def convert(self, recipe) -> bytes:
        """The artifact's bytes for this recipe (made once per recipe); the source's record of what its weight
        rounding corrected is this artifact's after the call, a recipe made before included."""
        key = (recipe.calibration_method, recipe.exclude_nodes, recipe.exclude_op_types, recipe.weight_rounding,
               recipe.qat, recipe.activations, recipe.input_dtype)
        if key not in self._made:
            data = self._convert(recipe)
            self._made[key] = data, self._source.weight_rounding
        data, self._source.weight_rounding = self._made[key]
        return data

    def debugger_rows(self, artifact_path, x, recipe) -> list:
        return self._debug(artifact_path, x, recipe)


def graph_ops(artifact_path, fmt: str) -> tuple:
    """(op producing each tensor: name -> (node name, op type, input names), the graph's output names)."""
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(artifact_path)).graph
        return ({o: (n.name, n.op_type, list(n.input)) for n in graph.node for o in n.output},
                [o.name for o in graph.output])
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    art = TFLiteArtifact(artifact_path)
    # TFLite layers are named by their output tensor, as the converter's debugger names them
    return ({art.tensor_name(op["outputs"][0]): (art.tensor_name(op["outputs"][0]), op["op_name"],
                                                 [art.tensor_name(i) for i in op["inputs"] if i >= 0])
             for op in art.ops() if op["outputs"]}, art.output_names)


def untouched(artifact_path, fmt: str, quantized_ops=None) -> set:
    """The nodes of an ONNX artifact the quantizer left alone, so that keeping them in float changes nothing.
    ONNX Runtime's quantizer puts Q/DQ pairs on the tensors a quantized node reads and (unless told not to)
    writes. Where the family quantizes only some op types, on their inputs (`quantized_ops`, TensorRT's
    placement), every node of another type is left alone: the SiLU before a convolution is quantized by
    it. Otherwise a node is left alone when it reads nothing through a DequantizeLinear and writes nothing
    into a QuantizeLinear (Magika's Cast and Div write quantized tensors: in float they are the fix). Empty
    for other formats (their debuggers name quantized ops)."""
    if fmt != "onnx":
        return set()
    import onnx
    nodes = onnx.load(str(artifact_path)).graph.node
    if quantized_ops and any(n.op_type in quantized_ops for n in nodes):  # else the quantizer placed Q/DQ as usual
        return {n.name for n in nodes if n.op_type not in NOT_OPS and n.op_type not in quantized_ops}
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    return {n.name for n in nodes if n.op_type not in NOT_OPS and not set(n.input) & dequantized
            and not set(n.output) & quantized}


def quantized_readers(artifact_path) -> dict:
    """For each tensor of an ONNX artifact that has a Q/DQ pair, the nodes that read it through that pair:
    where its rounding is spent, when its producer is untouched (the convolution after a SiLU, with
    TensorRT's placement)."""
    import onnx
    nodes = onnx.load(str(artifact_path)).graph.node
    source = {o: n.input[0] for n in nodes if n.op_type == "QuantizeLinear" for o in n.output}
    rounded = {o: source[n.input[0]] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in source
               for o in n.output}
    readers: dict = {}
    for n in nodes:
        for i in n.input:
            if i in rounded:
                readers.setdefault(rounded[i], []).append(n.name)
    return {t: tuple(dict.fromkeys(r)) for t, r in readers.items()}


def output_producers(artifact_path, fmt: str, outputs: set) -> list:
    """Candidate (one node) for the op that computes each of these outputs, looking through pass-through ops."""
    by_output, outs = graph_ops(artifact_path, fmt)
    found = []
    for i in sorted(outputs):
        node = by_output.get(outs[i])
        while node is not None and node[1] in PASS_THROUGH and node[2]:
            node = by_output.get(node[2][0])
        if node is not None and node[0]:
            found.append(Candidate(nodes=(node[0],), op=node[1]))
    return found


def non_weight_op_types(artifact_path, fmt: str) -> Candidate | None:
    """Every quantized op type but the weight-heavy ones (Magika: 3.8 % -> 100 % top-1 agreement)."""
    by_output, _ = graph_ops(artifact_path, fmt)
    present = {op for _, op, _ in by_output.values()} - NOT_OPS
    rest = sorted(present - WEIGHT_OPS[fmt])
    if not rest or not present & WEIGHT_OPS[fmt]:
        return None
    return Candidate(op_types=tuple(rest))


def front_end(artifact_path, fmt: str) -> Candidate | None:
    """The first weight layer, what feeds it and what follows it up to the next weight layers: a front end
    whose range int8 cannot hold (Silero VAD's STFT, a power spectrum from a Conv, Pow, Add and Sqrt:
    86.8 -> 93.9 % agreement kept in float, where no other candidate reached it)."""
    by_output, _ = graph_ops(artifact_path, fmt)
    first = next(((n, op, ins) for n, op, ins in by_output.values() if op in WEIGHT_OPS[fmt]), None)
    if first is None:
        return None
    picked, todo = [first[0]], list(first[2])
    while todo:  # what feeds it, back to the inputs
        made = by_output.get(todo.pop())
        if made is not None and made[0] not in picked:
            picked.append(made[0])
            todo += made[2]
    grown = True
    while grown:  # what follows it, up to the next weight layers; a join with a later branch ends it
        grown = False
        for node, op, ins in by_output.values():
            if node in picked or op in WEIGHT_OPS[fmt] or not ins:
                continue
            fed = [by_output[i][0] for i in ins if i in by_output]
            if fed and all(n in picked for n in fed):
                picked.append(node)
                grown = True
    names = tuple(dict.fromkeys(n for n, op, _ in by_output.values() if n in picked and op not in NOT_OPS))
    return Candidate(nodes=names) if len(names) > 1 else None


STEM_SHARE = 0.1  # of the graph's weight layers (at least 2): the stem kept in float


def stem(artifact_path, fmt: str) -> Candidate | None:
    """The network's first weight layers (a tenth of them, at least two) and every op the graph computes
    before the next one: the high-resolution, few-channel maps whose ranges int8 holds worst. On a real
    YOLOv8n with TensorRT's symmetric int8, its first 6 of 64 convolutions kept out of int8 took detection
    recall from 0.84 to 0.996 and precision from 0.89 to 0.935 against the float model (96 images, 548
    detections), where no single layer and not the head did."""
    by_output, _ = graph_ops(artifact_path, fmt)
    ops = list(dict.fromkeys((n, op) for n, op, _ in by_output.values()))  # graph order
    weights = sum(op in WEIGHT_OPS[fmt] for _, op in ops)
    k = max(2, round(weights * STEM_SHARE))
    if k > weights * REGION_SHARE:  # most of a small network is the model, not its stem (Magika: 2 of 3)
        return None
    names, seen = [], 0
    for node, op in ops:
        if op in WEIGHT_OPS[fmt]:
            if seen == k:
                break
            seen += 1
        if op not in NOT_OPS:
            names.append(node)
    return Candidate(nodes=tuple(names), named=f"the stem: the first {k} of {weights} weight layers and the "
                                               f"{len(names) - k} ops between them")


REGION_SHARE = 1 / 3  # of the graph's weight layers: more than this kept in float is the model, not a region


def output_regions(artifact_path, fmt: str, outputs: set) -> list:
    """For each of these outputs, the nodes only it depends on, grown back from it nearest first: a node joins
    when everything its results feed is already in. A detector's head (its branches' last convs, the DFL's
    softmax and 1x1 conv, the box decode: YOLOv8's per-branch ranges differ by orders of magnitude) is one; so
    is a classifier's last block. Found from the graph's structure, so any exporter's names do; capped at
    REGION_SHARE of the weight layers (a network without branches is all one output's)."""
    by_output, outs = graph_ops(artifact_path, fmt)
    made, reads, users, op_of = {}, {}, {}, {}
    for tensor, (node, op, ins) in by_output.items():
        made.setdefault(node, []).append(tensor)
        reads[node], op_of[node] = ins, op
        for i in ins:
            users.setdefault(i, set()).add(node)
    weights = sum(op in WEIGHT_OPS[fmt] for op in op_of.values())
    cap = max(1, int(weights * REGION_SHARE))
    regions = []
    for k in sorted(outputs):
        first = by_output.get(outs[k]) if k < len(outs) else None
        if first is None:
            continue
        region, order, queue, weighted = {first[0]}, [first[0]], [first[0]], int(first[1] in WEIGHT_OPS[fmt])
        while queue:
            for tensor in reads[queue.pop(0)]:
                p = by_output.get(tensor, (None,))[0]
                if p is None or p in region or any(u not in region for t in made[p] for u in users.get(t, ())) \
                        or any(t in outs for t in made[p]):
                    continue
                heavy = op_of[p] in WEIGHT_OPS[fmt]
                if heavy and weighted >= cap:
                    continue
                weighted += heavy
                region.add(p)
                order.append(p)
                queue.append(p)
        names = tuple(n for n in order if op_of[n] not in NOT_OPS)
        if len(names) > 1 and weighted:
            regions.append(Candidate(nodes=names, named=f"the {len(names)} ops only output {k} depends on "
                                                       f"({weighted} weight layers)"))
    return regions


# ops that carry an input's values on, unweighted, to the layers that first compute with them
UNWEIGHTED_SPLITS = {"Slice", "Split", "Gather", "Concat", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "UNPACK",
                     "GATHER", "CONCATENATION", "PACK"}
BOUNDARY_LIMIT = 2000  # nodes: an input read everywhere (a residual stream) is not a boundary


def input_boundary(artifact_path, fmt: str, inputs: list) -> Candidate | None:
    """Everything between the named inputs (by index) and the first weight layers that read them, those layers
    included, with the artifact's input float: an input whose range one int8 scale cannot hold (resemblyzer's
    mel energies, 0..20 with a median of 6e-5: 85 % of them become the zero point) reaches them whole, and
    their outputs have ranges int8 holds. An unrolled recurrent layer reads its input once per step: all of
    those are kept. None when the inputs reach no weight layer through unweighted ops."""
    by_output, _ = graph_ops(artifact_path, fmt)
    names = _input_names(artifact_path, fmt)
    frontier = [names[i] for i in inputs if i < len(names)]
    users = {}
    for tensor, (node, op, ins) in by_output.items():
        for i in ins:
            users.setdefault(i, []).append((tensor, node, op))
    picked, weighted, seen = [], 0, set(frontier)
    while frontier and len(picked) <= BOUNDARY_LIMIT:
        for tensor, node, op in users.get(frontier.pop(), ()):
            if node in picked:
                continue
            if op not in NOT_OPS:
                picked.append(node)
            if op in WEIGHT_OPS[fmt]:
                weighted += 1
            elif tensor not in seen and (op in PASS_THROUGH or op in UNWEIGHTED_SPLITS or op in NOT_OPS):
                seen.add(tensor)
                frontier.append(tensor)
    if not weighted or len(picked) > BOUNDARY_LIMIT:
        return None
    return Candidate(nodes=tuple(picked), float_input=True,
                     named=f"the first layers reading input {', '.join(map(str, inputs))} ({len(picked)} ops), "
                           f"with a float input")


def _input_names(artifact_path, fmt: str) -> list:
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(artifact_path)).graph
        constants = {i.name for i in graph.initializer}
        return [i.name for i in graph.input if i.name not in constants]
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    return list(TFLiteArtifact(artifact_path).input_names)


def merged_heads(reference: list, io, task: str) -> set:
    """Indices of the outputs a detection head merges pixel boxes and 0..1 scores in (YOLOv8, YOLOv5 layouts)."""
    from edgesdk.judge.tasks import pick
    try:
        heads = pick(task, reference, io)
    except EdgeSDKError:
        return set()
    return {h.outputs[0] for h in heads if h.task == "detect" and h.params.get("layout") in MERGED_HEADS}


def detector_tail(artifact_path, fmt: str, reference: list, io, task: str) -> Candidate | None:
    """The Concat where a detector head merges pixel boxes and 0..1 scores into one tensor, if any."""
    merged = merged_heads(reference, io, task)
    tails = [c for c in output_producers(artifact_path, fmt, merged) if c.op in CONCATS] if merged else []
    return sum(tails[1:], tails[0]) if tails else None
