"""Weight rounding that keeps each convolution kernel's sum, applied before a route's quantizer.

Plain int8 quantization rounds every weight to the nearest step of its channel's grid
(symmetric, scale = max|w| / 127). Where a kernel's large weights nearly cancel (depthwise
convolutions of real CNNs), nearest rounding changes the kernel's sum, its response to
smooth regions of the input, by 100-500 %. "kernel-sum" rounding moves the fewest weights
whose rounding was closest to a tie to the other neighbouring step, so that each spatial
kernel's integer sum equals its rounded float sum. Every weight stays within one step of its
value and on the same grid, so the quantizer that runs next keeps these integers exactly
(per-channel scales survive batch-norm folding, which scales whole channels). Measured on
EfficientNet-Lite0 with real photos: output SQNR 17.5 -> 20.6 dB, top-1 agreement 95.0 ->
97.5 % (TFLite, 360 crops), at no cost in size or speed. The bias-correction idea of
Nagel et al. 2019 without data: a spatially smooth input sees the float kernel's response.
"""

from __future__ import annotations

import numpy as np

MODES = ("kernel-sum", "nearest")
QMAX = 127  # symmetric int8 weights: [-127, 127], what ONNX Runtime and ai-edge-quantizer use


def kernel_sum(w: np.ndarray, per_channel: bool = True) -> np.ndarray:
    """`w` (out, in, *spatial) moved onto its int8 grid with every (out, in) kernel's sum kept.

    Zero weights stay zero (pruned weights must not come back). Kernels of one tap are left as
    nearest rounding would leave them: there is no sum to keep.
    """
    w = np.asarray(w, np.float32)
    out = len(w)
    absmax = np.abs(w.reshape(out, -1)).max(axis=1) if per_channel else np.full(out, np.abs(w).max())
    scale = np.where(absmax > 0, absmax / QMAX, 1.0).astype(np.float64)
    x = w.astype(np.float64) / scale.reshape(-1, *[1] * (w.ndim - 1))
    kernels = x.reshape(out * w.shape[1], -1)
    q = np.round(kernels)
    deficit = np.round(kernels.sum(axis=1)) - q.sum(axis=1)
    residual = kernels - q  # in [-0.5, 0.5]: how close each weight came to the other step
    for k in np.nonzero(deficit)[0]:
        n, step = int(abs(deficit[k])), np.sign(deficit[k])
        room = (np.abs(q[k] + step) <= QMAX) & (kernels[k] != 0)
        order = np.argsort(-residual[k] * step)  # closest to a tie in the needed direction first
        picked = [i for i in order if room[i]][:n]
        q[k, picked] += step
    return (q.reshape(x.shape) * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)


def round_onnx(model, per_channel: bool = True, skip_nodes=()) -> int:
    """Conv weights (initializers with a spatial kernel) of an onnx ModelProto rounded in place; returns how many.

    Nodes in `skip_nodes` stay in float, so their weights stay exact.
    """
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    done = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits or node.input[1] in done \
                or node.name in skip_nodes:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.dtype != np.float32 or w.ndim < 3 or int(np.prod(w.shape[2:])) < 2:
            continue
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(kernel_sum(w, per_channel), node.input[1]))
        done.add(node.input[1])
    return len(done)


def round_tflite(flatbuffer: bytes, per_channel: bool = True, skip_nodes=(), skip_op_types=()) -> tuple:
    """A float TFLite flatbuffer with CONV_2D / DEPTHWISE_CONV_2D float weights rounded: (bytes, how many).

    Ops kept in float (their output tensor's name before ";" in `skip_nodes`, or their type in
    `skip_op_types`) keep their weights exactly.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from .tflite_io import read_model, write_model
    model = read_model(flatbuffer)
    layouts = {schema.BuiltinOperator.CONV_2D: ("CONV_2D", (0, 3, 1, 2)),            # OHWI -> O,I,H,W
               schema.BuiltinOperator.DEPTHWISE_CONV_2D: ("DEPTHWISE_CONV_2D", (3, 0, 1, 2))}  # 1HWC -> C,1,H,W
    done = set()
    for sg in model.subgraphs:
        for op in sg.operators:
            code = model.operatorCodes[op.opcodeIndex]
            kind = layouts.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if kind is None or kind[0] in skip_op_types or len(op.inputs) < 2:
                continue
            out_name = sg.tensors[op.outputs[0]].name
            out_name = out_name.decode() if isinstance(out_name, bytes) else out_name
            weight = sg.tensors[op.inputs[1]]
            buffer = model.buffers[weight.buffer]
            if out_name.split(";")[0] in skip_nodes or weight.buffer in done or weight.type != schema.TensorType.FLOAT32 \
                    or buffer.data is None or len(buffer.data) == 0:
                continue
            w = np.frombuffer(bytes(buffer.data), np.float32).reshape(weight.shape).transpose(kind[1])
            if int(np.prod(w.shape[2:])) < 2:
                continue
            rounded = kernel_sum(w, per_channel).transpose(np.argsort(kind[1]))
            buffer.data = np.frombuffer(np.ascontiguousarray(rounded).tobytes(), np.uint8)
            done.add(weight.buffer)
    return write_model(model), len(done)
