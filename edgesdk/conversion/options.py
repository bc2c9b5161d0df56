"""ConvertOptions: every choice a user makes about an artifact, typed, grouped and frozen.

    ConvertOptions(quantize=QuantizeOptions(...), training=TrainingOptions(...), gate=Thresholds(...),
                   inputs=InputOptions(...), task=..., metric=..., recover=..., keep_failed=...)

One declaration serves every way in: the Python API (`edgesdk.convert(..., options=)`), the CLI (each field
with a `help` is a flag, made by `edgesdk.cli`), a TOML file (`--config convert.toml`, one table per group),
the manifest (`options`, so a conversion replays from it) and docs/convert-options.md (generated from here,
so it cannot drift). A field left None takes the profile's or the gate's default. The values are checked
where they are used (edgesdk.conversion.recipe.make_recipe, Thresholds.resolved), against the target.
"""

from __future__ import annotations

import json
import numbers
import warnings
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from edgesdk.errors import OptionError
from edgesdk.judge.tasks import TASKS, Thresholds
from edgesdk.profiles import IO_DTYPES, QUANTIZATIONS
from edgesdk.sources.data import Preprocess

# each route says which it has; auto: the route's AUTO_CALIBRATION, the one that measures better kept
CALIBRATION_METHODS = ("auto", "minmax", "mse", "moving-average", "entropy", "percentile")
WEIGHT_ROUNDING = ("auto", "corrected", "nearest")
ACTIVATIONS = ("int8", "int16")


def _option(default, help: str, *, flag: str | None = None, choices: tuple = (), kind=None,
            parse: str | None = None, multiple: bool = False, metavar: str | None = None):
    """A field users set; `help` and the rest make its CLI flag and its line in the docs."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices), "type": kind, "parse": parse,
            "multiple": multiple, "metavar": metavar}
    if isinstance(default, (list, dict, set)):
        raise TypeError("options are frozen: give tuples")
    return field(default=default, metadata=meta)


def _typed(f, value, where: str):
    """A value from a file, of the field's type: a number where a number goes, true/false where a switch
    does; what each value may be beyond that is checked where it is used (make_recipe, Thresholds.resolved)."""
    kind = f.metadata.get("type")
    if value is None:
        return value
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise OptionError(f"{where} is a switch: true or false, got {value!r}.")
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (kind is int and value != int(value)):
            raise OptionError(f"{where} takes {'a whole number' if kind is int else 'a number'}, got {value!r}.")
        return kind(value)
    elif f.metadata.get("choices") and value not in f.metadata["choices"]:
        raise OptionError(f"{where} is one of {', '.join(f.metadata['choices'])}; got {value!r}.")
    return value


class _Checked:
    """Options built in Python are checked as a file's are: a number where a number goes, a switch, one of the
    choices, a group of its own type (or a dict of its fields, made that group); the error names the field."""

    def __post_init__(self):
        for f in fields(self):
            value, where = getattr(self, f.name), f"{type(self).__name__}.{f.name}"
            if is_dataclass(f.default):
                group = type(f.default)
                if isinstance(value, dict):  # inputs={"input_shape": ...}: the group's own fields, checked
                    try:
                        value = group(**value)
                    except TypeError:
                        known = ", ".join(g.name for g in fields(group))
                        raise OptionError(f"{where}: unknown option in {sorted(value)}; {group.__name__} takes "
                                          f"{known}.") from None
                    object.__setattr__(self, f.name, value)
                if not isinstance(value, group):
                    article = "an" if group.__name__[0] in "AEIOU" else "a"
                    raise OptionError(f"{where} takes {article} {group.__name__} (or a dict of its fields), got "
                                      f"{type(value).__name__}.")
            else:
                _typed(f, value, where)


@dataclass(frozen=True)
class QuantizeOptions(_Checked):
    """What the artifact is made of."""

    format: str | None = _option(None, "The artifact's format (tflite, onnx, or one its family adds); default: the "
                                 "profile's, another it takes when the route fails on the graph.")
    quantization: str | None = _option(
        None, "int8 (full integer / QDQ), fp16 (fp16 weights; for GPU delegates and TensorRT) or float; default: "
        "the profile's, a higher one the family computes in when it cannot pass the gate.",
        flag="--quantization/--precision", choices=QUANTIZATIONS)
    input_dtype: str | None = _option(None, "The artifact's input type (int8 profiles: the profile's).",
                                      choices=IO_DTYPES)
    output_dtype: str | None = _option(None, "The artifact's output type (int8 profiles: the profile's).",
                                       choices=IO_DTYPES)
    calibration_samples: int | None = _option(None, "How many calibration samples to use (default: the profile's).",
                                              kind=int)
    calibration_method: str = _option(
        "auto", "Activation range estimation: min/max over the data; mse, each inner tensor's range narrowed to its "
        "least int8 error, and moving-average (TFLite from PyTorch and ONNX); entropy, percentile (ONNX); auto: "
        "min/max, and mse too where the route has it and int8 costs accuracy, the one that measures better kept "
        "(where int8 misses the gate, the recovery ladder measures them as its rungs).",
        choices=CALIBRATION_METHODS)
    weight_rounding: str = _option(
        "auto", "int8 weights: each to its nearest step (the plain quantizers), or each conv kernel's sum kept and "
        "the biases corrected for what rounding shifts (better on photos); auto: both where int8 costs accuracy, "
        "the one that measures better kept (where int8 misses the gate, the corrected one is the recovery "
        "ladder's first rung).", choices=WEIGHT_ROUNDING)
    activations: str = _option(
        "int8", "int8 weights with int16 activations (CPU targets; ONNX, or TFLite's 16x8 with int16 input and "
        "output): more range and precision where int8 activations lose it, at a price in speed.",
        choices=ACTIVATIONS)
    allow_float_fallback: bool = _option(False, "Accept ops left in float (CPU targets only; never the Edge TPU).")
    exclude_nodes: tuple = _option((), "Keep these nodes in float (comma-separated; ONNX node names, TFLite output "
                                   "tensor names as the validation error lists them).", parse="names")
    exclude_op_types: tuple = _option((), "Keep these op types in float (ONNX: Softmax,HardSigmoid; TFLite: "
                                      "SOFTMAX,MUL).", parse="names")


@dataclass(frozen=True)
class TrainingOptions(_Checked):
    """Pruning and the training that goes with it."""

    prune: float = _option(0.0, "Magnitude-prune to this sparsity, e.g. 0.5 (fine-tuned on --fine-tune DATA).",
                           kind=float, metavar="SPARSITY")
    epochs: int = _option(2, "Fine-tuning epochs.", kind=int)
    distill: bool = _option(False, "Fine-tune (pruning, quantization-aware training) with the float model as the "
                            "teacher (its soft targets beside the labels, at temperature 2 for Keras and 4 for PyTorch).")
    qat: bool = _option(False, "Train quantization-aware on --fine-tune DATA before converting (Keras to TFLite, "
                        "PyTorch), rather than only when int8 misses the gate.")
    batch_size: int = _option(32, "Fine-tuning batch size.", kind=int)
    learning_rate: float = _option(1e-3, "Adam learning rate for fine-tuning.", kind=float)


@dataclass(frozen=True)
class InputOptions(_Checked):
    """What the model's inputs are and how raw data becomes them."""

    input_shape: tuple | dict | str | None = _option(
        None, "Input shape to build for: fixes an ONNX source's dynamic dims (default: the calibration data's); the "
        "example input for PyTorch files without one. E.g. 1,3,224,224 or x:1,3,48,192; repeat it per input.",
        multiple=True, metavar="[NAME:]DIMS")
    input_values: tuple | dict | str | None = _option(
        None, "An input that always takes one value (a sample rate: sr=16000); repeatable.", flag="--input-value",
        multiple=True, metavar="NAME=VALUE")
    stateful: str | dict | None = _option(
        None, "Recurrent state: feed output OUT back as input IN step by step (state=stateN); calibration and "
        "validation then run over the data as one sequence. Default: detected from names and shapes; 'none' "
        "judges each sample on its own.", metavar="IN=OUT[,IN=OUT]")
    preprocess: Preprocess = Preprocess()


@dataclass(frozen=True)
class ConvertOptions(_Checked):
    quantize: QuantizeOptions = QuantizeOptions()
    training: TrainingOptions = TrainingOptions()
    gate: Thresholds = Thresholds()
    inputs: InputOptions = InputOptions()
    task: str = _option("auto", "How the gate judges the outputs (auto: recognised from their shapes).",
                        choices=TASKS)
    metric: str | None = _option(None, "Your own metric, MODULE:FUNCTION: function(reference_outputs, "
                                 "artifact_outputs, labels) -> dict with 'passed'.", metavar="MODULE:FUNCTION")
    recover: bool = _option(True, "When int8 misses the gate, try other calibration, int16 activations, keeping the "
                            "measured culprits in float and quantization-aware training (--no-recover: fail at "
                            "once, with a diagnosis).", flag="--no-recover")
    keep_failed: bool = _option(False, "Keep the artifact even when validation fails (still exits non-zero).")

    # --- building ------------------------------------------------------------------------------------------

    def with_values(self, values: dict) -> "ConvertOptions":
        """These options with {path: value} set; a path is a tuple of field names (("gate", "min_iou"))."""
        out = self
        for path, value in values.items():
            out = _set(out, tuple(path), value)
        return out

    @classmethod
    def from_dict(cls, doc: dict, *, where: str = "options") -> "ConvertOptions":
        """From nested tables ({"quantize": {...}, "gate": {...}, "task": ...}), as a TOML file or a manifest's
        `options` holds them; an unknown key is refused by name."""
        return _build(cls, doc, where)

    @classmethod
    def load(cls, path) -> "ConvertOptions":
        """From a .toml file (one table per group) or a manifest .json (its recorded `options`)."""
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise OptionError(f"Cannot read the options file {path}: {exc.strerror or exc}.") from None
        try:
            if path.suffix == ".json":
                doc = json.loads(text)
                if isinstance(doc, dict) and "recipe" in doc:  # a manifest: replay the options it records
                    if "options" not in doc:
                        raise OptionError(f"{path} is a manifest from before manifests recorded their options: "
                                          f"convert once more with this version, or give the options as flags.")
                    doc = doc["options"] or {}
            else:
                import tomllib
                doc = tomllib.loads(text.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise OptionError(f"{path} is not a valid {'JSON' if path.suffix == '.json' else 'TOML'} options file: "
                              f"{exc}.") from None
        if not isinstance(doc, dict):
            raise OptionError(f"{path} holds no table of options.")
        return cls.from_dict(doc, where=str(path))

    def to_dict(self) -> dict:
        """Nested tables of what was set, JSON- and TOML-ready (None values left out)."""
        return _dump(self)


# --- the declared fields, for the CLI and the docs --------------------------------------------------------

def leaves(cls=ConvertOptions, prefix: tuple = ()):
    """(path, dataclass field) for every settable field, groups first in declaration order."""
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        if is_dataclass(default):
            yield from leaves(type(default), prefix + (f.name,))
        else:
            yield prefix + (f.name,), f


def flag_of(path: tuple, f) -> str:
    """The CLI flag of a field: its own, or --the-field-name."""
    return (f.metadata.get("flag") or f"--{path[-1].replace('_', '-')}").split("/")[0]


def default_of(f):
    """What a field left alone means: its value, or for a gate threshold the default it resolves to."""
    if "default" in f.metadata:
        return f.metadata["default"]
    return None if f.default is MISSING else f.default


def parse_flag(f, value):
    """A CLI string as the field takes it: comma lists for names and numbers."""
    how = f.metadata.get("parse")
    if value is None or not isinstance(value, str):
        return value
    if how == "names":
        return tuple(n.strip() for n in value.split(",") if n.strip())
    if how == "floats":
        try:
            return tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise OptionError(f"{flag_of((f.name,), f)} takes comma-separated numbers, e.g. 0.5,0.5,0.5; "
                              f"got {value!r}.") from None
    return value


# --- the old keyword calls ------------------------------------------------------------------------------

# convert(prune=0.5, max_accuracy_drop=2, preprocess=...) as before ConvertOptions: each old keyword's path
LEGACY = {path[-1]: path for path, _ in leaves() if path[:2] != ("inputs", "preprocess")}
LEGACY["preprocess"] = ("inputs", "preprocess")


def with_legacy(options, legacy: dict, caller: str) -> ConvertOptions:
    """`options` (ConvertOptions, a dict of tables, a .toml/.json path or None) with the old keywords applied
    over it, each named in one DeprecationWarning; an unknown keyword is a TypeError, as Python's own."""
    options = as_options(options)
    unknown = sorted(set(legacy) - set(LEGACY))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument '{unknown[0]}'")
    if legacy:
        shown = ", ".join(f"{k}=" for k in legacy)
        warnings.warn(f"{caller}({shown}) is deprecated and goes in the next release: pass "
                      f"options=edgesdk.ConvertOptions(...) ({', '.join('.'.join(LEGACY[k]) for k in legacy)}).",
                      DeprecationWarning, stacklevel=3)
        values = {LEGACY[k]: v for k, v in legacy.items()}
        if ("inputs", "preprocess") in values:
            values[("inputs", "preprocess")] = as_preprocess(values[("inputs", "preprocess")])
        options = options.with_values(values)
    return options


def as_options(options) -> ConvertOptions:
    if options is None:
        return ConvertOptions()
    if isinstance(options, ConvertOptions):
        return options
    if isinstance(options, dict):
        return ConvertOptions.from_dict(options)
    if isinstance(options, (str, Path)):
        return ConvertOptions.load(options)
    raise OptionError(f"options must be an edgesdk.ConvertOptions, a dict of tables or a .toml path, "
                      f"got {type(options).__name__}.")


def as_preprocess(value) -> Preprocess:
    if value is None:
        return Preprocess()
    if isinstance(value, Preprocess):
        return value
    if isinstance(value, dict):
        return _build(Preprocess, value, "preprocess")
    raise OptionError(f"preprocess must be a dict or edgesdk.Preprocess, got {type(value).__name__}.")


# --- helpers ------------------------------------------------------------------------------------------

def _set(obj, path: tuple, value):
    if len(path) == 1:
        return replace(obj, **{path[0]: value})
    return replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def _build(cls, doc: dict, where: str, prefix: str = ""):
    """`cls` from a table read from `where` (a file, "options"); `prefix`: the table's key path in it."""
    if not isinstance(doc, dict):
        raise OptionError(f"{where}: {prefix.rstrip('.') or 'the options'} must be a table of options, got "
                          f"{type(doc).__name__}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise OptionError(f"{where}: unknown option '{prefix}{unknown[0]}'; {cls.__name__} takes "
                          f"{', '.join(known)}.")
    values = {}
    for name, value in doc.items():
        f = known[name]
        default = f.default if f.default is not MISSING else None
        if is_dataclass(default):
            values[name] = _build(type(default), value, where, f"{prefix}{name}.")
        else:
            values[name] = _typed(f, tuple(value) if isinstance(value, list) else value, f"{where}: {prefix}{name}")
    return cls(**values)


def _dump(obj) -> dict:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            inner = _dump(value)
            if inner:
                out[f.name] = inner
        elif value is None:
            continue
        elif callable(value):
            out[f.name] = f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out
