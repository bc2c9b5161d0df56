"""Where a detector's graph is cut for the host (quick: small graphs built here; the real detectors'
conversions are in test_convert_onnx_tflite.py)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgesdk.conversion.host_tail import find, match_cut_points, split


def _head(tmp_path, shape_from_graph=False, decode_reused=False):
    """image -> Conv -> boxes (x stride, exp), Conv -> Sigmoid -> scores; one Concat of both."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w_box")
    ws = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w_cls")
    stride = numpy_helper.from_array(np.array(8.0, np.float32), "stride")
    shape = numpy_helper.from_array(np.array([1, 6, 16], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w_box"], ["box_raw"]),
             helper.make_node("Conv", ["x", "w_cls"], ["cls_raw"]),
             helper.make_node("Sigmoid", ["cls_raw"], ["cls"]),
             helper.make_node("Exp", ["box_raw"], ["box_e"]),
             helper.make_node("Mul", ["box_e", "stride"], ["box"]),
             helper.make_node("Concat", ["box", "cls"], ["merged"], axis=1)]
    if shape_from_graph:  # an older export: the target shape computed at run time
        nodes += [helper.make_node("Shape", ["x"], ["x_shape"]),
                  helper.make_node("Gather", ["x_shape", "zero"], ["n"], axis=0),
                  helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
                  helper.make_node("Concat", ["n1", "rest"], ["dyn_shape"], axis=0),
                  helper.make_node("Reshape", ["merged", "dyn_shape"], ["out"])]
    else:
        nodes.append(helper.make_node("Reshape", ["merged", "shape"], ["out"]))
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 16])]
    if decode_reused:  # the network's other output needs part of the decode too
        nodes.append(helper.make_node("Sigmoid", ["box_e"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 4, 4, 4]))
    inits = [w, ws, stride, shape, numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             numpy_helper.from_array(np.array([6, 16], np.int64), "rest")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "head.onnx"
    onnx.save(model, str(path))
    return path


def test_cut_before_the_decode_and_the_join(tmp_path):
    import onnxruntime as ort
    path = _head(tmp_path)
    tail = find(path, {"out"})
    # the activation stays in the artifact (its int8 form is exact enough); the decode and joins do not
    assert tail.inputs == ("box_raw", "cls") and tail.ops == ("Concat", "Exp", "Mul", "Reshape")
    names = split(path, tail, tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert names == ["box_raw", "cls"]
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)
    whole = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    parts = dict(zip(names, ort.InferenceSession(str(tmp_path / "a.onnx")).run(None, {"x": x})))
    finished = ort.InferenceSession(str(tmp_path / "b.onnx")).run(None, parts)[0]
    assert np.array_equal(finished, whole)


def test_what_the_network_still_needs_or_computes_at_run_time_is_not_cut(tmp_path):
    shared = find(_head(tmp_path, decode_reused=True), {"out"})
    assert shared.inputs == ("box_e", "cls") and "Exp" not in shared.ops  # the Exp stays: the network needs it
    # a shape computed from the input at run time would make the artifact output an int64 tensor
    assert find(_head(tmp_path, shape_from_graph=True), {"out"}) is None
    assert find(_head(tmp_path, decode_reused=True), {"other", "nothing"}) is None  # no Concat behind it


def test_framework_tensors_found_by_the_values_of_the_cut_points():
    """A Keras or PyTorch model is stopped at the tensors whose values are the ONNX cut points': the first
    with the shape and values (within 1e-3 of the range), a channels-last map for a channels-first point."""
    rng = np.random.default_rng(0)
    boxes, scores = rng.normal(size=(1, 4, 5, 5)).astype(np.float32), rng.random((1, 1, 5, 5), np.float32)
    values = [boxes + 0.1,                               # same shape, other values
              scores.transpose(0, 2, 3, 1) + 1e-5,       # channels-last, within the tolerance
              boxes, boxes.copy()]                       # the first of two equal ones
    assert match_cut_points(values, [boxes, scores]) == [2, 1]
    with np.testing.assert_raises_regex(ValueError, r"cut point 1 \(1, 1, 5, 5\)"):
        match_cut_points(values, [boxes, scores + 0.01])
