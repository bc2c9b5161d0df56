"""A cached artifact is served only when nothing that determines it changed: one change per input kind."""

import json
import textwrap

import numpy as np

from conftest import run_cli


def _convert(model, tmp_path, *extra, env=None):
    x = tmp_path / "x.npy"
    if not x.exists():
        np.save(x, np.random.default_rng(0).random((64, 8), np.float32))
    r = run_cli("convert", model, "-t", "rpi4", "--format", "onnx", "--quantization", "float", "-c", x,
                "-o", tmp_path / "out", "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_onnx_external_data_changed_is_converted_again(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.bin",
              size_threshold=0)
    first = _convert(path, tmp_path)
    assert not first["cached"] and _convert(path, tmp_path)["cached"]  # the same again: served from cache
    data = bytearray((tmp_path / "m.bin").read_bytes())
    data[:4] = np.float32(7.0).tobytes()  # one weight changed, the .onnx not
    (tmp_path / "m.bin").write_bytes(bytes(data))
    again = _convert(path, tmp_path)
    assert not again["cached"]


def test_model_factory_code_changed_is_converted_again(tmp_path):
    import torch
    code = textwrap.dedent("""
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(8, 4)

            def forward(self, x):
                return {body}

        def make():
            return Net()
    """)
    (tmp_path / "factory_mod.py").write_text(code.format(body="self.fc(x)"))
    torch.save(torch.nn.Linear(8, 4).state_dict(), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    torch.save({f"fc.{k}": v for k, v in state.items()}, tmp_path / "w.pt")
    env = {"PYTHONPATH": str(tmp_path)}
    args = ("--model-factory", "factory_mod:make", "--input-shape", "1,8")
    assert not _convert(tmp_path / "w.pt", tmp_path, *args, env=env)["cached"]
    assert _convert(tmp_path / "w.pt", tmp_path, *args, env=env)["cached"]
    (tmp_path / "factory_mod.py").write_text(code.format(body="torch.relu(self.fc(x))"))
    assert not _convert(tmp_path / "w.pt", tmp_path, *args, env=env)["cached"]
