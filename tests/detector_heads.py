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
    return _with_output0(model, out_path)


def yolov8_branches(raw_path, out_path, size=416, strides=(8, 16, 32)):
    """The head as Ultralytics YOLOv8 builds it: box and class branches apart until one final Concat.

    YOLOX joins each level's regressions and sigmoids before its output (one tensor per level); here each
    level's branches are taken before that join, boxes decoded to pixels (grid, stride, exp), the score
    is objectness x class, and only the last op joins boxes (1, 4, cells) and scores (1, 1, cells) into
    (1, 5, cells).
    """
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(raw_path))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    last = producer[g.output[0].name]
    while last.op_type != "Concat":  # the Transpose after the levels' Concat
        last = producer[last.input[0]]
    levels = [producer[producer[r].input[0]] for r in last.input]  # Reshape <- each level's Concat
    assert all(c.op_type == "Concat" and len(c.input) == 3 for c in levels)
    grid, stride = [], []
    for s in strides:
        n = math.ceil(size / s)
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grid.append(np.stack([xv.ravel(), yv.ravel()]))
        stride.append(np.full((1, n * n), s))
    consts = {"b_grid": np.concatenate(grid, 1)[None].astype(np.float32),
              "b_stride": np.concatenate(stride, 1)[None].astype(np.float32)}
    for k, level in enumerate(levels):
        n = math.ceil(size / strides[k])
        consts[f"b_shape4_{k}"] = np.array([1, 4, n * n], np.int64)
        consts[f"b_shape1_{k}"] = np.array([1, 1, n * n], np.int64)
    consts.update({"b_s0": np.array([0], np.int64), "b_s2": np.array([2], np.int64),
                   "b_s4": np.array([4], np.int64), "b_axis": np.array([1], np.int64)})
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(value, name))
    nodes = []
    for k, level in enumerate(levels):
        reg, obj, cls = level.input
        nodes += [helper.make_node("Reshape", [reg, f"b_shape4_{k}"], [f"b_reg{k}"]),
                  helper.make_node("Reshape", [obj, f"b_shape1_{k}"], [f"b_obj{k}"]),
                  helper.make_node("Reshape", [cls, f"b_shape1_{k}"], [f"b_cls{k}"])]
    for part in ("reg", "obj", "cls"):
        nodes.append(helper.make_node("Concat", [f"b_{part}{k}" for k in range(len(levels))], [f"b_{part}"], axis=2))
    nodes += [
        helper.make_node("Slice", ["b_reg", "b_s0", "b_s2", "b_axis"], ["b_xy"]),
        helper.make_node("Slice", ["b_reg", "b_s2", "b_s4", "b_axis"], ["b_wh"]),
        helper.make_node("Add", ["b_xy", "b_grid"], ["b_xy_g"]),
        helper.make_node("Mul", ["b_xy_g", "b_stride"], ["b_centre"]),
        helper.make_node("Exp", ["b_wh"], ["b_wh_e"]),
        helper.make_node("Mul", ["b_wh_e", "b_stride"], ["b_size"]),
        helper.make_node("Concat", ["b_centre", "b_size"], ["b_boxes"], axis=1),
        helper.make_node("Mul", ["b_obj", "b_cls"], ["b_score"]),
        helper.make_node("Concat", ["b_boxes", "b_score"], ["output0"], axis=1, name="head_concat"),
    ]
    g.node.extend(nodes)
    needed, kept = {"output0"}, []
    for node in reversed(list(g.node)):  # YOLOX's own joins are gone
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(kept))
    weights = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(weights)
    return _with_output0(model, out_path)


def _with_output0(model, out_path):
    """The head's one output, (1, 4 + 1, cells), checked and saved."""
    import onnx
    from onnx import helper
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 5, 3549]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def as_keras(path):
    """A float ONNX graph (ddddocr's YOLOX and its YOLOv8-style head) rebuilt as a Keras 3 functional model,
    channels-last, its weights the graph's: a real pretrained network as a Keras source. Only the ops that
    graph uses; 4-D maps are NHWC, and a Reshape of one flattens it in NCHW order as the graph does."""
    import keras
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    (n, c, h, w) = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    x = keras.Input((h, w, c), name=g.input[0].name)
    env = {g.input[0].name: x}
    nhwc = {1: 3, 2: 1, 3: 2}  # an NCHW axis of a 4-D map -> its NHWC axis
    L = keras.layers
    for node in g.node:
        a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        ins = [env.get(i) for i in node.input]
        op = node.op_type
        if op == "Conv":
            k = consts[node.input[1]]
            pad, stride = a["pads"][0], a["strides"][0]
            t = ins[0]
            if pad and stride > 1:
                t = L.ZeroPadding2D(pad)(t)
            conv = L.Conv2D(k.shape[0], k.shape[2:], stride, "same" if pad and stride == 1 else "valid",
                            use_bias=len(node.input) > 2)
            y = conv(t)
            conv.set_weights([k.transpose(2, 3, 1, 0)] + ([consts[node.input[2]]] if len(node.input) > 2 else []))
        elif op == "Sigmoid":
            y = L.Activation("sigmoid")(ins[0])
        elif op == "Exp":
            y = keras.ops.exp(ins[0])
        elif op in ("Mul", "Add"):
            parts = [t if t is not None else consts[name] for t, name in zip(ins, node.input)]
            y = keras.ops.multiply(*parts) if op == "Mul" else keras.ops.add(*parts)
        elif op == "Concat":
            axis = a["axis"]
            y = keras.ops.concatenate(ins, nhwc[axis] if len(ins[0].shape) == 4 else axis)
        elif op == "Slice":
            starts, ends, axes = (consts[i].tolist() for i in node.input[1:4])
            steps = consts[node.input[4]].tolist() if len(node.input) > 4 else [1] * len(starts)
            index = [slice(None)] * len(ins[0].shape)
            for s, e, ax, st in zip(starts, ends, axes, steps):
                index[nhwc[ax] if len(ins[0].shape) == 4 else ax] = slice(s, min(e, 1 << 30), st)
            y = ins[0][tuple(index)]
        elif op == "MaxPool":
            y = L.MaxPooling2D(a["kernel_shape"], 1, "same")(ins[0])
        elif op == "Resize":
            y = L.UpSampling2D(2)(ins[0])
        elif op == "Reshape":
            shape = [int(d) for d in consts[node.input[1]]]
            t = keras.ops.transpose(ins[0], (0, 3, 1, 2)) if len(ins[0].shape) == 4 else ins[0]
            y = L.Reshape(shape[1:])(t)
        elif op == "Transpose":
            y = keras.ops.transpose(ins[0], a["perm"])
        else:
            raise AssertionError(op)
        env[node.output[0]] = y
    return keras.Model(x, [env[o.name] for o in g.output])
