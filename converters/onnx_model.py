"""Load an ONNX file as a source model (bring your own ONNX).

Dynamic dimensions are fixed before anything else: from --input-shape when
given; a lone dynamic batch axis becomes 1 (and the notes say so); any other
dynamic axis without --input-shape is an error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgesdk.errors import ModelLoadError
from edgesdk.source import SourceModel
from edgesdk.util import first_line, sha256_file

RUNTIME_MAX_IR_VERSION = 10  # what ONNX Runtime 1.31 (and TensorRT 10) load


def load_path(path: Path, input_shape=None) -> SourceModel:
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
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelLoadError(f"'{path}' has {len(inputs)} inputs; only single-input models are supported for now.")
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    current = [d.dim_value if d.dim_value > 0 else None for d in dims]
    notes = []
    if input_shape is not None:
        shape = [int(v) for v in input_shape]
        if len(shape) != len(current) or any(c is not None and c != s for c, s in zip(current, shape)):
            raise ModelLoadError(f"--input-shape {','.join(map(str, shape))} does not fit the model's input "
                                 f"'{inp.name}' of shape {_show(current)}.")
    elif None in current[1:]:
        raise ModelLoadError(f"'{path}' has dynamic input dimensions {_show(current)} on '{inp.name}'. Give the "
                             f"shape to build for with --input-shape, e.g. --input-shape "
                             f"{','.join(str(c or 1) for c in current[:1])},{','.join(str(c or 224) for c in current[1:])}.")
    else:
        shape = [1] + current[1:]
    if current != shape:
        notes.append(f"input '{inp.name}' fixed from {_show(current)} to {_show(shape)}")
    for d, v in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = v
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

    from edgesdk.onnx_artifact import ONNXArtifact
    runner = ONNXArtifact(fixed)

    def run(_model, x):
        return runner.predict(x)

    layout = "NCHW" if len(shape) == 4 and shape[1] in (1, 3, 4) else None
    src = SourceModel(framework="onnx", flavor=f"onnx opset {_opset(model)}", model=model, name=path.stem,
                      sha256=sha256_file(path), input_name=inp.name, input_shape=(None,) + tuple(shape[1:]),
                      output_names=[o.name for o in model.graph.output], run=run, path=str(path),
                      param_count=_params(model), notes=notes, layout=layout)
    src.float_onnx, src.keepalive = str(fixed), tmp
    src.input_dtype = str(onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
    return src


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
