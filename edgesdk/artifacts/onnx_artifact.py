"""Read an .onnx file: inputs/outputs, op histogram, QDQ coverage, weight sparsity, and inference
with ONNX Runtime. Same interface as TFLiteArtifact."""

from __future__ import annotations

import numpy as np

from edgesdk.errors import ModelLoadError, RuntimeMissing
from .runtime import DISABLED_OPTIMIZERS, ONNXEngine  # noqa: F401 (the readers' names for them)

QDQ = {"QuantizeLinear", "DequantizeLinear"}
# Ops that only move data; reading a graph input directly they are layout glue, not float compute.
LAYOUT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
# exact=True runs the QDQ graph as written (graph optimizations off): int8 as a device computes it. On x86
# CPUs with AVX2 but no VNNI, ONNX Runtime's fused int8 kernels add pairs of u8 x s8 products in int16, which
# saturates: EfficientNet-Lite0 measured 9.2 dB there against 17.6 dB as written, and on ARM or TensorRT.
_ELEM = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
         11: "float64"}


def _graphs(graph):
    """graph and, depth first, every graph held in a node attribute (If's branches, Loop's and Scan's bodies)."""
    from onnx import AttributeProto
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


class ONNXArtifact:
    def __init__(self, path, num_threads: int = 1, delegates: bool = False, exact: bool = False):
        self.path = str(path)
        self._exact = exact
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise RuntimeMissing("Reading ONNX needs the onnx package: pip install 'edgesdk[onnx]'") from None
        try:
            self.model = onnx.load(self.path)
        except Exception as exc:
            raise ModelLoadError(f"'{path}' is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
        self._np = numpy_helper
        self.graph = self.model.graph
        self.graphs = list(_graphs(self.graph))  # the main graph, then every If/Loop/Scan body inside it
        self.nodes = [n for g in self.graphs for n in g.node]
        self.initializers = {i.name: i for g in self.graphs for i in g.initializer}
        self.output_names = [o.name for o in self.graph.output]
        self._engine = None
        self._check_sizes()
        self._threads = num_threads

    def _check_sizes(self) -> None:
        """Every weight holds as many values as its shape says (a damaged or hostile file can declare a 2 GB
        tensor and hold nothing), read from the fields alone: nothing is allocated."""
        from onnx import TensorProto, helper
        fields = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
        for t in self.initializers.values():
            if t.data_location == TensorProto.EXTERNAL:
                continue
            count = int(np.prod(t.dims)) if len(t.dims) else 1
            if t.raw_data:
                have = len(t.raw_data) / max(helper.tensor_dtype_to_np_dtype(t.data_type).itemsize, 1) \
                    if t.data_type != TensorProto.STRING else count
            else:
                have = max(len(getattr(t, f)) for f in fields)
                if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                    have //= 2
            if have < count and not (t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT4,
                                                     TensorProto.UINT4) and not t.raw_data and have >= count / 2):
                raise ModelLoadError(f"'{self.path}' is damaged: its weight '{t.name}' declares {count:,} values "
                                     f"({list(t.dims)}) and holds {int(have):,}.")

    # -- structure ------------------------------------------------------------
    @staticmethod
    def _value_info(v) -> dict:
        t = v.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": _ELEM.get(t.elem_type, str(t.elem_type)),
                "quantization": None}

    def io(self) -> dict:
        inputs = [i for i in self.graph.input if i.name not in self.initializers]
        return {"inputs": [self._value_info(v) for v in inputs],
                "outputs": [self._value_info(v) for v in self.graph.output]}

    def ops(self) -> list:
        return [{"index": i, "op_name": n.op_type, "name": n.name, "inputs": list(n.input),
                 "outputs": list(n.output)} for i, n in enumerate(self.graph.node)]

    def subgraph_count(self) -> int:
        return len(self.graphs)

    def coverage(self) -> dict:
        """A compute op is int8 when its activation inputs come from DequantizeLinear (QDQ form). Ops inside
        control-flow bodies count like any other (index: the position in the depth-first walk)."""
        dq_outputs = {o for n in self.nodes if n.op_type == "DequantizeLinear" for o in n.output}
        wide = {o for n in self.nodes if n.op_type == "DequantizeLinear" and self._int16(n) for o in n.output}
        graph_inputs = {i.name for i in self.graph.input}
        float_ops, io_ops = [], []
        qdq = int16 = 0
        for i, n in enumerate(self.nodes):
            if n.op_type in QDQ:
                qdq += 1
                continue
            acts = [x for x in n.input if x and x not in self.initializers]
            if not acts or all(a in dq_outputs for a in acts):
                int16 += any(a in wide for a in acts)  # int16 activations (ONNX Runtime's QInt16)
                continue
            entry = {"index": i, "op": n.op_type, "name": n.name}
            if n.op_type in LAYOUT_OPS and all(a in graph_inputs for a in acts):
                io_ops.append(entry)
            else:
                float_ops.append(entry)
        hist: dict = {}
        for n in self.nodes:
            hist[n.op_type] = hist.get(n.op_type, 0) + 1
        compute = len(self.nodes) - qdq
        return {"ops": compute, "int8_ops": compute - len(float_ops) - len(io_ops) - int16, "int16_ops": int16,
                "qdq_ops": qdq, "float_ops": float_ops, "io_conversion_ops": io_ops,
                "op_histogram": dict(sorted(hist.items()))}

    def _int16(self, dq) -> bool:
        """Whether a DequantizeLinear reads 16-bit integers (its zero point's type; without one, its input's)."""
        zero = self.initializers.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        source = zero if zero is not None else self.initializers.get(dq.input[0])
        return source is not None and source.data_type in (4, 5)  # UINT16, INT16

    def custom_ops(self) -> list:
        """Ops from domains outside the ONNX standard (and ONNX Runtime's own contrib ops)."""
        return sorted({f"{n.domain}.{n.op_type}" for n in self.nodes
                       if n.domain not in ("", "ai.onnx", "com.microsoft")})

    def tensor_dtypes(self) -> dict:
        counts: dict = {}
        for init in self.initializers.values():
            name = _ELEM.get(init.data_type, str(init.data_type))
            counts[name] = counts.get(name, 0) + 1
        return counts

    def _weight_array(self, name, dequantized_from):
        """The stored weights behind `name`: an initializer, or one reached through DequantizeLinear."""
        source = name if name in self.initializers else dequantized_from.get(name)
        return self._np.to_array(self.initializers[source]) if source in self.initializers else None

    def weight_sparsity(self) -> dict:
        layers, zeros, total = [], 0, 0
        dequantized_from = {n.output[0]: n.input[0] for n in self.nodes if n.op_type == "DequantizeLinear"}
        for n in self.nodes:
            pos = WEIGHT_OPS.get(n.op_type)
            if pos is None or len(n.input) <= pos:
                continue
            w = self._weight_array(n.input[pos], dequantized_from)
            if w is None or w.ndim < 2:
                continue
            z = int(np.count_nonzero(w == 0))
            zeros, total = zeros + z, total + w.size
            layers.append({"tensor": n.input[pos], "op": n.op_type, "dtype": w.dtype.name, "params": int(w.size),
                           "sparsity": round(z / w.size, 4)})
        return {"overall": round(zeros / total, 4) if total else 0.0, "weights": int(total), "layers": layers}

    # -- inference ------------------------------------------------------------
    def session(self):
        return self.engine.session

    @property
    def engine(self) -> ONNXEngine:
        """The runtime engine `edgesdk.load` runs too."""
        if self._engine is None:
            self._engine = ONNXEngine(self.path, self._threads, self._exact)
        return self._engine

    def predict(self, x, progress=None, output_axes=None) -> list:
        return self.engine.predict(x, progress=progress, output_axes=output_axes)
