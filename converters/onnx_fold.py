"""Resolve an ONNX graph's If nodes that fixed sizes and fixed inputs decide.

Exporters wrap a network in If nodes that test a shape (`Gather(Shape(x)) == 2`) or a sample rate. Once
the input sizes are fixed (--input-shape) and such an input takes one value (--input-value sr=16000),
the branch is known: it is inlined, and the If is gone. TFLite converters (onnx2tf), quantizers (ONNX
Runtime's does not enter branches) and accelerators then see plain ops. An If whose condition depends on
the data itself is left alone.
"""

from __future__ import annotations

import numpy as np

# ops whose output is known once sizes and constants are: a condition built only from these is static
STATIC_OPS = {"Constant", "Shape", "Size", "Gather", "Equal", "Greater", "Less", "GreaterOrEqual",
              "LessOrEqual", "Not", "And", "Or", "Cast", "Squeeze", "Unsqueeze", "Slice", "Concat", "Identity",
              "Reshape", "ReduceProd", "Mul", "Add", "Sub", "Div"}


def fold(model, fixed: dict, shapes: dict, max_rounds: int = 8):
    """Inline every If whose condition is static; fixed inputs become constants. `shapes`: every input's
    size as it will be fed. Returns (model, folded)."""
    import onnx
    from onnx import numpy_helper
    graph = model.graph
    for name, value in fixed.items():  # a fixed input is a constant of the graph
        for i, inp in enumerate(graph.input):
            if inp.name == name:
                del graph.input[i]
                graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
                break
    folded = 0
    for _ in range(max_rounds):
        ifs = [n for n in graph.node if n.op_type == "If" and _static(graph, n.input[0])]
        if not ifs:
            break
        values = _evaluate(model, [n.input[0] for n in ifs], shapes)
        for node in ifs:
            _inline(graph, node, bool(np.asarray(values[node.input[0]]).reshape(-1)[0]))
            folded += 1
    if folded:
        onnx.checker.check_model(model)
    return model, folded


def _static(graph, tensor: str) -> bool:
    """Whether `tensor` follows from constants, initializers and shapes alone."""
    producers = {o: n for n in graph.node for o in n.output}
    constants = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input} - constants
    todo, seen = [tensor], set()
    while todo:
        t = todo.pop()
        if t in seen or t in constants or t == "":
            continue
        seen.add(t)
        if t in inputs:
            return False
        node = producers.get(t)
        if node is None or node.op_type not in STATIC_OPS:
            return False
        if node.op_type in ("Shape", "Size"):  # sizes are fixed; the values behind them do not matter
            continue
        todo.extend(node.input)
    return True


def _evaluate(model, tensors: list, shapes: dict) -> dict:
    """The values of static tensors: the graph run once on zeros of the fed sizes with them exposed."""
    import onnx
    import onnxruntime as ort
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # unused initializers of the branches not taken are no news
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {}
    for i in session.get_inputs():
        shape = shapes.get(i.name) or [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        kind = i.type[len("tensor("):-1]
        dtype = {"float": np.float32, "double": np.float64, "bool": np.bool_}.get(kind, getattr(np, kind, np.float32))
        feed[i.name] = np.zeros(shape, dtype)
    return dict(zip(tensors, session.run(tensors, feed)))


def _inline(graph, node, take_then: bool) -> None:
    """The chosen branch's nodes in place of the If; its outputs renamed to the If's."""
    import onnx
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if take_then else "else_branch"))
    at = list(graph.node).index(node)
    body = [n for n in branch.node]
    graph.initializer.extend(branch.initializer)
    renames = [onnx.helper.make_node("Identity", [b.name], [o], name=f"{node.name}_out{k}")
               for k, (b, o) in enumerate(zip(branch.output, node.output))]
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend(kept[:at] + body + renames + kept[at + 1:])
