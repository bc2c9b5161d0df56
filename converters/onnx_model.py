"""Load an ONNX file as a source model (bring your own ONNX).

Dynamic dimensions are fixed before anything else: from --input-shape when
given; a lone dynamic batch axis becomes 1 (and the notes say so); other
dynamic axes take the sizes of the data's samples (an .npz or array), and
without either they are an error that says what to give.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgesdk.errors import ModelLoadError
from edgesdk.sources.source import InputSpec, SourceModel
from edgesdk.util import first_line, sha256_file

RUNTIME_MAX_IR_VERSION = 10  # what ONNX Runtime 1.31 (and TensorRT 10) load


def load_path(path: Path, input_shape=None, data_shapes=None) -> SourceModel:
    try:
        import onnx
    except ImportError:
        raise ModelLoadError("ONNX sources need the onnx extra: pip install 'edgesdk[onnx]'") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = first_line(exc)
        raise ModelLoadError(f"'{path}' is not a valid ONNX model ({first[:300]}). It may be truncated, or "
                             f"need external data files beside it.") from None
    quantized = quantized_ops(model)
    if quantized:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(quantized.items()))
        raise ModelLoadError(f"'{path}' is already quantized ({listed}); quantizing it again would compound the "
                             f"error and its integer ops are not what the targets' converters take. Either use it "
                             f"as it is (`edgesdk inspect {path.name} --target PROFILE` says whether a target runs "
                             f"it; `edgesdk bench` / `edgesdk deploy` measure it), or convert from the float "
                             f"original the quantized model was made from.")
    inputs = graph_inputs(model.graph)
    shapes = dict(input_shape or {})
    if len(shapes) == 1 and len(inputs) == 1:  # the one input's shape (a wrong name is said by load_source)
        shapes = {inputs[0].name: next(iter(shapes.values()))}
    elif None in shapes:
        raise ModelLoadError(f"--input-shape gives one unnamed shape, but '{path.name}' has {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}): name each, e.g. --input-shape "
                             f"{inputs[0].name}:{','.join(map(str, shapes[None]))}.")
    notes, specs, problems, batch_sizes = [], [], [], []
    dim0 = inputs[0].type.tensor_type.shape.dim[:1] if inputs else []
    batch = (dim0[0].dim_param, dim0[0].dim_value) if dim0 else ("", 0)  # read before the loop fixes dims
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        current = [d.dim_value if d.dim_value > 0 else None for d in dims]
        axis = _batch_axis(dims, batch)
        given, how = shapes.get(inp.name), ""
        if given is not None:
            shape = [int(v) for v in given]
            if len(shape) != len(current) or any(c is not None and c != s for c, s in zip(current, shape)):
                raise ModelLoadError(f"--input-shape {inp.name}:{','.join(map(str, shape))} does not fit the "
                                     f"model's input '{inp.name}' of shape {_show(current)}.")
        else:
            shape = [1 if c is None and k == axis else c for k, c in enumerate(current)]
            if None in shape:  # sizes only the data can tell: the size of its samples
                data = data_shapes or {}
                shape = _from_data(shape, axis, data.get(inp.name, data.get(None) if len(inputs) == 1 else None))
                if shape is None:
                    problems.append((inp.name, current))
                    continue
                how = ", the size of the data's samples (--input-shape builds for another)"
        batch_sizes.append(shape[axis] if axis is not None else None)
        if current != shape:
            notes.append(f"input '{inp.name}' fixed from {_show(current)} to {_show(shape)}{how}")
        for d, v in zip(dims, shape):
            d.ClearField("dim_param")
            d.dim_value = v
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
        layout = "NCHW" if len(shape) == 4 and shape[1] in (1, 3, 4) else None
        specs.append(InputSpec(inp.name, tuple(None if k == axis else d for k, d in enumerate(shape)), dtype,
                               layout, axis))
    if problems:
        listed = ", ".join(f"{_show(c)} on '{n}'" for n, c in problems)
        example = ";".join(f"{n}:{','.join(str(c or 1) for c in cur[:1])}"
                           f"{',' if len(cur) > 1 else ''}{','.join(str(c or 224) for c in cur[1:])}"
                           for n, cur in problems)
        if len(inputs) == 1:
            example = example.split(":", 1)[1]
        raise ModelLoadError(f"'{path}' has dynamic input dimensions {listed}. Give the shape to build for "
                             f"with --input-shape, e.g. --input-shape {example}.")
    output_axes = {}
    batch_of_one = all(size == 1 for size in batch_sizes)
    for out in model.graph.output:  # a state output (layers, batch, units) stacks samples on axis 1
        params = [d.dim_param for d in out.type.tensor_type.shape.dim]
        if batch[0] and batch[0] in params and params.index(batch[0]) != 0:
            output_axes[out.name] = params.index(batch[0])
    for out in model.graph.output:  # let shape inference recompute them from the fixed input
        for d in out.type.tensor_type.shape.dim:
            if d.dim_param:
                d.ClearField("dim_param")
    tmp = tempfile.TemporaryDirectory(prefix="edgesdk-onnx-src-")
    fixed = Path(tmp.name) / "source.onnx"
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # ONNX Runtime infers shapes again when it loads the model
    if model.ir_version > RUNTIME_MAX_IR_VERSION:
        # onnx itself now writes IR 14, which ONNX Runtime 1.31 refuses outright; the format
        # change is in new data types, so a model that does not use them runs as IR 10
        notes.append(f"IR version lowered from {model.ir_version} to {RUNTIME_MAX_IR_VERSION} for ONNX Runtime")
        model.ir_version = RUNTIME_MAX_IR_VERSION
    onnx.save(model, str(fixed))

    open_sizes = _loadable(fixed, onnx.load(str(path)))
    if open_sizes:
        notes.append(f"input sizes left open in the graph: with them fixed ONNX Runtime refuses it ({open_sizes})")

    def run(_model, x):
        if "onnx_runner" not in src.derived:  # made anew when the graph is rewritten (resolve_control_flow)
            from edgesdk.artifacts.onnx_artifact import ONNXArtifact
            # every core, as the artifact is validated (YOLOv8n's reference outputs: 2.1 s on one, 1.6 on two)
            src.derived["onnx_runner"] = ONNXArtifact(src.float_onnx, num_threads=os.cpu_count() or 1)
            if batch_of_one and len(x):
                _find_batch_axes(src.derived["onnx_runner"], x[:1], output_axes)
        return src.derived["onnx_runner"].predict(x, output_axes=output_axes)

    one = specs[0]
    src = SourceModel(framework="onnx", flavor=f"onnx opset {_opset(model)}", model=model, name=path.stem,
                      sha256=_sha256_with_data(path), input_name=one.name, input_shape=one.shape,
                      output_names=[o.name for o in model.graph.output], run=run, path=str(path),
                      param_count=_params(model), notes=notes, layout=one.layout, input_dtype=one.dtype,
                      specs=specs if len(specs) > 1 else [], output_axes=output_axes)
    src.float_onnx, src.keepalive = str(fixed), tmp
    return src


def _find_batch_axes(runner, one, output_axes: dict) -> None:
    """Outputs whose samples stack on another axis than 0, from one sample's real shapes, where the graph did
    not say (a batch of one fixed in the graph, or output shapes declared wrong): axis 0 is not 1 and exactly
    one other axis is. A PyTorch CRNN's (steps, batch, symbols), as ddddocr's recognizer writes it while
    declaring (1, seqlen)."""
    for name, y in zip(runner.output_names, runner.predict(one)):
        if name not in output_axes and y.ndim >= 3 and y.shape[0] != 1 and list(y.shape).count(1) == 1:
            output_axes[name] = list(y.shape).index(1)


def graph_inputs(graph) -> list:
    """The graph's real inputs (ValueInfos): what a feed names; initializers listed as inputs are not."""
    inits = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def input_names(path) -> list:
    import onnx
    return [i.name for i in graph_inputs(onnx.load(str(path)).graph)]


def _loadable(fixed: Path, plain) -> str | None:
    """None when ONNX Runtime loads the fixed-size graph; else the reason, and `fixed` holds the graph with
    its sizes left open (If branches written for other sizes, another sample rate, can contradict fixed
    sizes in shape inference; such a model still runs, fed the sizes asked for)."""
    import onnx
    from edgesdk.artifacts.onnx_artifact import ONNXArtifact
    from edgesdk.errors import EdgeSDKError
    try:
        ONNXArtifact(fixed).session()
        return None
    except EdgeSDKError as exc:
        reason = first_line(exc)[:160]
    plain.ir_version = min(plain.ir_version, RUNTIME_MAX_IR_VERSION)
    onnx.save(plain, str(fixed))
    ONNXArtifact(fixed).session()  # a model ONNX Runtime cannot load at all says so here
    return reason


def resolve_control_flow(source) -> None:
    """If nodes that the fixed sizes and --input-value decide are inlined (onnx_fold); the source's graph
    (and what runs it) is rewritten in place."""
    import onnx
    from . import onnx_fold
    model = onnx.load(source.float_onnx)
    if not any(n.op_type == "If" for n in model.graph.node):
        return
    shapes = {s.name: [1 if d is None else d for d in s.shape] for s in source.inputs}
    before = len(model.graph.node)
    try:
        model, folded = onnx_fold.fold(model, source.fixed, shapes)
    except Exception as exc:  # the graph stays as it was: the routes judge it
        source.notes.append(f"If nodes left as they are: resolving them failed ({first_line(exc)[:160]})")
        return
    if not folded:
        return
    for inp in model.graph.input:  # with the branches gone, the sizes can be fixed where they were left open
        if inp.name in shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    onnx.save(model, source.float_onnx)
    still_open = _loadable(Path(source.float_onnx), plain)
    source.derived.pop("onnx_runner", None)
    source.param_count = _params(model)  # weights that sat in the branches count now
    if not still_open:
        source.notes = [n for n in source.notes if not n.startswith("input sizes left open")]
    fixed = f"; {', '.join(source.fixed)} built in as constants" if source.fixed else ""
    source.notes.append(f"{folded} If node(s) resolved by the fixed sizes and values ({before} -> "
                        f"{len(model.graph.node)} top-level nodes){fixed}")


def simplify_graph(source) -> None:
    """Constants folded and shape arithmetic gone, once every size is fixed (onnx_simplify)."""
    if any(n.startswith("input sizes left open") for n in source.notes):
        return  # shape arithmetic on open sizes cannot fold, and the graph runs as it is
    from .onnx_simplify import simplify
    note = simplify(source)
    if note:
        source.notes.append(note)


def _batch_axis(dims, batch) -> int | None:
    """Where samples stack in this input: the axis sharing the first input's batch dimension (a recurrent
    state (layers, batch, units) stacks on axis 1); None for a scalar (a sample rate)."""
    if not dims:
        return None
    params = [d.dim_param for d in dims]
    b_param, b_value = batch
    if b_param and b_param in params:
        return params.index(b_param)
    values = [d.dim_value for d in dims]
    if not b_value:  # an unnamed dynamic batch: this input's first unnamed dynamic axis
        free = [k for k, d in enumerate(dims) if not d.dim_value and not d.dim_param]
        return free[0] if free else 0
    if not values[0] or values[0] == b_value:
        return 0
    if b_value and b_value in values:
        return values.index(b_value)
    return 0


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
                 "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
                 "QOrderedMatMul", "MatMulNBits"}


def quantized_ops(model) -> dict:
    """Quantization ops anywhere in the graph (subgraphs of If/Loop/Scan included): op type -> count."""
    counts: dict = {}

    def walk(graph):
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)
    walk(model.graph)
    return counts


def _sha256_with_data(path: Path) -> str:
    """The model's identity for the cache: the .onnx and every external data file it names (a changed weights
    file is a different model)."""
    import hashlib
    import onnx
    files = set()

    def walk(graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                tensors += ([a.t] if a.HasField("t") else []) + list(a.tensors)
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(g)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                files.update(e.value for e in t.external_data if e.key == "location")
    walk(onnx.load(str(path), load_external_data=False).graph)
    if not files:
        return sha256_file(path)
    h = hashlib.sha256(sha256_file(path).encode())
    for name in sorted(files):
        data = path.parent / name
        h.update(f"{name}:{sha256_file(data) if data.is_file() else 'missing'}".encode())
    return h.hexdigest()


def _from_data(shape: list, axis, sample) -> list | None:
    """The model's shape with its dynamic sizes taken from a data sample's shape, where the two agree."""
    if sample is None:
        return None
    full = list(sample)
    if axis is not None:
        full.insert(axis, 1)
    if len(full) != len(shape) or any(c is not None and c != d for c, d in zip(shape, full)):
        return None
    return [int(d) for d in full]


def _show(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _params(model) -> int:
    """Weights as initializers, or (older exporters) as Constant nodes."""
    import numpy as np
    total = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    total += int(np.prod(attr.t.dims))
    return total
