"""The source model, whatever framework it came from: what the pipeline needs to know of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgesdk.errors import ModelLoadError, OptionError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pt2", ".pth", ".ts")
ARTIFACT_SUFFIXES = (".tflite",)


@dataclass(frozen=True)
class InputSpec:
    """One model input. Data arrives sample-first; `batch_axis` says where samples stack in the model's own
    tensor (0 for most inputs, 1 for a recurrent state shaped (layers, batch, units), None for an input that
    takes one value for the whole batch, such as a scalar sample rate)."""

    name: str
    shape: tuple                   # the model's shape; None where any size is accepted
    dtype: str = "float32"
    layout: str | None = None      # "NHWC" / "NCHW" for image inputs
    batch_axis: int | None = 0

    @property
    def sample_shape(self) -> tuple:
        """One sample's shape: the model's shape without the batch axis."""
        if self.batch_axis is None:
            return tuple(self.shape)
        return tuple(d for i, d in enumerate(self.shape) if i != self.batch_axis)

    @property
    def integer(self) -> bool:
        import numpy as np
        return bool(np.issubdtype(np.dtype(self.dtype), np.integer))


@dataclass
class SourceModel:
    framework: str                 # route key: "keras"
    flavor: str                    # "keras3", "tf-keras" or "saved_model"
    model: Any                     # the live framework object
    name: str
    sha256: str
    input_name: str
    input_shape: tuple             # batch first; None where any size is accepted
    output_names: list
    run: Callable                  # (model, np.ndarray batch) -> list of np.ndarray, one per output
    path: str | None = None
    param_count: int = 0
    notes: list = field(default_factory=list)
    layout: str | None = None      # "NHWC" / "NCHW" for image models
    float_onnx: str | None = None  # ONNX sources: the shape-fixed float model on disk
    simplified: bool = False       # ... with its constants folded and shape arithmetic gone (onnx_simplify)
    keepalive: Any = None          # whatever must live as long as the source (temp dirs)
    # what the quantizer had to work around on this model, so a re-quantization starts from it
    quantizer_quirks: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)  # routes' intermediate forms (a float graph), made once
    weight_rounding: dict | None = None  # what the last int8 conversion's weight rounding corrected
    example_input: Any = None      # PyTorch: the args the model is exported with
    input_dtype: str = "float32"   # integer inputs (token ids, byte values) stay integer end to end
    # Several inputs: every input's spec (input_name/shape/dtype/layout above then describe the first).
    specs: list = field(default_factory=list)
    fixed: dict = field(default_factory=dict)     # --input-value: input name -> the one value it always takes
    stateful: dict = field(default_factory=dict)  # --stateful: state input name -> the output that feeds it
    output_axes: dict = field(default_factory=dict)  # output name -> its batch axis, where that is not 0
    # the image a detector's boxes are in, where the model's input is not that image (the rest of a network
    # after its stem, which the host runs: conversion.host_stem)
    image_hw: tuple | None = None

    @property
    def inputs(self) -> list:
        return list(self.specs) or [InputSpec(self.input_name, tuple(self.input_shape), self.input_dtype,
                                              self.layout)]

    @property
    def data_inputs(self) -> list:
        """The inputs the user's data gives: not a fixed value, not a recurrent state."""
        return [s for s in self.inputs if s.name not in self.fixed and s.name not in self.stateful]

    @property
    def multi_input(self) -> bool:
        return len(self.inputs) > 1

    def predict(self, x):
        """Outputs of the model as it is now (pruning may have replaced it)."""
        return self.run(self.model, x)

    def describe(self) -> dict:
        d = {"framework": self.framework, "flavor": self.flavor, "name": self.name,
             "path": self.path, "sha256": self.sha256, "input_name": self.input_name,
             "input_shape": list(self.input_shape), "input_dtype": self.input_dtype,
             "outputs": list(self.output_names), "param_count": self.param_count, "layout": self.layout}
        if self.multi_input:
            d["inputs"] = [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "layout": s.layout,
                            "batch_axis": s.batch_axis,
                            **({"value": self.fixed[s.name].tolist()} if s.name in self.fixed else {}),
                            **({"state_from": self.stateful[s.name]} if s.name in self.stateful else {})}
                           for s in self.inputs]
        return d


def _is_keras_object(obj) -> bool:
    mods = [c.__module__ for c in type(obj).__mro__]
    return any(m.startswith(("keras", "tf_keras")) for m in mods)


def parse_shapes(value) -> dict:
    """--input-shape as {input name or None: dims}: '1,3,224,224', 'images:1,3,224,224', several named ones
    ('input:1,512;state:2,1,128' or a list of such strings, the form bench and deploy take), a sequence
    of ints, or {name: sequence}."""
    if value is None or value == () or value == []:
        return {}
    if isinstance(value, dict):
        return {str(k): _dims(v, f"{k}:{v}") for k, v in value.items()}
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int,)) or str(v).strip().lstrip("-").isdigit()
                                                for v in value):
        return {None: _dims(value, value)}
    parts = [p for v in ([value] if isinstance(value, str) else value) for p in str(v).split(";") if p.strip()]
    shapes = {}
    for part in parts:
        name, _, dims = part.strip().rpartition(":")
        if (name or None) in shapes or (len(parts) > 1 and not name):
            raise OptionError(f"--input-shape {value!r}: with several inputs, name each one once "
                              f"(input:1,512;state:2,1,128).")
        shapes[name or None] = _dims(dims.split(","), value)
    return shapes


def _dims(values, shown) -> list:
    try:
        shape = [int(str(v).strip()) for v in (values.split(",") if isinstance(values, str) else values)]
    except ValueError:
        raise OptionError(f"--input-shape takes comma-separated integers, optionally after the input's name: "
                          f"1,3,224,224 or images:1,3,224,224; got {shown!r}.") from None
    if any(d < 1 for d in shape):
        raise OptionError(f"--input-shape {shown!r}: every dimension must be at least 1.")
    return shape


def parse_pairs(value, option: str, example: str) -> dict:
    """'a=b,c=d', a list of such strings, or a dict -> {a: b, c: d} (strings)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    out = {}
    for item in ([value] if isinstance(value, str) else value):
        for pair in str(item).split(","):
            key, sep, val = pair.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise OptionError(f"{option} takes NAME=VALUE pairs, e.g. {example}; got {item!r}.")
            out[key.strip()] = val.strip()
    return out


def _is_torch_module(obj) -> bool:
    return any(c.__module__.startswith("torch.") for c in type(obj).__mro__)


def framework_of(model, model_factory=None) -> str | None:
    """Which framework a model (path or object) belongs to, without loading it; None if unknown."""
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        suffix = path.suffix.lower()
        if (path.is_dir() and (path / "saved_model.pb").is_file()) or suffix in KERAS_SUFFIXES:
            return "keras"
        if suffix == ".onnx":
            return "onnx"
        if suffix in TORCH_SUFFIXES or model_factory:
            return "torch"
        return None
    if _is_keras_object(model):
        return "keras"
    if _is_torch_module(model):
        return "torch"
    return None


def load_source(model, *, unsafe: bool = False, input_shape=None, example_input=None,
                model_factory=None, input_values=None, stateful=None, data_shapes=None) -> SourceModel:
    """A path or a live model -> SourceModel. Frameworks are imported here, lazily.

    input_shape: "1,3,224,224", "images:1,3,224,224", several named ones, or {name: sequence} (parse_shapes).
    input_values: {input: value} or "sr=16000": inputs that always take one value (a sample rate).
    stateful: {state input: output} or "state=stateN": recurrent state fed back step by step; "auto" pairs
    inputs and outputs whose names and shapes match (state/stateN, h/hn).
    data_shapes: {input name or None: one sample's shape} of the data (data.sample_shapes): an ONNX model's
    dynamic sizes that --input-shape does not give are taken from it.
    """
    shapes = parse_shapes(input_shape)
    source = _load(model, unsafe, shapes, example_input, model_factory, data_shapes or {})
    names = [s.name for s in source.inputs]
    unknown = [n for n in shapes if n is not None and n not in names]
    if unknown or (None in shapes and len(names) > 1):
        given = list(shapes.values())[0] if len(shapes) == 1 and len(names) == 1 else None
        wanted = ";".join(f"{s.name}:{','.join(str(d or 1) for d in (given or s.shape))}" for s in source.inputs)
        theirs = f"input is '{names[0]}'" if len(names) == 1 else f"inputs are {', '.join(names)}"
        what = (f"names the input '{unknown[0]}', but the model's {theirs}" if unknown else
                f"gives one unnamed shape, but the model has {len(names)} inputs ({', '.join(names)})")
        raise ModelLoadError(f"--input-shape {what}. Use --input-shape {wanted} (with the sizes you build for).")
    from .inputs import attach_fixed, attach_stateful
    attach_fixed(source, input_values)
    if source.framework == "onnx":  # control flow and shape arithmetic the fixed sizes decide, settled up front
        from edgesdk.converters.onnx_model import resolve_control_flow, simplify_graph
        resolve_control_flow(source)
        simplify_graph(source)
    attach_stateful(source, stateful)
    return source


def _load(model, unsafe, input_shape, example_input, model_factory, data_shapes) -> SourceModel:
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelLoadError(f"Model '{model}' does not exist. Check the path.")
        if path.is_dir() and not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"'{model}' is a directory but not a SavedModel (no saved_model.pb inside). "
                                 f"Give a .keras, .h5 or SavedModel directory.")
        framework = framework_of(path, model_factory)
        if framework == "keras":
            from edgesdk.converters import keras_model
            return keras_model.load_path(path, unsafe=unsafe)
        if framework == "onnx":
            from edgesdk.converters import onnx_model
            return onnx_model.load_path(path, input_shape=input_shape, data_shapes=data_shapes)
        if framework == "torch":
            from edgesdk.converters import torch_model
            shapes = list(input_shape.values())
            return torch_model.load_path(path, input_shape=shapes[0] if len(shapes) == 1 else None,
                                         model_factory=model_factory, unsafe=unsafe)
        if path.suffix.lower() in ARTIFACT_SUFFIXES:
            raise ModelLoadError(f"'{model}' is already a converted artifact, not a source model. Use it as it is "
                                 f"(`edgesdk inspect`, `edgesdk bench`, `edgesdk deploy`), or convert from the "
                                 f"float original (.keras, .h5, SavedModel, .onnx or PyTorch).")
        raise ModelLoadError(f"'{model}': unknown model type '{path.suffix or 'no suffix'}'. Give a .keras, "
                             f".h5, SavedModel directory, .onnx, or a PyTorch .pt2/.pt/.pth file.")
    if _is_keras_object(model):
        from edgesdk.converters import keras_model
        return keras_model.from_object(model)
    if _is_torch_module(model):
        from edgesdk.converters import torch_model
        return torch_model.from_module(model, example_input=example_input)
    raise ModelLoadError(f"Cannot convert a {type(model).__module__}.{type(model).__name__}: give a Keras "
                         f"model or a torch.nn.Module, or a path to a model file.")
