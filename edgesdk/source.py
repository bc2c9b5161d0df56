"""The source model, whatever framework it came from: what the pipeline needs to know of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ModelLoadError, OptionError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pt2", ".pth", ".ts")
ARTIFACT_SUFFIXES = (".tflite",)


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
    keepalive: Any = None          # whatever must live as long as the source (temp dirs)
    # what the quantizer had to work around on this model, so a re-quantization starts from it
    quantizer_quirks: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)  # routes' intermediate forms (a float graph), made once
    weight_rounding: dict | None = None  # what the last int8 conversion's weight rounding corrected
    example_input: Any = None      # PyTorch: the args the model is exported with
    input_dtype: str = "float32"   # integer inputs (token ids, byte values) stay integer end to end

    def predict(self, x):
        """Outputs of the model as it is now (pruning may have replaced it)."""
        return self.run(self.model, x)

    def describe(self) -> dict:
        return {"framework": self.framework, "flavor": self.flavor, "name": self.name,
                "path": self.path, "sha256": self.sha256, "input_name": self.input_name,
                "input_shape": list(self.input_shape), "input_dtype": self.input_dtype, "outputs": list(self.output_names),
                "param_count": self.param_count, "layout": self.layout}


def _is_keras_object(obj) -> bool:
    mods = [c.__module__ for c in type(obj).__mro__]
    return any(m.startswith(("keras", "tf_keras")) for m in mods)


def parse_shape(value) -> tuple:
    """--input-shape as (input name or None, dims or None): '1,3,224,224', 'images:1,3,224,224' (the form
    bench and deploy take), a sequence, or {name: sequence}."""
    if value is None:
        return None, None
    if isinstance(value, dict):
        if len(value) != 1:
            raise OptionError(f"--input-shape names {len(value)} inputs; multi-input models are not supported "
                              f"yet, so give the one input's shape.")
        (name, dims), = value.items()
        return str(name), parse_shape(dims)[1]
    if isinstance(value, (list, tuple)):
        return None, [int(v) for v in value]
    text = str(value).strip()
    if ";" in text:
        raise OptionError(f"--input-shape {text!r} names several inputs; multi-input models are not supported "
                          f"yet, so give the one input's shape.")
    name, _, dims = text.rpartition(":")
    try:
        shape = [int(v) for v in dims.split(",")]
    except ValueError:
        raise OptionError(f"--input-shape takes comma-separated integers, optionally after the input's name: "
                          f"1,3,224,224 or images:1,3,224,224; got {value!r}.") from None
    if any(d < 1 for d in shape):
        raise OptionError(f"--input-shape {value!r}: every dimension must be at least 1.")
    return name or None, shape


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
                model_factory=None) -> SourceModel:
    """A path or a live model -> SourceModel. Frameworks are imported here, lazily.

    input_shape: "1,3,224,224", "images:1,3,224,224", a sequence or {name: sequence} (parse_shape).
    """
    named, input_shape = parse_shape(input_shape)
    source = _load(model, unsafe, input_shape, example_input, model_factory)
    if named is not None and named != source.input_name:
        raise ModelLoadError(f"--input-shape names the input '{named}', but the model's input is "
                             f"'{source.input_name}'. Use --input-shape {source.input_name}:"
                             f"{','.join(map(str, input_shape))} (or drop the name).")
    return source


def _load(model, unsafe, input_shape, example_input, model_factory) -> SourceModel:
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
            return onnx_model.load_path(path, input_shape=input_shape)
        if framework == "torch":
            from edgesdk.converters import torch_model
            return torch_model.load_path(path, input_shape=input_shape, model_factory=model_factory,
                                         unsafe=unsafe)
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
