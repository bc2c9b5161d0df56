"""The diagnosis's front-end candidate on a small graph built here (quick)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgesdk.conversion.mixed_precision import front_end


def test_front_end_is_the_first_layer_its_feed_and_what_follows_up_to_the_next_layers(tmp_path):
    """input -> Pad -> Conv -> Pow -> Sqrt -> Conv -> Relu, with a skip from the Sqrt joining after the
    second Conv: the spectrum-like front end is taken, the join with the later branch is not."""
    w = lambda name, c: numpy_helper.from_array(np.ones((c, c, 1, 1), np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad"),
             helper.make_node("Conv", ["padded", "w1"], ["c1"], name="conv1"),
             helper.make_node("Pow", ["c1", "two"], ["p"], name="power"),
             helper.make_node("Sqrt", ["p"], ["mag"], name="magnitude"),
             helper.make_node("Conv", ["mag", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "mag"], ["y"], name="skip_add")]
    inits = [w("w1", 2), w("w2", 2), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.zeros(8, np.int64), "pads")]
    graph = helper.make_graph(nodes, "front", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    path = tmp_path / "front.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert front_end(path, "onnx").nodes == ("pad", "conv1", "power", "magnitude")


def test_the_region_only_a_detectors_output_depends_on_is_its_head():
    """Ultralytics' YOLOv8n export (NudeNet 320n): grown back from its one output, the region holds the DFL
    (softmax and 1x1 conv), the decode and every branch's convs (cv2.* boxes, cv3.* classes), and no layer of
    the backbone, found from the graph's structure alone."""
    from edgesdk import fixtures
    from edgesdk.conversion.mixed_precision import output_regions
    onnx_path = fixtures.fetch("yolov8n_faces")
    (region,) = output_regions(onnx_path, "onnx", {0})
    model = onnx.load(str(onnx_path)).graph
    op = {n.name: n.op_type for n in model.node}
    head = [n for n in region.nodes if n.startswith("/model.22/")]
    assert {"/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Concat_25",
            "/model.22/Sigmoid"} <= set(head)
    for branch in ("cv2.0", "cv2.1", "cv2.2", "cv3.0", "cv3.1", "cv3.2"):  # each branch's last conv at least
        assert f"/model.22/{branch}/{branch}.2/Conv" in head, branch
    convs = [n for n in region.nodes if op[n] == "Conv"]
    backbone = [n for n in convs if int(n.split("/")[1].split(".")[1]) < 15]  # model.0..14: backbone and neck
    assert not backbone and 19 <= len(convs) <= sum(op[n] == "Conv" for n in op) / 3 + 1, convs


def test_the_stem_is_the_first_tenth_of_the_weight_layers_and_what_lies_between():
    """Ultralytics' YOLOv8n export: 64 convolutions, so the stem is the first 6 and the SiLUs, the C2f's split,
    bottleneck add and concat between them, in graph order, and nothing after the 7th convolution."""
    from edgesdk import fixtures
    from edgesdk.conversion.mixed_precision import stem
    onnx_path = fixtures.fetch("yolov8n_faces")
    graph = onnx.load(str(onnx_path)).graph
    order = [n.name for n in graph.node]
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    first = stem(onnx_path, "onnx")
    assert [n for n in first.nodes if n in convs] == convs[:6]
    assert set(first.nodes) == set(order[:order.index(convs[6])]) - {n.name for n in graph.node if n.op_type in
                                                                      ("QuantizeLinear", "DequantizeLinear")}
    assert {"/model.2/Split", "/model.2/m.0/Add", "/model.2/Concat"} <= set(first.nodes)
    assert first.label == "the stem: the first 6 of 64 weight layers and the 15 ops between them"
