"""Run an artifact the SDK wrote as its source model ran: `edgesdk.load(path).run(inputs)`.

A converted artifact rarely takes what its source took: onnx2tf turns NCHW images into NHWC, converters
rename and reorder outputs, a fixed input (a sample rate) is still an input, a recurrent state must be fed
back, a cut detector's head is finished on the host by a small float graph beside it. The manifest's
`interface` records each of these, and `Loaded` applies them: `run` takes what the source took (one array,
a tuple in input order or a dict by name, in the source's layout and dtypes) and returns the source's
outputs by the source's names, dequantized, in the source's layout.

The gate judges every artifact through this class too, so what passed the gate is what user code runs.
Only numpy and the artifact's runtime are imported here (ai_edge_litert or tflite_runtime, onnxruntime), so
it works on the device with nothing else installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgesdk.errors import DataError, ModelLoadError, RuntimeMissing
from edgesdk.sources.inputs import Inputs, _norm, match_names

# ONNX Runtime's WeightBiasQuantization re-quantizes (per tensor) the float weights of a node that was kept
# out of int8 on purpose, when the session starts: excluding one depthwise conv went 17.0 -> 9.2 dB with it,
# 18.4 dB without. A fully quantized graph has nothing for it to do, so it is always off.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def load(path, num_threads: int | None = None) -> "Loaded":
    """The artifact at `path` (.tflite or .onnx; a family's format where its reader runs it), ready to run as its
    source ran, by the interface its manifest (PATH.json) records. A file without one runs as it is."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Artifact '{path}' does not exist.")
    manifest = {}
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        try:
            manifest = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            raise ModelLoadError(f"The manifest '{sidecar}' cannot be read as JSON; convert the model again "
                                 f"or remove it to run the artifact as it is.") from None
    threads = num_threads or 1
    engine = open_engine(path, threads)
    interface = manifest.get("interface") or plain_interface(engine)
    tail = _host_graph(path, interface, "tail", "is cut before its detector head, and the head's host tail",
                       threads)
    loaded = Loaded(engine, interface, tail)
    stem = _host_graph(path, interface, "stem", "starts after its first layers, which the host runs in float, "
                                                "and their graph", threads)
    if stem is not None:
        return Stemmed(Loaded(stem, plain_interface(stem)), loaded)
    return loaded


def _host_graph(path: Path, interface: dict, part: str, what: str, num_threads: int):
    """The float ONNX graph the host runs beside the artifact (its host tail, its stem), if the interface
    names one; refused by name when the file is not beside the artifact."""
    if not interface.get(part):
        return None
    graph = path.parent / interface[part]["file"]
    if not graph.is_file():
        raise ModelLoadError(f"'{path}' {what} '{graph.name}' is not beside it: copy both files.")
    return ONNXEngine(graph, num_threads)


def open_engine(path: Path, num_threads: int = 1):
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return TFLiteEngine(path, num_threads)
    if suffix == ".onnx":
        return ONNXEngine(path, num_threads)
    from .formats import format_of  # a format a family adds (.rknn: the toolkit's simulator) runs by its reader
    return format_of(path).open(path)


def plain_interface(engine) -> dict:
    """An artifact without a recorded interface (not written by edgesdk): its own names, nothing changed."""
    return {"inputs": [{"name": n, "artifact_name": n} for n in engine.input_names],
            "outputs": [{"name": n, "artifact_name": n} for n in engine.output_names]}


class Loaded:
    """An artifact read as its source. `engine`: anything with input_names, output_names and
    predict(Inputs, progress, output_axes) -> sample-first float outputs (the runtime engines below, or
    the SDK's artifact readers, which run through them)."""

    def __init__(self, engine, interface: dict, tail=None):
        self.engine, self.interface, self.tail = engine, interface, tail
        self.specs = list(interface["inputs"])
        self._state: dict = {}

    @property
    def inputs(self) -> list:
        """The inputs `run` wants: the source's, less those with a fixed value or a recurrent state."""
        return [s["name"] for s in self.specs if "value" not in s and "state_from" not in s]

    @property
    def outputs(self) -> list:
        return [o["name"] for o in self.interface["outputs"]]

    def reset(self) -> None:
        """Recurrent states back to zeros (the next `run` starts a new sequence)."""
        self._state = {}

    def run(self, inputs) -> dict:
        """The source's outputs for `inputs`, {output name: array}, in the source's layout. A stateful model
        takes the samples of one call as consecutive steps and carries its state to the next call, unless
        `inputs` gives the state itself."""
        x = self._samples(inputs)
        given = {s["name"] for s in self.specs if "state_from" in s and s["name"] in x.names}
        outs, state = self._predict(x, state=None if given else self._state)
        if not given:
            self._state = state
        by_name = {o["name"]: o for o in self.interface["outputs"]}
        return {n: _to_axis(y, by_name[n].get("batch_axis", 0)) for n, y in zip(self.outputs, outs)}

    def predict(self, x, progress=None) -> list:
        """The source's outputs for sample-first `x` (one array, or Inputs by source name, every input
        present), sample-first in source order; a stateful model runs x as one sequence from zeros."""
        if not isinstance(x, Inputs):
            x = Inputs({self.specs[0]["name"]: x})
        return self._predict(x, state={}, progress=progress)[0]

    # -- the steps ----------------------------------------------------------------------------------------
    def _samples(self, inputs) -> Inputs:
        """What the user gave, in the source's layout, as sample-first Inputs holding every input."""
        wanted = self.inputs
        if isinstance(inputs, dict):
            given = dict(inputs)
        elif isinstance(inputs, (tuple, list)):
            names = wanted if len(inputs) == len(wanted) else [s["name"] for s in self.specs]
            if len(inputs) != len(names):
                raise DataError(f"The model takes {len(wanted)} input(s) ({', '.join(wanted)}); "
                                f"{len(inputs)} were given.")
            given = dict(zip(names, inputs))
        else:
            if len(wanted) != 1:
                raise DataError(f"The model takes {len(wanted)} inputs ({', '.join(wanted)}): give a tuple "
                                f"in that order or a dict by name.")
            given = {wanted[0]: inputs}
        every = [s["name"] for s in self.specs]
        named = {}
        for key, value in given.items():
            loose = [n for n in every if _norm(n) == _norm(str(key))]  # 'Input_1' for 'input_1'
            hit = key if key in every else loose[0] if len(loose) == 1 else None
            if hit is None:
                raise DataError(f"The model has no input '{key}'; its inputs are {', '.join(every)}.")
            named[hit] = value
        missing = [n for n in wanted if n not in named]
        if missing:
            raise DataError(f"No value for the input '{missing[0]}'; the model takes {', '.join(wanted)}.")
        arrays, n = {}, None
        for s in self.specs:
            if s["name"] not in named or s.get("batch_axis", 0) is None:
                continue
            a = np.asarray(named[s["name"]], dtype=np.dtype(s.get("dtype", "float32")))
            shape = s.get("shape")
            if shape and a.ndim == len(shape) - 1:
                a = np.expand_dims(a, s.get("batch_axis", 0))  # one sample without its batch axis
            a = np.moveaxis(a, s.get("batch_axis", 0), 0)
            _check_shape(s, a)
            arrays[s["name"]] = a
            n = len(a) if n is None else n
        n = n or 1
        for s in self.specs:
            if s["name"] in arrays:
                continue
            if s["name"] in named:  # one value for the whole batch (batch_axis None)
                one = np.asarray(named[s["name"]], dtype=np.dtype(s.get("dtype", "float32")))
            elif "value" in s:
                one = np.asarray(s["value"], dtype=np.dtype(s.get("dtype", "float32")))
            else:
                continue  # a state: the carried one
            arrays[s["name"]] = np.broadcast_to(one, (n,) + one.shape).copy()
        return Inputs(arrays, {s["name"]: s.get("batch_axis", 0) for s in self.specs if s["name"] in arrays})

    def _predict(self, x: Inputs, state, progress=None) -> tuple:
        """(outputs in source order, the state after the last sample)."""
        states = {s["name"]: s for s in self.specs if "state_from" in s}
        for s in self.specs:
            if "value" in s and s["name"] not in x.names:
                one = np.asarray(s["value"], dtype=np.dtype(s.get("dtype", "float32")))
                x = x.replaced(**{s["name"]: np.broadcast_to(one, (len(x),) + one.shape).copy()})
        if not states or state is None and all(n in x.names for n in states):
            return self._outputs(x, progress), {}
        state = dict(state)
        steps = []
        order = self.outputs
        for t in range(len(x)):
            feed = {n: state.get(n, _zeros(s)) for n, s in states.items()}
            y = self._outputs(x[t:t + 1].replaced(**feed))
            for n, s in states.items():
                state[n] = y[order.index(s["state_from"])].reshape(feed[n].shape).astype(feed[n].dtype)
            steps.append(y)
            if progress:
                progress(t + 1, len(x))
        return [np.concatenate(o) for o in zip(*steps)], state

    def _outputs(self, x: Inputs, progress=None) -> list:
        """One pass of the artifact: inputs renamed and turned to its layout, outputs dequantized (by the
        engine), finished by the host tail, renamed and turned back, in source order."""
        arrays, axes = {}, {}
        for s in self.specs:
            if s.get("artifact_name") is None:
                continue  # a value the graph holds now
            if s["name"] not in x.names:
                raise DataError(f"No value for the input '{s['name']}'.")
            a = x[s["name"]]
            if s.get("nhwc") and a.ndim == 4:
                a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
            arrays[s["artifact_name"]] = a
            axes[s["artifact_name"]] = s.get("batch_axis", 0)
        output_axes = {o["artifact_name"]: o["batch_axis"] for o in self.interface["outputs"]
                       if o.get("batch_axis") and not o.get("from_tail")}
        raw = self.engine.predict(Inputs(arrays, axes), progress=progress, output_axes=output_axes)
        values = dict(zip(self.engine.output_names, raw))
        finished = {}
        if self.tail is not None:
            t = self.interface["tail"]
            turned = set(t.get("nhwc_to_nchw_first", ()))
            feed = {n: values[a].transpose(0, 3, 1, 2) if n in turned else values[a] for n, a in t["feed"].items()}
            finished = dict(zip(self.tail.output_names, self.tail.predict(Inputs(feed))))
        outs = []
        for o in self.interface["outputs"]:
            y = (finished if o.get("from_tail") else values)[o["artifact_name"]]
            outs.append(y.transpose(0, 3, 1, 2) if o.get("nchw") and y.ndim == 4 else y)
        return outs


class Stemmed:
    """An artifact whose network's first layers the host runs in float (the manifest's `host_stem`): the stem's
    float graph takes what the source took, the artifact takes the stem's outputs."""

    def __init__(self, stem: Loaded, rest: Loaded):
        self.stem, self.rest = stem, rest

    @property
    def inputs(self) -> list:
        return self.stem.inputs

    @property
    def outputs(self) -> list:
        return self.rest.outputs

    def reset(self) -> None:
        self.rest.reset()

    def run(self, inputs) -> dict:
        return self.rest.run(self.stem.run(inputs))

    def predict(self, x, progress=None) -> list:
        return self.rest.predict(Inputs(dict(zip(self.stem.outputs, self.stem.predict(x)))), progress=progress)


def _zeros(spec: dict) -> np.ndarray:
    axis = spec.get("batch_axis", 0)
    sample = [d if d and d > 0 else 1 for i, d in enumerate(spec["shape"]) if i != axis]
    return np.zeros([1] + sample, np.dtype(spec.get("dtype", "float32")))


def _to_axis(y: np.ndarray, axis) -> np.ndarray:
    return np.moveaxis(y, 0, axis) if axis else y


def _check_shape(spec: dict, a: np.ndarray) -> None:
    shape = spec.get("shape")
    if not shape:
        return
    axis = spec.get("batch_axis", 0)
    sample = [d for i, d in enumerate(shape) if i != axis]
    if len(sample) != a.ndim - 1 or any(d and d > 0 and d != g for d, g in zip(sample, a.shape[1:])):
        raise DataError(f"The input '{spec['name']}' takes samples of shape {sample} (the source's layout, "
                        f"-1 any size); got {list(a.shape[1:])}.")


# -- engines: one runtime each; the SDK's readers run through them too ------------------------------------

def interpreter_module():
    """ai_edge_litert's interpreter module, else tflite_runtime's (same API)."""
    try:
        import ai_edge_litert.interpreter as module
    except ImportError:
        try:
            import tflite_runtime.interpreter as module
        except ImportError:
            raise RuntimeMissing("No TFLite runtime is installed here: pip install 'edgesdk[litert]' "
                                 "(ai-edge-litert).") from None
    return module


def as_input(sample, detail) -> np.ndarray:
    """A float sample as the interpreter's input `detail` takes it: quantized where that input is (plain
    integers, such as ids, go as they are)."""
    sample = np.asarray(sample)
    scale, zp = detail["quantization"]
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        sample = np.clip(np.round(sample / scale) + zp, info.min, info.max)
    return sample.astype(dtype).reshape(detail["shape"])


class TFLiteEngine:
    """A .tflite under LiteRT. `delegates=True` runs it as a device does (XNNPACK); False as written."""

    def __init__(self, path, num_threads: int = 1, delegates: bool = True):
        from edgesdk.util import captured_output
        module = interpreter_module()
        kwargs = {} if delegates else {
            "experimental_op_resolver_type": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        try:
            with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.interpreter = module.Interpreter(model_path=str(path), num_threads=num_threads, **kwargs)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"The TFLite runtime cannot run '{path}': {str(exc).splitlines()[0]}.") from None
        self.input_names = [d["name"] for d in self.interpreter.get_input_details()]
        self.output_names = [d["name"] for d in self.interpreter.get_output_details()]

    def predict(self, x, progress=None, output_axes=None) -> list:
        """Float samples one at a time; dequantized float outputs. x: one array, or Inputs (matched to the
        model's inputs by name). output_axes: {output name: axis} for outputs that stack samples on
        another axis than 0."""
        interp = self.interpreter
        details = interp.get_input_details()
        outputs = interp.get_output_details()
        if not isinstance(x, Inputs):
            x = Inputs({details[0]["name"]: x})
        names = match_names([d["name"] for d in details], x.names)
        axes_out = [(output_axes or {}).get(d["name"], 0) for d in outputs]
        outs = [[] for _ in outputs]
        for i in range(len(x)):
            feed = x[i:i + 1].feed()
            for inp in details:
                interp.set_tensor(inp["index"], as_input(feed[names[inp["name"]]], inp))
            interp.invoke()
            for k, d in enumerate(outputs):
                y = interp.get_tensor(d["index"])
                s, z = d["quantization"]
                y = (y.astype(np.float32) - z) * s if s else y.astype(np.float32)
                outs[k].append(np.moveaxis(y, axes_out[k], 0) if axes_out[k] else y)
            if progress:
                progress(i + 1, len(x))
        return [np.concatenate(o) for o in outs]


class ONNXEngine:
    """An .onnx under ONNX Runtime's CPU provider. `exact=True` runs the QDQ graph as written (graph
    optimizations off): int8 as a device computes it."""

    def __init__(self, path, num_threads: int = 1, exact: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("Running ONNX needs onnxruntime: pip install 'edgesdk[onnx]'") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.log_severity_level = 3
        if exact:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime could not load '{path}': {str(exc).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def predict(self, x, progress=None, output_axes=None) -> list:
        """x: one array (a single-input model) or Inputs (several, matched to the session's by name).
        output_axes: {output name: axis} for outputs that stack samples on another axis than 0."""
        sess = self.session
        inputs = sess.get_inputs()
        if not isinstance(x, Inputs):
            x = Inputs({inputs[0].name: x})
        names = match_names([i.name for i in inputs], x.names)
        axes = [x.batch_axes[names[i.name]] for i in inputs]
        fixed = [i.shape[a] for i, a in zip(inputs, axes)
                 if a is not None and a < len(i.shape) and isinstance(i.shape[a], int) and i.shape[a] > 0]
        batch = min(fixed) if fixed else None  # a model fixed to batch 1 (or N) takes samples so
        step = batch or 64
        outs = [[] for _ in sess.get_outputs()]
        axes_out = [(output_axes or {}).get(o.name, 0) for o in sess.get_outputs()]

        def run(chunk):
            feed = chunk.feed()
            return sess.run(None, {inp.name: np.asarray(feed[names[inp.name]]).astype(numpy_type(inp.type))
                                   for inp in inputs})
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            results = ([run(chunk[j:j + 1]) for j in range(len(chunk))] if batch and len(chunk) != batch
                       else [run(chunk)])  # a fixed batch: the tail one sample at a time
            for r in results:
                for k, y in enumerate(r):
                    outs[k].append(np.moveaxis(y, axes_out[k], 0) if axes_out[k] else y)
            if progress:
                progress(min(i + step, len(x)), len(x))
        return [np.concatenate(o, dtype=np.float32, casting="unsafe") for o in outs]  # one copy, as float32


def numpy_type(ort_type: str):
    """'tensor(int32)' -> numpy.int32; integer inputs (ids, byte values) are fed as integers."""
    name = ort_type[len("tensor("):-1] if ort_type.startswith("tensor(") else "float"
    return {"float": np.float32, "float16": np.float16, "double": np.float64, "bool": np.bool_}.get(
        name, getattr(np, name, np.float32))
