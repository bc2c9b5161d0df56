"""The real YOLOX character detector given the head layout Ultralytics YOLOv8 exports.

ddddocr's detector ends in raw per-cell predictions (1, 3549, 6). This adds
the usual export tail: grid decode to pixel boxes, objectness x class score,
and one Concat of boxes (0..416 px) and scores (0..1) transposed to
(1, 4 + classes, cells), the layout whose int8 quantization collapses the
scores when the Concat shares one scale.
"""

import math

import numpy as np


def yolov8_layout(raw_path, out_path, size=416, strides=(8, 16, 32)):
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(raw_path))
    g = model.graph
    raw = g.output[0].name
    grid, stride = [], []
    for s in strides:
        n = math.ceil(size / s)
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grid.append(np.stack([xv, yv], -1).reshape(-1, 2))
        stride.append(np.full((n * n, 1), s))
    consts = {"head_grid": np.concatenate(grid)[None].astype(np.float32),
              "head_stride": np.concatenate(stride)[None].astype(np.float32),
              "head_half": np.array(0.5, np.float32)}
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(value, name))
    ints = {"s0": [0], "s2": [2], "s4": [4], "s5": [5], "s6": [6]}
    for name, v in ints.items():
        g.initializer.append(numpy_helper.from_array(np.array(v, np.int64), f"head_{name}"))
    axis = numpy_helper.from_array(np.array([2], np.int64), "head_axis")
    g.initializer.append(axis)
    nodes = [
        helper.make_node("Slice", [raw, "head_s0", "head_s2", "head_axis"], ["h_xy"]),
        helper.make_node("Slice", [raw, "head_s2", "head_s4", "head_axis"], ["h_wh"]),
        helper.make_node("Slice", [raw, "head_s4", "head_s5", "head_axis"], ["h_obj"]),
        helper.make_node("Slice", [raw, "head_s5", "head_s6", "head_axis"], ["h_cls"]),
        helper.make_node("Add", ["h_xy", "head_grid"], ["h_xy_g"]),
        helper.make_node("Mul", ["h_xy_g", "head_stride"], ["h_centre"]),
        helper.make_node("Exp", ["h_wh"], ["h_wh_e"]),
        helper.make_node("Mul", ["h_wh_e", "head_stride"], ["h_size"]),
        helper.make_node("Mul", ["h_obj", "h_cls"], ["h_score"]),
        helper.make_node("Concat", ["h_centre", "h_size", "h_score"], ["h_concat"], axis=2, name="head_concat"),
        helper.make_node("Transpose", ["h_concat"], ["output0"], perm=[0, 2, 1]),
    ]
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 5, 3549]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path
