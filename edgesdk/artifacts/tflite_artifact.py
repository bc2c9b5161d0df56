"""Read a .tflite file.

Structure (tensors, ops, int8 coverage, weight sparsity) comes from the
flatbuffer itself, through the schema that ai-edge-litert ships, so files with
custom ops or resource variables are described rather than refused.
Inference (quantize in, dequantize out) and the XNNPACK delegation count use
the LiteRT interpreter.
"""

from __future__ import annotations

import numpy as np

from edgesdk.errors import ModelLoadError, RuntimeMissing
from .runtime import TFLiteEngine, as_input, interpreter_module  # noqa: F401 (the readers' names for them)

# Ops whose input 1 is the weight tensor that pruning zeroes.
WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "CONV_3D": 1}
FLOAT_DTYPES = ("float32", "float16", "float64")
_NUMPY = {"FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "INT8": "int8", "UINT8": "uint8",
          "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool", "STRING": "string",
          "RESOURCE": "resource", "VARIANT": "variant", "INT4": "int4", "UINT16": "uint16", "UINT32": "uint32"}


def sample_runs(flatbuffer: bytes, x, rows, keep_tensors: bool = False):
    """For each sample index in `rows`, an interpreter of the flatbuffer that has just run that sample of `x`
    (float, an array or Inputs, in the graph's layout), with LiteRT's default delegate (XNNPACK, as the gate
    runs it); `keep_tensors` keeps every intermediate tensor for get_tensor (XNNPACK still computes them)."""
    from edgesdk.sources.inputs import feed_rows
    interp = interpreter_module().Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=keep_tensors)
    interp.allocate_tensors()
    details = interp.get_input_details()
    for i in rows:
        feed = feed_rows(x, int(i), int(i) + 1, [d["name"] for d in details])
        for d in details:
            interp.set_tensor(d["index"], as_input(feed[d["name"]], d))
        interp.invoke()
        yield interp


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise RuntimeMissing("Reading TFLite files needs ai-edge-litert: pip install 'edgesdk[litert]'") from None
    return schema


def _enum_names(cls) -> dict:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


class TFLiteArtifact:
    """`delegates=False` runs the graph as written; True as a device would (XNNPACK)."""

    def __init__(self, path, num_threads: int = 1, delegates: bool = False, exact: bool = False):
        # exact: TFLite's int8 kernels (XNNPACK and the reference) are exact anyway
        self.path = str(path)
        self.num_threads, self.delegates = num_threads, delegates
        try:
            with open(self.path, "rb") as f:
                self.buffer = f.read()
        except OSError as exc:
            raise ModelLoadError(f"Cannot read '{path}': {exc.strerror or exc}.") from None
        schema = _schema()
        if len(self.buffer) < 8 or not schema.Model.ModelBufferHasIdentifier(self.buffer, 0):
            raise ModelLoadError(f"'{path}' is not a TFLite model (no TFL3 flatbuffer identifier); it may be "
                                 f"another format or truncated.")
        try:
            self.model = schema.ModelT.InitFromPackedBuf(self.buffer, 0)
            self.graph = self.model.subgraphs[0]
        except Exception as exc:
            raise ModelLoadError(f"'{path}' is a damaged TFLite file (it may be truncated): "
                                 f"{type(exc).__name__}: {exc}") from None
        ops, types = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
        self._op_names = []
        for code in self.model.operatorCodes:
            if code.customCode is not None:
                self._op_names.append("CUSTOM:" + code.customCode.decode())
            else:
                self._op_names.append(ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN"))
        self._sg_types = [[_NUMPY.get(types.get(t.type, ""), str(t.type)) for t in sg.tensors]
                          for sg in self.model.subgraphs]
        self._types = self._sg_types[0]
        self._engine = None

    # -- structure ------------------------------------------------------------
    def tensor_name(self, i: int) -> str:
        name = self.graph.tensors[i].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def tensor_type(self, i: int) -> str:
        return self._types[i]

    def _io(self, i: int) -> dict:
        t = self.graph.tensors[i]
        q = t.quantization
        quant = None
        if q is not None and q.scale is not None and len(q.scale) == 1:
            quant = {"scale": float(q.scale[0]), "zero_point": int(q.zeroPoint[0])}
        elif q is not None and q.scale is not None and len(q.scale) > 1:
            quant = {"scales": len(q.scale), "per_channel_axis": int(q.quantizedDimension)}
        shape = [int(s) for s in (t.shapeSignature if t.shapeSignature is not None else t.shape)]
        return {"name": self.tensor_name(i), "shape": shape, "dtype": self._types[i], "quantization": quant}

    def io(self) -> dict:
        return {"inputs": [self._io(int(i)) for i in self.graph.inputs],
                "outputs": [self._io(int(i)) for i in self.graph.outputs]}

    @property
    def input_names(self) -> list:
        return [self.tensor_name(int(i)) for i in self.graph.inputs]

    @property
    def output_names(self) -> list:
        return [self.tensor_name(int(i)) for i in self.graph.outputs]

    def ops(self) -> list:
        return [{"index": k, "op_name": self._op_names[op.opcodeIndex],
                 "inputs": [int(i) for i in (op.inputs if op.inputs is not None else [])],
                 "outputs": [int(i) for i in (op.outputs if op.outputs is not None else [])]}
                for k, op in enumerate(self.graph.operators)]

    def subgraph_count(self) -> int:
        return len(self.model.subgraphs)

    def custom_ops(self) -> list:
        return sorted({n[len("CUSTOM:"):] for n in self._op_names if n.startswith("CUSTOM:")})

    def coverage(self) -> dict:
        """Which ops compute in float: for a full-int8 artifact this list must be empty. Integer ops with
        int16 activations (16x8) are counted apart from int8 ones.

        A QUANTIZE reading a graph input, or a DEQUANTIZE writing a graph output,
        only converts float I/O at the boundary; those are counted apart. Ops in the
        other subgraphs (WHILE and IF bodies, CALL_ONCE initialisers) count like any
        other; their entries name the subgraph.
        """
        graph_in = {int(i) for i in self.graph.inputs}
        graph_out = {int(i) for i in self.graph.outputs}
        float_ops, io_ops, hist, total, int16 = [], [], {}, 0, 0
        for k, sg in enumerate(self.model.subgraphs):
            types = self._sg_types[k]
            for index, op in enumerate(sg.operators):
                name = self._op_names[op.opcodeIndex]
                hist[name] = hist.get(name, 0) + 1
                total += 1
                ins = [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
                outs = [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
                if not any(types[i] in FLOAT_DTYPES for i in ins + outs):
                    int16 += any(types[i] == "int16" for i in ins + outs)  # 16x8: int16 activations
                    continue
                entry = {"index": index, "op": name, **({"subgraph": k} if k else {})}
                boundary = k == 0 and ((name == "QUANTIZE" and set(ins) <= graph_in) or
                                       (name == "DEQUANTIZE" and set(outs) <= graph_out))
                (io_ops if boundary else float_ops).append(entry)
        return {"ops": total, "int8_ops": total - len(float_ops) - len(io_ops) - int16, "int16_ops": int16,
                "float_ops": float_ops, "io_conversion_ops": io_ops, "op_histogram": dict(sorted(hist.items()))}

    def tensor_dtypes(self) -> dict:
        counts: dict = {}
        for name in self._types:
            counts[name] = counts.get(name, 0) + 1
        return counts

    def constant(self, i: int):
        """The stored value of a constant tensor, or None for activations."""
        t = self.graph.tensors[i]
        buf = self.model.buffers[t.buffer] if t.buffer < len(self.model.buffers) else None
        if buf is None:
            return None
        if buf.data is not None and len(buf.data):
            raw = bytes(np.asarray(buf.data, dtype=np.uint8))
        elif getattr(buf, "offset", 0) and buf.offset > 1:  # stored past the flatbuffer
            raw = self.buffer[buf.offset:buf.offset + buf.size]
        else:
            return None
        dtype = self._types[i]
        if dtype in ("string", "resource", "variant", "int4"):
            return None
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape([int(s) for s in t.shape])

    def parameter_bytes(self) -> int:
        """Bytes of constant data (weights, biases): what the Edge TPU would cache on chip."""
        total = 0
        for t in self.graph.tensors:
            buf = self.model.buffers[t.buffer] if t.buffer < len(self.model.buffers) else None
            if buf is not None:
                total += len(buf.data) if buf.data is not None else int(getattr(buf, "size", 0) or 0)
        return total

    def weight_sparsity(self) -> dict:
        """Fraction of exact zeros in the weight tensors of conv/dense ops, as stored in the file."""
        layers, zeros, total, seen = [], 0, 0, set()
        for op in self.ops():
            pos = WEIGHT_OPS.get(op["op_name"])
            if pos is None or len(op["inputs"]) <= pos:
                continue
            idx = op["inputs"][pos]
            if idx < 0 or idx in seen:
                continue
            seen.add(idx)
            w = self.constant(idx)
            if w is None:
                continue
            z, n = int(np.count_nonzero(w == 0)), int(w.size)
            zeros, total = zeros + z, total + n
            layers.append({"tensor": self.tensor_name(idx), "op": op["op_name"], "dtype": w.dtype.name,
                           "params": n, "sparsity": round(z / n, 4) if n else 0.0})
        return {"overall": round(zeros / total, 4) if total else 0.0, "weights": total, "layers": layers}

    # -- running --------------------------------------------------------------
    @property
    def interpreter(self):
        return self.engine.interpreter

    @property
    def engine(self) -> TFLiteEngine:
        """The runtime engine `edgesdk.load` runs too."""
        if self._engine is None:
            self._engine = self._make_engine(self.delegates)
        return self._engine

    def _make_engine(self, delegates: bool) -> TFLiteEngine:
        try:
            return TFLiteEngine(self.path, self.num_threads, delegates)
        except ModelLoadError as exc:
            custom = self.custom_ops()
            hint = f" It uses custom ops ({', '.join(custom)}) this runtime does not have." if custom else ""
            raise ModelLoadError(f"{exc}{hint}") from None

    def xnnpack_delegation(self) -> dict:
        """How much of the graph XNNPACK takes, measured by loading it with the delegate.

        The delegated interpreter keeps the original nodes and appends one
        DELEGATE node per partition; a node belongs to a partition when it is
        reached walking back from the partition's outputs without crossing its inputs.
        """
        interp = self._make_engine(delegates=True).interpreter
        details = interp._get_ops_details()
        originals = [d for d in details if d["op_name"] != "DELEGATE"]
        partitions = [d for d in details if d["op_name"] == "DELEGATE"]
        producer = {int(t): d for d in originals for t in d["outputs"]}
        delegated: set = set()
        for part in partitions:
            stop, stack, seen = {int(t) for t in part["inputs"]}, [int(t) for t in part["outputs"]], set()
            while stack:
                t = stack.pop()
                if t in stop or t in seen:
                    continue
                seen.add(t)
                node = producer.get(t)
                if node is not None and node["index"] not in delegated:
                    delegated.add(node["index"])
                    stack.extend(int(i) for i in node["inputs"])
            # sinks (ASSIGN_VARIABLE) have no output to walk back from: inside when all they read is
            for d in originals:
                if not len(d["outputs"]) and len(d["inputs"]) and all(int(i) in seen for i in d["inputs"]):
                    delegated.add(d["index"])
        hist: dict = {}
        for d in originals:
            if d["index"] not in delegated:
                hist[d["op_name"]] = hist.get(d["op_name"], 0) + 1
        return {"ops": len(originals), "delegated": len(delegated), "partitions": len(partitions),
                "not_delegated": dict(sorted(hist.items()))}

    def predict(self, x, progress=None, output_axes=None) -> list:
        return self.engine.predict(x, progress=progress, output_axes=output_axes)
