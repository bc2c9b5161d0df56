"""ONNX -> .rknn with Rockchip's rknn-toolkit2, run inside its private environment (edgesdk.toolchains).

Standalone: it imports nothing of edgesdk. It serves requests (one JSON line each on stdin, one reply
line on stdout) because the toolkit's simulator runs only a model built in the same process: a built
model stays in memory and later requests run it.

  {"op": "build", "onnx" (input sizes fixed), "platform", "quantize", "algorithm", "per_channel",
   "dataset" (a text file: one line per sample, its .npy per input), "out"}
      -> {"rknn": out, "layers": [{"id", "op", "dtype", "target", "name"}], "toolkit": version}
  {"op": "infer", "inputs": [.npy per input, samples first, as the ONNX graph takes them], "out": .npz}
      -> {"outputs": out, "count": n}
"""

import contextlib
import json
import os
import re
import sys

ROW = re.compile(r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(CPU|NPU|GPU)\s+.*\s(\S+)\s*$")


def layer_table(log_path: str) -> list:
    """The build's 'Network Layer Information Table': each op, its data type and where it runs."""
    rows, inside = [], False
    with open(log_path, errors="replace") as f:
        for line in f:
            if "Network Layer Information Table" in line:
                rows, inside = [], True
                continue
            if not inside:
                continue
            m = ROW.match(line.rstrip())
            if m:
                rows.append({"id": int(m.group(1)), "op": m.group(2), "dtype": m.group(3), "target": m.group(4),
                             "name": m.group(5)})
            elif rows and "-----" in line:
                inside = False
    return rows


@contextlib.contextmanager
def captured(path: str):
    """Send everything written to fds 1 and 2 (native code included) to path, then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Server:
    def __init__(self):
        self.rknn = None

    def build(self, req: dict) -> dict:
        from rknn.api import RKNN
        if self.rknn is not None:
            self.rknn.release()
        log = os.path.join(req["work"], "build.log")
        with captured(log):  # the layer table comes from the toolkit's native logger, on the process's fds
            self.rknn = RKNN(verbose=True)
            reply = self._build(req)
        reply["layers"] = layer_table(log)
        with open(log, errors="replace") as f:
            sys.stderr.write(f.read())
        return reply

    def _build(self, req: dict) -> dict:
        from rknn.api import rknn as rknn_module
        config = {"target_platform": req["platform"]}  # no mean/std: the data comes as the model takes it
        if req["quantize"]:
            config.update(quantized_algorithm=req["algorithm"],
                          quantized_method="channel" if req["per_channel"] else "layer")
        self._check(self.rknn.config(**config), "config")
        self._check(self.rknn.load_onnx(req["onnx"]), "load_onnx")  # its input sizes are fixed already
        self._check(self.rknn.build(do_quantization=req["quantize"], dataset=req.get("dataset")), "build")
        self._check(self.rknn.export_rknn(req["out"]), "export_rknn")
        self._check(self.rknn.init_runtime(), "init_runtime (simulator)")
        version = getattr(rknn_module, "__version__", None)
        if version is None:
            from importlib import metadata
            version = metadata.version("rknn-toolkit2")
        return {"rknn": req["out"], "toolkit": version}

    def infer(self, req: dict) -> dict:
        import numpy as np
        if self.rknn is None:
            raise RuntimeError("no model has been built in this session")
        xs = [np.load(p) for p in req["inputs"]]
        outs = None
        for i in range(len(xs[0])):
            feed = [x[i:i + 1] for x in xs]
            # 4-D inputs come as the ONNX graph has them, which the toolkit calls nchw whatever the axes mean
            got = self.rknn.inference(inputs=feed, data_format=["nchw" if x.ndim == 4 else "nhwc" for x in xs])
            if got is None:
                raise RuntimeError(f"the simulator returned nothing for sample {i}")
            outs = [[] for _ in got] if outs is None else outs
            for k, y in enumerate(got):
                y = np.asarray(y, dtype=np.float32)
                outs[k].append(y if y.ndim and y.shape[0] == 1 else y[None])  # one sample each
        np.savez(req["out"], *[np.concatenate(o) for o in outs])
        return {"outputs": req["out"], "count": len(xs[0])}

    @staticmethod
    def _check(status, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"rknn-toolkit2 {what} failed (status {status}); see the log above")


def reason(exc: Exception) -> str:
    """The line of an error that says what went wrong: the toolkit raises errors whose text is a whole
    traceback of its own ("Traceback (most recent call last): File ..."), the cause on its last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = next((line for line in reversed(lines) if not line.startswith(("File ", "Traceback", "raise "))), "")
    return said if said.split(":", 1)[0].endswith(("Error", "Exception")) else f"{type(exc).__name__}: {said or exc}"


def serve() -> None:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the toolkit prints progress on stdout: into the log, not into the replies
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            reply = getattr(server, req["op"])(req)
        except Exception as exc:  # reported to the caller, who raises it as the toolchain's error
            reply = {"error": reason(exc)}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
    if server.rknn is not None:
        server.rknn.release()


if __name__ == "__main__":
    serve()
