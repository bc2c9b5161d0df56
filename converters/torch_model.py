"""Load PyTorch sources into a SourceModel.

Accepted: a live torch.nn.Module with an example input (Python API); an
ExportedProgram file (.pt2, from torch.export.save); a TorchScript file; or a
state_dict file plus a factory (`package.module:function`) that builds the
module. State dicts load with torch.load(weights_only=True): a file that
needs code unpickled is refused unless the user opts in.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path

from edgesdk.errors import ConversionError, ModelLoadError
from edgesdk.sources.inputs import Inputs
from edgesdk.sources.source import InputSpec, SourceModel
from edgesdk.util import first_line, sha256_file


def import_torch():
    try:
        import torch
    except ImportError:
        raise ModelLoadError("PyTorch sources need the torch extra: pip install 'edgesdk[torch]'") from None
    return torch


def _zip_names(path: Path) -> list:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _first_line(exc) -> str:
    return first_line(exc)[:300]


@contextlib.contextmanager
def _weights_only(on: bool):
    """Every torch.load inside loads tensors only: torch.export.load reads a .pt2's pickled example inputs and
    constants with weights_only=True and, when that fails, falls back to weights_only=False (running the
    pickle). PyTorch's own switch closes that fallback for the duration."""
    if not on:
        yield
        return
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def _with_factory_code(sha: str, spec: str) -> str:
    """The weights' hash joined with the source file of the factory's module: the cache key then changes
    when the factory's code does, not only when the weights do."""
    import hashlib
    import inspect
    import sys
    module = sys.modules.get(spec.split(":")[0])
    try:
        code = inspect.getsource(module) if module is not None else spec
    except (OSError, TypeError):
        code = spec
    return hashlib.sha256(f"{sha}:{spec}:{hashlib.sha256(code.encode()).hexdigest()}".encode()).hexdigest()


def load_factory(spec: str):
    """`package.module:function` -> the callable."""
    from edgesdk.util import load_callable
    return load_callable(spec, "--model-factory", ModelLoadError)


def load_path(path: Path, *, input_shape=None, model_factory=None, unsafe=False) -> SourceModel:
    torch = import_torch()
    if model_factory:  # a state_dict, zip or legacy format: torch.load reads both
        module = load_factory(model_factory)()
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=not unsafe)
        except Exception as exc:
            hint = (" It holds more than tensors (pickled code); if you trust it, pass --unsafe-load."
                    if "weights_only" in str(exc) or "Unsupported global" in str(exc) else "")
            raise ModelLoadError(f"torch.load could not read '{path}': {_first_line(exc)}.{hint}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelLoadError(f"'{path}' does not hold a state_dict (got {type(state).__name__}).")
        try:
            module.load_state_dict(state, strict=True)
        except Exception as exc:
            raise ModelLoadError(f"The weights in '{path}' do not fit the module from {model_factory}: "
                                 f"{_first_line(exc)}") from None
        source = from_module(module, example_input=_example(torch, input_shape, path), path=path)
        source.sha256 = _with_factory_code(source.sha256, model_factory)  # new factory code: a new model
        return source
    names = _zip_names(path)
    if not names:
        raise ModelLoadError(f"'{path}' is not a PyTorch file (not a zip archive; it may be truncated). Save "
                             f"it with torch.export.save or torch.jit.save, or give --model-factory for a "
                             f"state_dict.")
    if any(n.endswith(("/models/model.json", "/archive_format")) for n in names) or path.suffix == ".pt2":
        try:
            with _weights_only(not unsafe):
                program = torch.export.load(str(path))
        except Exception as exc:
            if not unsafe and ("weights_only" in str(exc) or "Unsupported global" in str(exc)):
                raise ModelLoadError(f"'{path}' holds pickled Python objects beyond tensors (its example inputs "
                                     f"or constants), whose loading runs code: {_first_line(exc)[:200]}. If you "
                                     f"trust this file, pass --unsafe-load (unsafe=True in Python).") from None
            raise ModelLoadError(f"'{path}' is not a loadable ExportedProgram: {_first_line(exc)}") from None
        args = program.example_inputs[0] if program.example_inputs else None
        if not args and input_shape is None:
            raise ModelLoadError(f"'{path}' carries no example inputs; give --input-shape.")
        example = args if args else _example(torch, input_shape, path)
        module = program.module()
        fixed = None if _any_batch(module, example, torch) else int(example[0].shape[0])
        if fixed is None:  # a dynamic batch dimension: the artifact is made for batches of one
            example = tuple(a[:1] for a in example)
        return from_module(module, example_input=example, path=path, flavor="exported-program", fixed_batch=fixed)
    if any("/code/" in n for n in names):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"'{path}' is not a loadable TorchScript file: {_first_line(exc)}") from None
        return from_module(module, example_input=_example(torch, input_shape, path), path=path,
                           flavor="torchscript")
    raise ModelLoadError(f"'{path}' looks like a state_dict (weights only). Say which module to load them "
                         f"into with --model-factory package.module:function.")


def _any_batch(module, example, torch) -> bool:
    """Whether an ExportedProgram's module takes batches of any size (exported with a dynamic batch dimension),
    not only its example's."""
    try:
        with torch.no_grad():
            for n in (1, 3):
                module(*[torch.cat([a[:1]] * n) for a in example])
        return True
    except Exception:  # a guard on the batch size the program was exported with
        return False


def set_mode(module, training: bool) -> None:
    """train()/eval(), where the module allows it (an ExportedProgram's module does not)."""
    try:
        module.train(training)
    except (NotImplementedError, AttributeError):
        pass


def _example(torch, input_shape, path):
    if input_shape is None:
        raise ModelLoadError(f"'{path}': give the input shape to export with, e.g. --input-shape 1,3,224,224.")
    return (torch.zeros(*[int(d) for d in input_shape]),)


def from_module(module, example_input=None, path=None, flavor="module", fixed_batch: int | None = None) -> SourceModel:
    """fixed_batch: the one batch size the module runs (an ExportedProgram exported without a dynamic batch)."""
    torch = import_torch()
    import numpy as np
    if example_input is None:
        raise ModelLoadError("A PyTorch model needs an example input to export with: "
                             "edgesdk.convert(module, example_input=torch.zeros(1, 3, 224, 224), ...).")
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ModelLoadError("The example input must be a tensor, or a tuple of tensors (one per forward() "
                             "argument).")
    set_mode(module, training=False)
    try:
        with torch.no_grad():
            out = module(*args)
    except Exception as exc:
        raise ModelLoadError(f"The model fails on the example input of shape {tuple(args[0].shape)}: "
                             f"{_first_line(exc)}. Give an example input of the shape the model takes.") from None
    names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    specs = [InputSpec(n, (None,) + tuple(a.shape[1:]) if a.dim() else (), str(a.dtype).removeprefix("torch."),
                       "NCHW" if a.dim() == 4 else None, 0 if a.dim() else None) for n, a in zip(names, args)]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise ModelLoadError("The model's outputs must be tensors (or a tuple of tensors).")

    batch_size = fixed_batch or 256

    def run(model, x):
        results = None
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                if fixed_batch and len(x[i:i + batch_size]) < batch_size:
                    raise ModelLoadError(f"This ExportedProgram runs batches of {batch_size} only; give a "
                                         f"multiple of {batch_size} samples or export it with batch 1.")
                if isinstance(x, Inputs):
                    feed = x[i:i + batch_size].feed()
                    y = model(*[torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in specs])
                else:
                    y = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
                y = [t.numpy() for t in (y if isinstance(y, (tuple, list)) else (y,))]
                results = [[t] for t in y] if results is None else [r + [t] for r, t in zip(results, y)]
        return [np.concatenate(r) for r in results]

    shape = tuple(args[0].shape)
    if path is not None:
        sha, name = sha256_file(path), Path(path).stem
    else:
        import hashlib
        h = hashlib.sha256(type(module).__qualname__.encode())
        for k, v in module.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        sha, name = h.hexdigest(), type(module).__name__.lower()
    params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    src = SourceModel(framework="torch", flavor=flavor, model=module, name=name, sha256=sha, input_name="input",
                      input_shape=(None,) + shape[1:], output_names=[f"output_{i}" for i in range(len(outs))],
                      run=run, path=str(path) if path else None, param_count=int(params),
                      layout="NCHW" if len(shape) == 4 else None, input_dtype=specs[0].dtype,
                      specs=specs if len(specs) > 1 else [])
    src.example_input = args
    return src


def cut(module, args, wanted: list):
    """The module made to output, in order, the tensors whose values on `args` are `wanted` (the cut points of
    a detector's head, found in its ONNX export), everything computed only after them dropped.

    The exported graph is run once with every intermediate value kept, and each wanted array is matched to
    the first node with its shape and values. Raises ConversionError when one has no match."""
    from edgesdk.conversion.host_tail import match_cut_points
    torch = import_torch()
    with torch.no_grad():
        gm = torch.export.export(module, tuple(args)).module()
        values = []

        class Capture(torch.fx.Interpreter):
            def run_node(self, node):
                out = super().run_node(node)
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    values.append((node, out.detach().numpy()))
                return out
        Capture(gm).run(*args)
    try:
        found = [values[i][0] for i in match_cut_points([v for _, v in values], wanted)]
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = (tuple(found),)
    gm.graph._codegen = torch.fx.graph.CodeGen()  # plain positional inputs, a tuple out (no pytree specs)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm
