"""Models with several inputs: named, sample-aligned data; fixed values; recurrent state over a sequence.

Data for a multi-input model is an `Inputs`: one sample-first array per input name, indexed together
(`x[:64]` takes the same 64 samples of every input). `feed` shapes a batch as the model takes it (a state
stacked on axis 1, a sample rate given once). A stateful model's artifact is judged over a sequence: its
own state output fed back as the next step's state input, as it runs on the device.
"""

from __future__ import annotations

import re

import numpy as np

from edgesdk.errors import DataError, OptionError


class Inputs:
    """Named arrays with the same number of samples (first axis)."""

    def __init__(self, arrays: dict, batch_axes: dict | None = None):
        self.arrays = dict(arrays)
        self.batch_axes = {k: (batch_axes or {}).get(k, 0) for k in self.arrays}
        counts = {k: len(v) for k, v in self.arrays.items()}
        if len(set(counts.values())) > 1:
            raise DataError("The inputs hold different numbers of samples: "
                            + ", ".join(f"{k} {n}" for k, n in counts.items()) + "; every input needs one "
                            "value per sample.")

    @property
    def names(self) -> list:
        return list(self.arrays)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def __getitem__(self, idx):
        if isinstance(idx, str):
            return self.arrays[idx]
        return Inputs({k: v[idx] for k, v in self.arrays.items()}, self.batch_axes)

    def items(self):
        return self.arrays.items()

    def replaced(self, **arrays) -> "Inputs":
        return Inputs({**self.arrays, **arrays}, self.batch_axes)

    @property
    def shape(self) -> dict:
        return {k: v.shape for k, v in self.arrays.items()}

    def feed(self) -> dict:
        """The batch as the model takes it: samples moved to each input's batch axis; an input without
        a batch axis (a sample rate) gets its one value."""
        out = {}
        for k, v in self.arrays.items():
            axis = self.batch_axes[k]
            out[k] = np.asarray(v[0]) if axis is None else (np.moveaxis(v, 0, axis) if axis else v)
        return out


def feed_rows(x, start: int, stop: int, names: list) -> dict:
    """Samples start:stop as {model input name: array} for a model whose inputs are `names`: a single array
    goes to the first; an Inputs is matched by name (what the data holds beyond them, such as a rate built
    into the graph, is not fed)."""
    if not isinstance(x, Inputs):
        return {names[0]: x[start:stop]}
    chunk = x[start:stop].feed()
    return {n: chunk[m] for n, m in match_names(list(names), x.names).items()}


def to_artifact_layout(x, source, artifact_layout):
    """Data arrives in the source model's layout; an NHWC artifact of an NCHW model takes images transposed."""
    from .data import to_artifact_layout as one
    if isinstance(x, Inputs):
        layouts = {s.name: s.layout for s in source.inputs}
        return x.replaced(**{k: one(v, layouts.get(k), artifact_layout) for k, v in x.items()})
    return one(x, source.layout, artifact_layout)


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def match_names(wanted: list, given: list, what: str = "input") -> dict:
    """wanted name -> given name: exact, then ignoring case and punctuation, then a given name that holds
    the wanted one (TFLite's 'serving_default_state:0' for 'state'), then the same position."""
    out, free = {}, list(given)
    for key in (lambda s: s, _norm):
        for w in wanted:
            hits = [g for g in free if key(g) == key(w)] if w not in out else []
            if len(hits) == 1:
                out[w] = hits[0]
                free.remove(hits[0])
    for w in wanted:
        hits = [g for g in free if _holds(w, g) or _holds(g, w)] if w not in out else []
        if len(hits) == 1:
            out[w] = hits[0]
            free.remove(hits[0])
    left = [w for w in wanted if w not in out]
    numbered = [re.search(r"(\d+)\D*$", w) for w in left]
    if all(numbered):  # 'serving_default_args_1:0': the argument's position is in the name
        left = [w for _, w in sorted(zip([int(m.group(1)) for m in numbered], left))]
    if left and len(left) == len(free):  # converters that rename every input keep their order
        out.update(zip(left, free))
    elif left:
        raise DataError(f"Cannot tell which of the artifact's {what}s ({', '.join(given)}) is "
                        f"'{left[0]}'.")
    return out


def _holds(longer: str, name: str) -> bool:
    """`name` appears in `longer` as a whole word ('state' in 'serving_default_state:0')."""
    return bool(name) and re.search(rf"(^|[^0-9a-z]){re.escape(name.lower())}([^0-9a-z]|$)",
                                    longer.lower()) is not None


# -- fixed values and state, attached to the source ---------------------------------------------------

def attach_fixed(source, values) -> None:
    from .source import parse_pairs
    pairs = parse_pairs(values, "--input-value", "sr=16000")
    specs = {s.name: s for s in source.inputs}
    for name, value in pairs.items():
        if name not in specs:
            raise OptionError(f"--input-value {name}=...: the model has no input '{name}' (its inputs: "
                              f"{', '.join(specs)}).")
        spec = specs[name]
        try:
            number = float(value) if not spec.integer else int(float(value))
        except (TypeError, ValueError):
            raise OptionError(f"--input-value {name}={value!r}: give a number.") from None
        shape = [d or 1 for d in spec.sample_shape]
        source.fixed[name] = np.full(shape, number, dtype=np.dtype(spec.dtype))
    if pairs:
        source.notes.append("inputs with one value: " + ", ".join(f"{k}={v}" for k, v in pairs.items()))


STATE_SUFFIXES = ("n", "out", "new", "next", "output")


def attach_stateful(source, spec) -> None:
    """--stateful in=out pairs, or (default, "auto") inputs and outputs paired by name and shape."""
    if spec in (False, "none", "off"):
        return
    names = [s.name for s in source.inputs]
    if spec in (None, "auto", True):
        if not source.multi_input:
            return
        pairs = _detect_states(source)
        if pairs:
            source.notes.append("recurrent state fed back step by step (detected by name and shape): "
                                + ", ".join(f"{k} <- {v}" for k, v in pairs.items()) + " (--stateful none "
                                "to judge each sample on its own)")
    else:
        from .source import parse_pairs
        pairs = parse_pairs(spec, "--stateful", "state=stateN")
        for inp, out in pairs.items():
            if inp not in names:
                raise OptionError(f"--stateful {inp}={out}: the model has no input '{inp}' (its inputs: "
                                  f"{', '.join(names)}).")
            if out not in source.output_names:
                raise OptionError(f"--stateful {inp}={out}: the model has no output '{out}' (its outputs: "
                                  f"{', '.join(source.output_names)}).")
    source.stateful.update(pairs)
    specs = {s.name: s for s in source.inputs}
    for inp, out in pairs.items():  # a state output stacks samples where its state input does
        if specs[inp].batch_axis and out not in source.output_axes:
            source.output_axes[out] = specs[inp].batch_axis


def _detect_states(source) -> dict:
    outs = {_norm(o): o for o in source.output_names}
    pairs = {}
    for s in source.inputs:
        if s.name in source.fixed:
            continue
        for suffix in STATE_SUFFIXES:
            hit = outs.get(_norm(s.name) + suffix)
            if hit is not None:
                pairs[s.name] = hit
                break
    if not pairs:
        return {}
    try:  # a name match is kept only if the output's shape is the state's
        probe = zero_inputs(source, 1)
        got = dict(zip(source.output_names, source.predict(probe)))
    except Exception:
        return {}
    shapes = {s.name: s for s in source.inputs}
    return {i: o for i, o in pairs.items()
            if got[o].size == int(np.prod([d or 1 for d in shapes[i].sample_shape]))}


def zero_inputs(source, n: int) -> Inputs:
    """n samples of zeros (fixed inputs at their value): a probe, or a state's starting point."""
    return complete(source, {s.name: np.zeros((n,) + tuple(d or 1 for d in s.sample_shape), np.dtype(s.dtype))
                             for s in source.data_inputs}, n, "probe")


def complete(source, data: dict, n: int, what: str) -> Inputs:
    """The data inputs plus fixed values and (zero) states: every input the model takes."""
    arrays = {}
    for s in source.inputs:
        if s.name in data:
            arrays[s.name] = data[s.name]
        elif s.name in source.fixed:
            arrays[s.name] = np.broadcast_to(source.fixed[s.name], (n,) + source.fixed[s.name].shape).copy()
        elif s.name in source.stateful:
            arrays[s.name] = np.zeros((n,) + tuple(d or 1 for d in s.sample_shape), np.dtype(s.dtype))
        else:
            raise DataError(f"The {what} has no values for the input '{s.name}' {list(s.shape)} ({s.dtype}). "
                            f"Give it in the data (an .npz array named '{s.name}'), as one value "
                            f"(--input-value {s.name}=VALUE), or as a recurrent state (--stateful "
                            f"{s.name}=OUTPUT).")
    return Inputs(arrays, {s.name: s.batch_axis for s in source.inputs})


# -- sequences ----------------------------------------------------------------------------------------

def source_states(source, x: Inputs) -> tuple:
    """Run the source over x as a sequence, its state outputs fed back: (x with the states each step
    saw, the outputs). Calibration then sees the states the model meets in use."""
    order = {o: k for k, o in enumerate(source.output_names)}
    state = {i: x[i][:1] * 0 for i in source.stateful}
    seen = {i: [] for i in source.stateful}
    outs = None
    for t in range(len(x)):
        step = x[t:t + 1].replaced(**state)
        y = source.predict(step)
        outs = [[a] for a in y] if outs is None else [o + [a] for o, a in zip(outs, y)]
        for i, o in source.stateful.items():
            seen[i].append(state[i])
            state[i] = y[order[o]].reshape(step[i].shape).astype(step[i].dtype)
    filled = x.replaced(**{i: np.concatenate(v) for i, v in seen.items()})
    return filled, [np.concatenate(o) for o in outs]


def run_sequence(predict, x: Inputs, source, reference: list, names: list, progress=None) -> list:
    """The artifact over x as a sequence, feeding back its own state. `predict(Inputs of one sample)`
    gives the artifact's outputs under `names`; they are lined up with the source's by the first step."""
    from edgesdk.judge.validation import match_outputs
    state = {i: x[i][:1] * 0 for i in source.stateful}
    where = None
    outs = None
    for t in range(len(x)):
        step = x[t:t + 1].replaced(**state)
        y = predict(step)
        if where is None:
            _, matched = match_outputs([r[:1] for r in reference], list(source.output_names), y, names)
            where = {o: names.index(m["artifact_name"]) for o, m in zip(source.output_names, matched)}
        outs = [[a] for a in y] if outs is None else [o + [a] for o, a in zip(outs, y)]
        for i, o in source.stateful.items():
            got = y[where[o]]
            if got.ndim == 4 and got.shape[1:] != step[i].shape[1:] and got.size == step[i].size:
                got = got.transpose(0, 3, 1, 2)  # an NHWC artifact's 4-D state
            state[i] = got.reshape(step[i].shape).astype(step[i].dtype)
        if progress:
            progress(t + 1, len(x))
    return [np.concatenate(o) for o in outs]


def artifact_outputs(art, x, source, reference, progress=None) -> list:
    """What the artifact makes of x: over the sequence for a stateful model, else sample by sample.
    Outputs come sample-first, as the source's do."""
    axes = {}
    if source.output_axes:
        named = match_names(list(source.output_names), list(art.output_names), "output")
        axes = {named[o]: a for o, a in source.output_axes.items()}
    if isinstance(x, Inputs) and source.stateful:
        return run_sequence(lambda step: art.predict(step, output_axes=axes), x, source, reference,
                            list(art.output_names), progress)
    return art.predict(x, progress=progress, output_axes=axes)


def synthetic(source, n: int):
    """n random samples for every input: normal floats, small non-negative integers (ids); a rate given
    with --input-value keeps its value."""
    rng = np.random.default_rng(0)

    def one(spec):
        shape = [n] + [d or 1 for d in spec.sample_shape]
        if spec.integer:
            return rng.integers(0, 2, shape).astype(spec.dtype)
        return rng.standard_normal(shape).astype(spec.dtype)
    if not source.multi_input:
        return one(source.inputs[0])
    return complete(source, {s.name: one(s) for s in source.data_inputs}, n, "trial data")
