"""Read a .tflite file with the LiteRT interpreter: tensors, ops, int8 coverage, weight sparsity, and
inference on float data (quantize in, dequantize out)."""

from __future__ import annotations

import numpy as np

from .errors import ModelLoadError, RuntimeMissing

# Ops whose input 1 is the weight tensor that pruning zeroes.
WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "CONV_3D": 1}
FLOAT_TYPES = (np.float32, np.float16, np.float64)


def interpreter_module():
    """ai_edge_litert's interpreter module, else tflite_runtime's (same API)."""
    try:
        import ai_edge_litert.interpreter as module
    except ImportError:
        try:
            import tflite_runtime.interpreter as module
        except ImportError:
            raise RuntimeMissing("No TFLite runtime is installed here: pip install 'edgesdk[litert]' "
                                 "(ai-edge-litert).") from None
    return module


class TFLiteArtifact:
    """`delegates=False` shows the graph as written (for inspection); True runs it as a device would."""

    def __init__(self, path, num_threads: int = 1, delegates: bool = False):
        self.path = str(path)
        from .util import captured_output
        try:
            module = interpreter_module()
            # Without this, XNNPACK folds the ops it takes into one DELEGATE node.
            kwargs = {} if delegates else {
                "experimental_op_resolver_type": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
            with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.interpreter = module.Interpreter(model_path=self.path, num_threads=num_threads, **kwargs)
                self.interpreter.allocate_tensors()
        except RuntimeMissing:
            raise
        except Exception as exc:
            raise ModelLoadError(f"'{path}' is not a loadable TFLite model: {str(exc).splitlines()[0]}") from None
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        self.output_names = [d["name"] for d in self.outputs]

    # -- structure ------------------------------------------------------------
    @staticmethod
    def _io(d) -> dict:
        scale, zp = d["quantization"]
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zp)} if scale else None}

    def io(self) -> dict:
        return {"inputs": [self._io(d) for d in self.inputs], "outputs": [self._io(d) for d in self.outputs]}

    def ops(self) -> list:
        return self.interpreter._get_ops_details()

    def coverage(self) -> dict:
        """Which ops compute in float: for a full-int8 artifact this list must be empty.

        A QUANTIZE reading a graph input, or a DEQUANTIZE writing a graph output,
        only converts float I/O at the boundary; those are counted apart.
        """
        ops = self.ops()
        graph_in = {int(d["index"]) for d in self.inputs}
        graph_out = {int(d["index"]) for d in self.outputs}
        float_ops, io_ops = [], []
        for op in ops:
            types = list(op.get("operand_types", [])) + list(op.get("result_types", []))
            if not any(t in FLOAT_TYPES for t in types):
                continue
            entry = {"index": int(op["index"]), "op": op["op_name"]}
            boundary = (op["op_name"] == "QUANTIZE" and set(map(int, op["inputs"])) <= graph_in) or \
                (op["op_name"] == "DEQUANTIZE" and set(map(int, op["outputs"])) <= graph_out)
            (io_ops if boundary else float_ops).append(entry)
        hist: dict = {}
        for op in ops:
            hist[op["op_name"]] = hist.get(op["op_name"], 0) + 1
        return {"ops": len(ops), "int8_ops": len(ops) - len(float_ops) - len(io_ops), "float_ops": float_ops,
                "io_conversion_ops": io_ops, "op_histogram": dict(sorted(hist.items()))}

    def tensor_dtypes(self) -> dict:
        counts: dict = {}
        for d in self.interpreter.get_tensor_details():
            name = np.dtype(d["dtype"]).name
            counts[name] = counts.get(name, 0) + 1
        return counts

    def weight_sparsity(self) -> dict:
        """Fraction of exact zeros in the weight tensors of conv/dense ops, as stored in the file."""
        layers, zeros, total = [], 0, 0
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        seen = set()
        for op in self.ops():
            pos = WEIGHT_OPS.get(op["op_name"])
            if pos is None or len(op["inputs"]) <= pos:
                continue
            idx = int(op["inputs"][pos])
            if idx < 0 or idx in seen:
                continue
            seen.add(idx)
            try:
                w = self.interpreter.get_tensor(idx)
            except ValueError:  # a non-constant weight input
                continue
            z, n = int(np.count_nonzero(w == 0)), int(w.size)
            zeros, total = zeros + z, total + n
            layers.append({"tensor": details[idx]["name"], "op": op["op_name"], "dtype": np.dtype(w.dtype).name,
                           "params": n, "sparsity": round(z / n, 4) if n else 0.0})
        return {"overall": round(zeros / total, 4) if total else 0.0, "weights": total, "layers": layers}

    # -- inference ------------------------------------------------------------
    def predict(self, x: np.ndarray, progress=None) -> list:
        """Run float samples one at a time; return dequantized float outputs."""
        inp = self.inputs[0]
        scale, zp = inp["quantization"]
        dtype = inp["dtype"]
        outs = [[] for _ in self.outputs]
        for i in range(len(x)):
            sample = x[i:i + 1]
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                sample = np.clip(np.round(sample / scale) + zp, info.min, info.max)
            self.interpreter.set_tensor(inp["index"], sample.astype(dtype).reshape(inp["shape"]))
            self.interpreter.invoke()
            for k, d in enumerate(self.outputs):
                y = self.interpreter.get_tensor(d["index"])
                s, z = d["quantization"]
                outs[k].append((y.astype(np.float32) - z) * s if s else y.astype(np.float32))
            if progress:
                progress(i + 1, len(x))
        return [np.concatenate(o) for o in outs]
