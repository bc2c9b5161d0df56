"""Load Keras models (Keras 3, tf-keras, SavedModel) into a SourceModel.

The file says which Keras wrote it (metadata.json / the h5 `keras_version`
attribute): Keras 2 files load with tf-keras so that tfmot can prune them,
Keras 3 files with Keras 3. Safe mode is on unless the user opts out.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from edgesdk.converters.model_trust import check_keras_config, check_saved_model
from edgesdk.errors import ConversionError, ModelLoadError
from edgesdk.sources.source import InputSpec, SourceModel
from edgesdk.util import captured_output, first_line, sha256_file, sha256_tree


def import_tf():
    """TensorFlow with tf.keras = tf-keras (tfmot does not support Keras 3)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sys
    if "tensorflow" not in sys.modules:
        try:
            import importlib.util
            found = importlib.util.find_spec("tensorflow") is not None
        except ValueError:
            found = False
        if not found:
            from edgesdk.errors import ConversionError
            raise ConversionError("This step needs TensorFlow (TFLite conversion and quantization): "
                                  "pip install 'edgesdk[tflite]'.")
        with captured_output():  # CUDA probing and oneDNN notices on a CPU-only machine
            import tensorflow
            import keras  # noqa: F401
            tensorflow.constant(0)  # device discovery happens on first use
    import tensorflow as tf
    return tf


def _keras_major_of_zip(path: Path, unsafe: bool) -> int:
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json"))
            config = z.read("config.json")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelLoadError(f"'{path}' is not a valid .keras file ({exc}). It may be truncated or not a "
                             f"model at all; save it again with model.save('model.keras').") from None
    check_keras_config(config, path, unsafe)  # safe mode too, but a foreign module is imported before it looks
    return int(str(meta.get("keras_version", "3")).split(".")[0])


def _keras_major_of_h5(path: Path, unsafe: bool) -> int:
    import h5py
    try:
        with h5py.File(path, "r") as h:
            version = h.attrs.get("keras_version")
            config = h.attrs.get("model_config")
    except OSError as exc:
        raise ModelLoadError(f"'{path}' is not a readable HDF5 Keras model ({exc}). It may be truncated, "
                             f"or only weights; save the whole model with model.save().") from None
    if config is None:
        raise ModelLoadError(f"'{path}' holds weights only (no model_config); edgesdk needs the whole "
                             f"model: save it with model.save('model.keras').")
    if isinstance(config, bytes):
        config = config.decode()
    check_keras_config(config, path, unsafe)  # parsed and walked: Lambdas, foreign classes
    if isinstance(version, bytes):
        version = version.decode()
    return int(str(version or "2").split(".")[0])


def load_path(path: Path, *, unsafe: bool = False) -> SourceModel:
    tf = import_tf()
    if path.is_dir():
        return _load_saved_model(tf, path, unsafe)
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"'{path}' is not readable (permission denied).")
    suffix = path.suffix.lower()
    major = _keras_major_of_zip(path, unsafe) if suffix == ".keras" else _keras_major_of_h5(path, unsafe)
    try:
        if major >= 3:
            import keras
            kwargs = {"safe_mode": not unsafe} if suffix == ".keras" else {}
            model = keras.saving.load_model(str(path), compile=False, **kwargs)
        else:
            import tf_keras
            kwargs = {"safe_mode": not unsafe} if suffix == ".keras" else {}
            model = tf_keras.models.load_model(str(path), compile=False, **kwargs)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc):
            raise ModelLoadError(f"'{path}' needs unsafe deserialization (it holds Python code, e.g. a Lambda "
                                 f"layer). If you trust this file, pass --unsafe-load (unsafe=True in "
                                 f"Python).") from None
        raise ModelLoadError(f"Keras could not load '{path}': {msg}. If it uses custom layers, load it in "
                             f"Python and pass the model object to edgesdk.convert().") from None
    return _from_keras(model, path=str(path), sha=sha256_file(path))


def from_object(model) -> SourceModel:
    import hashlib
    import numpy as np
    if not getattr(model, "built", True) or _input_shape(model) is None:
        raise ModelLoadError("The Keras model is not built: call it on an input or build(input_shape) first.")
    h = hashlib.sha256(type(model).__qualname__.encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return _from_keras(model, path=None, sha=h.hexdigest())


def _input_shape(model):
    """input_shape, or for subclassed models the shape they were built with."""
    try:
        return model.input_shape
    except Exception:
        pass
    shape = getattr(model, "_build_input_shape", None)  # tf-keras subclassed
    if shape is None:
        shapes = getattr(model, "_build_shapes_dict", None) or {}  # Keras 3 subclassed
        shape = next(iter(shapes.values()), None) if len(shapes) == 1 else None
    if shape is None:
        return None
    shape = tuple(shape.as_list()) if hasattr(shape, "as_list") else tuple(shape)
    return shape


def _flavor(model) -> str:
    mods = [c.__module__ for c in type(model).__mro__]
    return "tf-keras" if any(m.startswith("tf_keras") for m in mods) else "keras3"


def _from_keras(model, *, path, sha) -> SourceModel:
    import numpy as np
    shape = _input_shape(model)
    if shape is None:
        raise ModelLoadError("Cannot tell this Keras model's input shape. Build it with an input shape "
                             "(model.build((None, H, W, C))) or wrap it: keras.Model(inp, model(inp)).")
    specs = _input_specs(model, shape)
    if isinstance(shape, list):
        shape = shape[0]
    shape = tuple(shape)
    if len(shape) < 2:
        raise ModelLoadError(f"The model's input shape {shape} has no batch axis.")
    outputs = model.outputs if getattr(model, "outputs", None) else None
    out_names = [getattr(o, "name", f"output_{i}") for i, o in enumerate(outputs)] if outputs else ["output_0"]
    in_name = getattr(model.inputs[0], "name", "input") if getattr(model, "inputs", None) else "input"

    def run(model, x, batch_size=32):  # small batches: reference outputs must not dominate peak memory
        from edgesdk.sources.inputs import Inputs
        outs = None
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            if isinstance(chunk, Inputs):
                feed = chunk.feed()
                chunk = [feed[s.name] for s in specs]
            y = model(chunk, training=False)
            y = y if isinstance(y, (list, tuple)) else [y]
            y = [np.asarray(t) for t in y]
            outs = [[t] for t in y] if outs is None else [o + [t] for o, t in zip(outs, y)]
        return [np.concatenate(o) for o in outs]

    name = Path(path).stem if path else (getattr(model, "name", None) or "model")
    return SourceModel(framework="keras", flavor=_flavor(model), model=model, name=name, sha256=sha,
                       input_name=str(in_name), input_shape=(None,) + shape[1:], output_names=out_names,
                       run=run, path=path, param_count=int(model.count_params()),
                       layout="NHWC" if len(shape) == 4 else None, input_dtype=specs[0].dtype,
                       specs=specs if len(specs) > 1 else [])


def _input_specs(model, shape) -> list:
    """One InputSpec per model input (name, shape with the batch free, dtype; 4-D inputs are NHWC images)."""
    shapes = shape if isinstance(shape, list) else [shape]
    tensors = list(getattr(model, "inputs", None) or [])
    if len(tensors) != len(shapes):
        tensors = [None] * len(shapes)
    specs = []
    for i, (t, s) in enumerate(zip(tensors, shapes)):
        s = tuple(s.as_list()) if hasattr(s, "as_list") else tuple(s)
        name = str(getattr(t, "name", None) or f"input_{i}").split(":")[0]
        dtype = getattr(t, "dtype", "float32")
        dtype = getattr(dtype, "name", dtype) or "float32"
        specs.append(InputSpec(name, (None,) + s[1:], str(dtype), "NHWC" if len(s) == 4 else None))
    if len({sp.name for sp in specs}) != len(specs):
        raise ModelLoadError("The model's inputs do not have distinct names; name each keras.Input(name=...).")
    return specs


def _load_saved_model(tf, path: Path, unsafe: bool) -> SourceModel:
    """A SavedModel: tf-keras if it carries Keras metadata, else its serving signature."""
    import numpy as np
    check_saved_model(path, unsafe)  # before anything in it is revived or run
    if (path / "keras_metadata.pb").is_file():
        import tf_keras
        try:
            model = tf_keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise ModelLoadError(f"tf-keras could not load the SavedModel '{path}': {exc}") from None
        return _from_keras(model, path=str(path), sha=sha256_tree(path))
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except KeyError:
        raise ModelLoadError(f"SavedModel '{path}' has no 'serving_default' signature to convert.") from None
    except Exception as exc:
        raise ModelLoadError(f"TensorFlow could not load the SavedModel '{path}': {exc}") from None
    signature = fn.structured_input_signature[1]
    names = sorted(signature)
    out_names = sorted(fn.structured_outputs)
    specs = [InputSpec(n, (None,) + tuple(signature[n].shape.as_list()[1:]), signature[n].dtype.name,
                       "NHWC" if len(signature[n].shape) == 4 else None) for n in names]

    def run(_model, x, batch_size=256):
        from edgesdk.sources.inputs import Inputs
        outs = [[] for _ in out_names]
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            feed = chunk.feed() if isinstance(chunk, Inputs) else {names[0]: chunk}
            res = fn(**{n: tf.constant(feed[n], dtype=signature[n].dtype) for n in names})
            for k, name in enumerate(out_names):
                outs[k].append(res[name].numpy())
        return [np.concatenate(o) for o in outs]

    one = specs[0]
    src = SourceModel(framework="keras", flavor="saved_model", model=loaded, name=path.name,
                      sha256=sha256_tree(path), input_name=one.name, input_shape=one.shape, input_dtype=one.dtype,
                      output_names=out_names, run=run, path=str(path), layout=one.layout,
                      specs=specs if len(specs) > 1 else [],
                      param_count=int(sum(np.prod(v.shape) for v in loaded.variables)) if hasattr(loaded, "variables") else 0)
    src.notes.append("plain SavedModel (no Keras layers): converted from its serving signature")
    return src


def cut(source, K, x, wanted: list):
    """The functional model made to output, in order, the tensors whose values on `x` are `wanted` (the cut
    points of a detector's head, found in its ONNX export; channels-first there where the model is
    channels-last), sharing the source's layers and weights. Raises ConversionError when one has no match
    or the model is not a graph of layers (a SavedModel, a subclassed model)."""
    import numpy as np
    from edgesdk.conversion.host_tail import match_cut_points
    model = source.model
    tensors = []
    try:
        for op in getattr(model, "operations", None) or model.layers:
            try:
                out = op.output
            except (AttributeError, ValueError):  # a layer used several times has no one output
                continue
            if not isinstance(out, (list, tuple, dict)):
                tensors.append(out)
        values = K.Model(model.inputs, tensors)(x[0] if len(x) == 1 else x)
    except Exception as exc:  # a SavedModel, a subclassed model: no graph of layers to take tensors from
        raise ConversionError(f"only a functional or Sequential Keras model can be cut ({first_line(exc)[:200]})") \
            from None
    values = [np.asarray(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    try:
        found = [tensors[i] for i in match_cut_points(values, wanted)]
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    return K.Model(model.inputs, found, name=f"{source.name}_cut")
