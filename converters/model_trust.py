"""Whether loading (or running) a model file executes code the file brings, decided from its parsed structure.

A downloaded model is untrusted input. Substring checks are not enough (a config re-serialised compactly, or
with "Lambda" written as "\\u004cambda", passed one), so each format is parsed and walked before anything
in it is deserialised or run:

  Keras configs (.keras config.json, .h5 model_config, a SavedModel's keras_metadata.pb), recursively, nested
      models included: a Lambda layer or a serialised lambda (marshalled Python bytecode), a class from a
      module outside Keras (importing it runs that module), a TFOpLambda calling file or Python ops;
  SavedModel graphs: the ops reachable from the serving signature (its function library followed through
      every call), for ops with side effects outside the model (file I/O, Python callbacks, summaries).

Anything found is refused with what it is (exit 4); --unsafe-load (unsafe=True) takes responsibility.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgesdk.errors import ModelLoadError

CODE_CLASSES = {"Lambda", "__lambda__"}
# Keras itself: Keras 3 writes "keras.src....", tf-keras (Keras 2, TF_USE_LEGACY_KERAS) writes "tf_keras.src...."
KERAS_PACKAGES = {"keras", "tf_keras"}
# TF ops that reach outside the model: files, Python, summaries; a serving function has no business with them
SIDE_EFFECT_OPS = {
    "WriteFile", "ReadFile", "MatchingFiles", "DeleteFile", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary",
    "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter", "ExperimentalDatasetToTFRecord",
    "DatasetToTFRecord", "ShellExecute", "Exec", "LoadAndRemapMatrix", "ImmutableConst", "DebugIdentityV2",
    "DebugIdentityV3", "DebugIdentity", "DebugNumericSummaryV2",
}
UNSAFE_TF_FUNCTIONS = ("io.", "py_function", "numpy_function", "compat.v1.py_func", "debugging.", "summary.",
                       "print", "saved_model.", "train.", "data.")


def _refuse(path, found: list) -> None:
    listed = "; ".join(sorted(set(found))[:5]) + ("; ..." if len(set(found)) > 5 else "")
    raise ModelLoadError(f"'{path}' would run code of its own when loaded or run: {listed}. If you trust this "
                         f"file, pass --unsafe-load (unsafe=True in Python); it then runs with your rights.")


def keras_config_code(config) -> list:
    """What in a Keras config (parsed JSON) executes code on loading, walked through nested models."""
    found = []
    if isinstance(config, dict):
        cls = config.get("class_name")
        name = (config.get("config") or {}).get("name") if isinstance(config.get("config"), dict) else None
        label = f"{cls} '{name}'" if name else str(cls)
        if cls in CODE_CLASSES:
            found.append(f"a {label} layer (Python bytecode)" if cls == "Lambda" else "a serialised lambda")
        if config.get("function_type") == "lambda":
            found.append("a serialised lambda (Python bytecode)")
        module = config.get("module")
        if isinstance(module, str) and cls and not (module.split(".")[0] in KERAS_PACKAGES
                                                     or module == "builtins" and cls == "function"
                                                     and "." not in str(config.get("config", ""))):
            found.append(f"the class {cls} from the module '{module}' (importing it runs that module)")
        if cls == "TFOpLambda":
            fn = str((config.get("config") or {}).get("function", ""))
            if fn.startswith(UNSAFE_TF_FUNCTIONS) or "py_func" in fn:
                found.append(f"a TFOpLambda calling tf.{fn}")
        for value in config.values():
            found += keras_config_code(value)
    elif isinstance(config, list):
        for value in config:
            found += keras_config_code(value)
    return found


def _json(text, path, what: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"'{path}' has a {what} that is not valid JSON ({exc}); it may be damaged.") from None


def check_keras_config(text, path, unsafe: bool) -> None:
    """A .keras config.json or an .h5 model_config (text)."""
    if not unsafe:
        found = keras_config_code(_json(text, path, "model config"))
        if found:
            _refuse(path, found)


def check_saved_model(path: Path, unsafe: bool) -> None:
    """A SavedModel directory: its Keras metadata, and the ops its serving signature reaches."""
    if unsafe:
        return
    found = []
    metadata = path / "keras_metadata.pb"
    if metadata.is_file():
        from tf_keras.protobuf import saved_metadata_pb2
        meta = saved_metadata_pb2.SavedMetadata()
        try:
            meta.ParseFromString(metadata.read_bytes())
        except Exception as exc:
            raise ModelLoadError(f"'{metadata}' is damaged ({exc}).") from None
        for node in meta.nodes:
            found += keras_config_code(_json(node.metadata, path, "Keras metadata node"))
    found += [f"the op {op} ({where})" for op, where in serving_ops(path) if op in SIDE_EFFECT_OPS]
    if found:
        _refuse(path, found)


def serving_ops(path: Path) -> list:
    """(op type, node name) of every node the SavedModel's signatures reach, through every function call."""
    from tensorflow.core.protobuf import saved_model_pb2
    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ModelLoadError(f"'{path}/saved_model.pb' is damaged ({exc}).") from None
    ops = []
    for meta in model.meta_graphs:
        graph = meta.graph_def
        nodes = {n.name: n for n in graph.node}
        functions = {f.signature.name: f for f in graph.library.function}
        todo = [t.name.split(":")[0].lstrip("^") for sig in meta.signature_def.values()
                for t in list(sig.outputs.values()) + list(sig.inputs.values())]
        seen, called = set(), []
        while todo:  # the graph's nodes the signatures depend on
            name = todo.pop()
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node = nodes[name]
            ops.append((node.op, name))
            called += _calls(node)
            todo += [i.split(":")[0].lstrip("^") for i in node.input]
        done = set()
        while called:  # every function they call, and the functions those call
            fname = called.pop()
            if fname in done or fname not in functions:
                continue
            done.add(fname)
            for node in functions[fname].node_def:
                ops.append((node.op, f"{node.name} in {fname}"))
                called += _calls(node)
    return ops


def _calls(node) -> list:
    """The functions a node calls: any func-valued attribute (PartitionedCall's f, If's branches, While's)."""
    out = [node.op]  # a call to a library function appears as an op of that name
    for value in node.attr.values():
        if value.HasField("func"):
            out.append(value.func.name)
        out += [f.name for f in value.list.func]
    return out
