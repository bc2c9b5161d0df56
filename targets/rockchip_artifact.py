"""Read an .rknn file: io, where each op runs (NPU or CPU) and in which data type, and inference on the
host with rknn-toolkit2's simulator. Same interface as TFLiteArtifact and ONNXArtifact.

An .rknn is Rockchip's compiled format: nothing outside the toolkit parses it, and the toolkit's
simulator runs only a model it built in the same process. So the reader runs the build that made the
file when this process made it (converters.onnx_rknn keeps it alive, found by the file's sha256), and
otherwise describes the file from its manifest; running it then needs the board (`edgesdk deploy`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgesdk.errors import ModelLoadError, RuntimeMissing
from edgesdk.util import sha256_file

from .rockchip import EDGE_OPS, GLUE_OPS

INFER_CHUNK = 16  # samples the simulator runs a call: progress (and the budget) between calls


class RKNNArtifact:
    def __init__(self, path, num_threads: int = 1, delegates: bool = False, exact: bool = False):
        self.path = str(path)
        if not Path(path).is_file():
            raise ModelLoadError(f"'{path}' does not exist.")
        from edgesdk.converters.onnx_rknn import build_for
        self.build = build_for(sha256_file(Path(path)))
        if self.build is not None:
            self.inputs, self.outputs, self.layers = self.build.inputs, self.build.outputs, self.build.layers
        else:
            manifest = _manifest(Path(path))
            self.inputs, self.outputs = manifest.get("inputs", []), manifest.get("outputs", [])
            self.layers = manifest.get("compatibility", {}).get("layers", [])
        self.output_names = [o["name"] for o in self.outputs]

    # -- structure ------------------------------------------------------------
    def io(self) -> dict:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs)}

    def ops(self) -> list:
        return [{"index": r["id"], "op_name": r["op"], "name": r["name"], "dtype": r["dtype"],
                 "target": r["target"]} for r in self.layers if r["op"] not in EDGE_OPS]

    def subgraph_count(self) -> int:
        return 1

    def custom_ops(self) -> list:
        return []

    def coverage(self) -> dict:
        """An op is int8 when the toolkit's layer table says it computes in INT8; type conversions and
        layout ops at the edges are glue, not float compute."""
        ops = self.ops()
        compute = [o for o in ops if o["op_name"] not in GLUE_OPS]
        float_ops = [{"index": o["index"], "op": o["op_name"], "name": o["name"]} for o in compute
                     if o["dtype"].upper() not in ("INT8", "UINT8", "INT16", "INT32")]
        hist: dict = {}
        for o in ops:
            hist[o["op_name"]] = hist.get(o["op_name"], 0) + 1
        return {"ops": len(compute), "int8_ops": len(compute) - len(float_ops), "float_ops": float_ops,
                "io_conversion_ops": [], "op_histogram": dict(sorted(hist.items())),
                "on_cpu": [{"index": o["index"], "op": o["op_name"], "name": o["name"]} for o in compute
                           if o["target"] == "CPU"]}

    def tensor_dtypes(self) -> dict:
        counts: dict = {}
        for o in self.ops():
            name = o["dtype"].lower()
            counts[name] = counts.get(name, 0) + 1
        return counts

    def weight_sparsity(self) -> dict:
        """The source graph's weights (the toolkit stores its own layout); unknown without the build."""
        if self.build is None:
            return {"overall": 0.0, "weights": 0, "layers": []}
        from edgesdk.artifacts.onnx_artifact import ONNXArtifact
        return ONNXArtifact(self.build.onnx).weight_sparsity()

    # -- inference ------------------------------------------------------------
    def predict(self, x, progress=None, output_axes=None) -> list:
        from edgesdk.sources.inputs import feed_rows
        if self.build is None:
            raise RuntimeMissing(
                f"'{self.path}' can only run on a Rockchip NPU: rknn-toolkit2's simulator runs only a model "
                f"built in the same process. Run it on the board with `edgesdk deploy`, or convert again to "
                f"validate it on this machine.")
        names = [i["name"] for i in self.inputs]
        work, n, parts = self.build.worker.work, len(x), []
        for start in range(0, n, INFER_CHUNK):  # a chunk a call: progress between them, and the budget
            feed = feed_rows(x, start, min(start + INFER_CHUNK, n), names)
            paths = []
            for i, name in enumerate(names):
                paths.append(str(work / f"infer_{i}.npy"))
                np.save(paths[-1], np.asarray(feed[name], dtype=np.float32))
            reply = self.build.worker.call({"op": "infer", "inputs": paths, "out": str(work / "outputs.npz")},
                                           waiting=progress and (lambda seconds: progress(start, n)))
            with np.load(reply["outputs"]) as z:
                parts.append([z[f"arr_{k}"] for k in range(len(z.files))])
            if progress:
                progress(min(start + INFER_CHUNK, n), n)
        outs = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return [_shaped(o, spec) for o, spec in zip(outs, self.outputs)]


def _shaped(y: np.ndarray, spec: dict) -> np.ndarray:
    """The simulator's outputs in the ONNX graph's shape (it may drop or add unit axes)."""
    want = [d for d in spec.get("shape", [])][1:]
    if want and all(d > 0 for d in want) and int(np.prod(want)) * len(y) == y.size:
        return y.reshape([len(y), *want]).astype(np.float32)
    return y.astype(np.float32)


def _manifest(path: Path) -> dict:
    side = path.with_name(path.name + ".json")
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return {}
