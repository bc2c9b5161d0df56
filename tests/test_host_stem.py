"""Where a network's stem is cut off for the host, and how a stemmed artifact runs as its source (quick: small
graphs built here; the real YOLOv8n on the Edge TPU is in test_convert_onnx_tflite.py)."""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgesdk.conversion.host_stem import cut


def _chain(tmp_path, layers=8, skip_from_input=False):
    """x -> (Conv -> SiLU) x layers -> y: the stem is its first two convolutions and their activations."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for k in range(layers):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (4, 4 if k else 3, 3, 3)).astype(np.float32),
                                             f"w{k}"))
        nodes += [helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{k}"], [f"s{k}"], name=f"sig{k}"),
                  helper.make_node("Mul", [f"c{k}", f"s{k}"], [f"a{k}"], name=f"silu{k}")]
        prev = f"a{k}"
    if skip_from_input:  # a later layer reads the image itself
        inits.append(numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "wskip"))
        nodes += [helper.make_node("Conv", ["x", "wskip"], ["skip"], name="skip"),
                  helper.make_node("Add", [prev, "skip"], ["y"], name="join")]
    else:
        nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "chain.onnx"
    onnx.save(model, str(path))
    return path


def test_the_stem_is_cut_after_its_first_layers_and_the_parts_compose_to_the_whole(tmp_path):
    import onnxruntime as ort
    path = _chain(tmp_path)
    stem = cut(path)
    assert stem.inputs == ("x",) and stem.outputs == ("a1",)
    assert "the first 2 of 8 weight layers" in stem.label
    x = np.random.default_rng(1).random((1, 3, 8, 8), np.float32)
    whole = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    maps = ort.InferenceSession(str(stem.graph)).run(None, {"x": x})[0]
    rest = ort.InferenceSession(str(stem.rest)).run(None, {"a1": maps})[0]
    assert maps.shape == (1, 4, 8, 8) and np.array_equal(rest, whole)
    # nothing to cut where a later layer reads the input itself, or the network is too small to have a stem
    assert cut(_chain(tmp_path, skip_from_input=True)) is None
    assert cut(_chain(tmp_path, layers=4)) is None


def test_a_stemmed_artifact_runs_as_its_source_through_load(tmp_path):
    """edgesdk.load runs the stem's graph, then the artifact, from what the source took; a missing stem file
    is said, not a traceback."""
    import edgesdk
    from edgesdk.errors import ModelLoadError
    path = _chain(tmp_path)
    stem = cut(path)
    art = tmp_path / "chain.rpi4.onnx"
    (tmp_path / "chain.rpi4.stem.onnx").write_bytes(stem.graph.read_bytes())
    art.write_bytes(stem.rest.read_bytes())
    interface = {"inputs": [{"name": "a1", "artifact_name": "a1", "shape": [1, 4, 8, 8], "dtype": "float32"}],
                 "outputs": [{"name": "y", "artifact_name": "y"}],
                 "stem": {"file": "chain.rpi4.stem.onnx", "inputs": ["x"], "outputs": ["a1"]}}
    (tmp_path / "chain.rpi4.onnx.json").write_text(json.dumps({"interface": interface}))
    import onnxruntime as ort
    x = np.random.default_rng(2).random((3, 3, 8, 8), np.float32)
    whole = np.concatenate([ort.InferenceSession(str(path)).run(None, {"x": x[i:i + 1]})[0] for i in range(3)])
    loaded = edgesdk.load(art)
    assert loaded.inputs == ["x"] and loaded.outputs == ["y"]
    assert np.allclose(loaded.run(x)["y"], whole, atol=1e-5)
    assert np.allclose(loaded.run({"x": x})["y"], whole, atol=1e-5)
    (tmp_path / "chain.rpi4.stem.onnx").unlink()
    with np.testing.assert_raises_regex(ModelLoadError, "chain.rpi4.stem.onnx' is not beside it"):
        edgesdk.load(art)
