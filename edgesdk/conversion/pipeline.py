"""convert: source model + device profile + recipe -> validated artifact and manifest.

    load source -> load data -> (cache hit?) -> reference outputs -> prune ->
    convert+quantize (route) -> target check -> validate -> rename into place

Everything is written under a temporary name in the output directory and
renamed only after validation passed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgesdk import __version__
from edgesdk.artifacts.artifact import MANIFEST_SCHEMA, Artifact, manifest_path_for, tool_versions, write_json_atomic
from edgesdk.artifacts.inspection import describe, open_artifact
from edgesdk.errors import (BudgetExceeded, ConversionError, DataError, EdgeSDKError, ModelLoadError, OptionError,
                            ValidationFailed)
from edgesdk.judge.validation import load_metric
from edgesdk.profiles import QUANTIZATIONS, load_profile
from edgesdk.progress import Progress, parse_budget
from edgesdk.sources.data import (FEW_CALIBRATION_SAMPLES, artifact_layout, data_fingerprint, load_for,
                                  representative, split_holdout)
from edgesdk.sources.inputs import source_states
from edgesdk.sources.source import framework_of, load_source
from edgesdk.targets import get_family
from edgesdk.util import (ensure_writable_dir, first_line, gzip_size, out_of_space, sha256_file, temp_dir_in,
                          temp_path_in)
from .host_stem import stem_file
from .options import ConvertOptions, with_legacy
from .recipe import make_recipe


@dataclass
class _Request:
    """What convert was given besides the options: the model, its data, and where the artifact goes."""

    model: object
    profile: object
    calibration: object
    validation: object
    fine_tune: object
    output_dir: object
    name: str | None
    model_factory: object
    example_input: object
    unsafe: bool
    force: bool
    progress: Progress
    asked: ConvertOptions  # the options as the user gave them: the manifest records these, to replay them
    attempts: list = field(default_factory=list)  # each _convert's format, precision and seconds per stage
    # the source's outputs on the validation data, by (source, data): an attempt at another format or precision
    # reuses the first's (PP-OCRv4's recognizer: 4 s again for its fp16 attempt)
    references: dict = field(default_factory=dict)
    # the last artifact judged in full, by its bytes and what judged it: the fallback to the higher precision a
    # refusal measured passing makes the very artifact that refusal judged (PP-OCRv4's recognizer: 5 s again)
    judged: dict = field(default_factory=dict)


def convert(model, target="local", *, calibration=None, validation=None, fine_tune=None,
            options: ConvertOptions | None = None, output_dir="edgesdk-out", name=None, model_factory=None,
            example_input=None, unsafe=False, force=False, quiet=False, budget=None,
            progress: Progress | None = None, **legacy) -> Artifact:
    """Convert `model` (a path or a live Keras/PyTorch model) for `target` (a profile name, path or DeviceProfile).

    options: an edgesdk.ConvertOptions (quantization, training, gate thresholds, inputs and preprocessing), a
    dict of its tables, or a .toml file (or a manifest, to replay its conversion); None takes the profile's
    defaults. The old keywords (prune=, max_accuracy_drop=, ...) still work, with a DeprecationWarning.
    Data arguments take a path (.npz/.npy/image folder), an array, or an (x, y) tuple; a model with several
    inputs takes an .npz or dict with one array per input name (and `y`), or a tuple of arrays in input order.
    fine_tune: labelled data (or a PyTorch training callback, fine_tune(model, epoch)) for pruning and
    quantization-aware training. When int8 misses the gate, the recovery ladder (edgesdk.conversion.recovery) keeps
    the first recipe that passes; options.recover=False fails at once, with a diagnosis.
    budget ("20m", seconds) bounds the wall time, checked inside every stage: past it, BudgetExceeded (exit 15)
    and nothing half-made is kept.
    Raises an EdgeSDKError subclass on any user-facing failure; ValidationFailed
    carries the figures when the artifact misses the accuracy budget.
    """
    options = with_legacy(options, legacy, "edgesdk.convert")
    progress = progress or Progress(quiet)
    progress.limit(parse_budget(budget))  # checked inside every stage, through its progress
    request = _Request(model, load_profile(target), calibration, validation, fine_tune, output_dir, name,
                       model_factory, example_input, unsafe, force, progress, options)
    try:
        return _with_fallbacks(request, options)
    except OSError as exc:  # a full disk: said as one, the temporary files already gone
        full = out_of_space(exc, output_dir)
        if full is None:
            raise
        raise full from None


def _with_fallbacks(request: _Request, options: ConvertOptions, fallback: dict | None = None) -> Artifact:
    """The format and the precision settled first, so every option is judged against the artifact really made.
    What the user did not force falls back, in this order: another format the profile takes when the route
    fails on this graph or its artifact misses the gate at the profile's precision (resemblyzer's LSTM: int8
    TFLite 0.42 cosine at its 5th percentile, int8 ONNX 0.9997, where ONNX Runtime keeps the LSTM float),
    then a higher precision the family computes in when the profile's cannot pass the gate."""
    from edgesdk.converters import pick_format, reachable_formats
    profile, progress = request.profile, request.progress
    framework = framework_of(request.model, request.model_factory)
    fmt = options.quantize.format
    if fmt is None and framework is not None:
        fmt = pick_format(framework, profile)
        if fmt != profile.artifact.format:
            progress.step(f"{profile.name} prefers {profile.artifact.format}, but {framework} sources go to "
                          f"{fmt}: making {fmt}")
        options = options.with_values({("quantize", "format"): fmt})
        others = [f for f in reachable_formats(framework, profile) if f != fmt]
        if others:  # not forced: when the route fails on this graph, the profile's next format is made instead
            other = options.with_values({("quantize", "format"): others[0]})
            try:
                return _at_precision(request, options, fallback, higher=False)
            except ConversionError as exc:
                if not getattr(exc, "route_failed", False):
                    raise
                _release_frames(exc)
                reason = first_line(exc).rstrip(". ")
                progress.warn(f"no {fmt} artifact: {reason}. {profile.name} takes {others[0]} too: making "
                              f"{others[0]}.")
                try:
                    return _at_precision(request, other, {"wanted": fmt, "made": others[0], "reason": reason})
                except OptionError as unfit:  # an option only the first format has: the route's failure stands
                    exc.args = (f"{exc} ({others[0]} was not made either: {first_line(unfit)})",)
                    raise exc from None
            except ValidationFailed as missed:
                if not _may_raise_precision(options):
                    raise
                _release_frames(missed)
                reason = ((missed.figures or {}).get("gate") or {}).get("reasons") or [first_line(missed)]
                progress.warn(f"{fmt} misses the gate at {profile.artifact.quantization} ({reason[0][:160]}); "
                              f"{profile.name} takes {others[0]} too: trying {others[0]} before a higher precision.")
                moved = {"wanted": fmt, "made": others[0], "reason": reason[0]}
                second = None
                try:
                    return _at_precision(request, other, moved, higher=False)
                except (ValidationFailed, ConversionError, OptionError) as exc:  # an option only the first
                    progress.warn(f"{others[0]} is no better: {first_line(exc)[:160]}")  # format has (SOFTMAX)
                    second = _release_frames(exc) if isinstance(exc, ValidationFailed) else None
                try:
                    return _higher_precision(request, options, missed, fallback)
                except ValidationFailed:
                    if second is None or not _passing(second):
                        raise
                # no higher precision of the first format passes (an NPU runs no float): the second's may
                # (Basic Pitch on rock5b: the .rknn's fp16 misses, a float ONNX on its CPU cores passes)
                return _higher_precision(request, other, second, moved)
    return _at_precision(request, options, fallback)


def _may_raise_precision(options: ConvertOptions) -> bool:
    """The precision is the profile's, not forced, and the gate's refusal is the answer the user wants to act
    on (not --keep-failed, not --no-recover)."""
    return options.quantize.quantization is None and not options.keep_failed and options.recover


def _at_precision(request: _Request, options: ConvertOptions, fallback: dict | None, higher: bool = True):
    """The profile's precision; when it cannot pass the gate and a higher one the family computes in does
    (measured by the refusal, _what_would_pass), that one instead (higher=False: the refusal stands)."""
    if not _may_raise_precision(options):
        return _convert(request, options, fallback)
    wanted = request.profile.artifact.quantization
    try:
        return _convert(request, options.with_values({("quantize", "quantization"): wanted}), fallback,
                        raises_next=higher)
    except ValidationFailed as exc:
        if not higher:
            raise
        return _higher_precision(request, options, _release_frames(exc), fallback)


REFERENCE_CHUNK = 8  # samples a progress step at least (a layout detector at 800 x 608: 43 s for 61 pages)


def _reference_outputs(run: ConversionRun) -> list:
    """The source's outputs on the validation samples, drawn as a bar: a chunk of samples at a time (a stateful
    model's whole sequence at once, its state carried from step to step)."""
    x, source = run.val.x, run.source
    if source.stateful or len(x) <= REFERENCE_CHUNK:
        return source.predict(x)
    bar, parts, chunk = run.progress.bar("reference"), [], max(REFERENCE_CHUNK, len(x) // 20)
    for i in range(0, len(x), chunk):
        parts.append(source.predict(x[i:i + chunk]))
        bar(min(i + chunk, len(x)), len(x))
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _release_frames(exc: BaseException) -> BaseException:
    """`exc` without the frames of the attempt that raised it, before the next attempt starts: its traceback
    holds that attempt's reference outputs, data and sessions (PP-OCRv4's recognizer: its fp16 attempt peaked
    at 1.63 GB after the int8 one, at 1.1 GB alone). The refusal keeps its message and figures."""
    import gc
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    gc.collect()  # the frames' reference cycles
    return exc


def _passing(refusal) -> list:
    """The higher precisions a gate's refusal measured passing, cheapest first."""
    return [w for w in (refusal.figures or {}).get("would_pass") or [] if w["verdict"] == "pass"]


def _higher_precision(request: _Request, options: ConvertOptions, exc, fallback: dict | None):
    """The first higher precision the refusal `exc` measured passing, made; where none passes, int8 with the
    stem on the host (a family that computes in int8 only); else `exc` is raised."""
    wanted = request.profile.artifact.quantization
    passing = _passing(exc)
    if not passing:
        return _stem_on_host(request, options, exc, fallback)
    made, reasons = passing[0]["quantization"], (exc.figures.get("gate") or {}).get("reasons") or [""]
    request.progress.warn(f"{wanted} misses the gate ({reasons[0][:160]}); {made} passes on "
                          f"{passing[0]['samples']} samples: making {made} (--quantization {wanted} refuses instead).")
    return _convert(request, options.with_values({("quantize", "quantization"): made}), fallback,
                    {"wanted": wanted, "made": made, "reason": reasons[0]})


def _stem_on_host(request: _Request, options: ConvertOptions, exc, fallback: dict | None):
    """int8 again with the network's first layers run on the host in float (host_stem.py), where the family
    computes in int8 only (the Edge TPU: no float op, no higher precision) and int8 missed the gate at every
    rung; else the refusal `exc` stands, saying what the stem on the host measured."""
    fmt = options.quantize.format
    family = get_family(request.profile.family)
    if request.profile.artifact.quantization != "int8" or fmt is None or family.runs_float_ops(fmt) \
            or family.computes_in(fmt) != ("int8",) or framework_of(request.model, request.model_factory) != "onnx":
        raise exc
    try:
        return _convert(request, options.with_values({("quantize", "quantization"): "int8"}), fallback,
                        stem_for=exc)
    except BudgetExceeded:
        raise
    except EdgeSDKError as missed:
        if missed is exc:
            raise
        reasons = ((getattr(missed, "figures", None) or {}).get("gate") or {}).get("reasons") \
            or [first_line(missed)]
        exc.args = (f"{exc} With its first layers on the host in float, the rest int8 on {request.profile.name}: "
                    f"{reasons[0][:200]}",)
        raise _release_frames(exc) from None


@dataclass
class ConversionRun:
    """One conversion under way: what it converts, for which target, with which data, and what it has made so
    far. The stages of `_convert` read it and add to it; the helpers below take it whole."""

    request: _Request
    options: ConvertOptions
    recipe: object
    metric: object
    out_dir: Path
    source: object = None
    route: object = None
    layout: str = ""
    calib: object = None
    val: object = None
    held_out: bool = False
    tune: object = None           # fine-tuning data, or a training callback
    sampling: dict | None = None
    trainer: object = None        # the route's quantization-aware trainer, when the ladder could use it
    auto_calibration: tuple = ()
    final: Path | None = None
    cache_key: str = ""
    tmp: Path | None = None       # the artifact being made, under a temporary name beside `final`
    reference: list | None = None  # the source's outputs on the validation data
    reference_key: tuple = ()     # ... by (source, data)
    # what the stages made
    pruning: dict | None = None
    pruned_outputs: list | None = None
    pruned_passed: bool = True
    pruned_figures: dict = field(default_factory=dict)
    training: object = None       # the ladder's training rung, while it has one to climb
    trained: dict | None = None   # what --qat trained
    tail: dict | None = None      # a detector head's merging kept in float
    stem: object = None           # a host_stem.Stem: the first layers run on the host in float
    original_source: object = None  # with a stem on the host, the model the user gave (`source` is the rest)
    raises_next: bool = False     # a refusal is followed by the higher precision it measured passing
    rounding: dict | None = None  # what --weight-rounding auto measured
    calibrated: dict | None = None  # what --calibration-method auto measured
    ladder_roundings: tuple = ()  # under --weight-rounding auto, the roundings the ladder tries (int8 missed)
    recovery: dict | None = None
    skewed: list = field(default_factory=list)  # inputs (by index) whose range int8 cannot hold
    figures: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)

    @property
    def profile(self):
        return self.request.profile

    @property
    def progress(self) -> Progress:
        return self.request.progress

    @property
    def io(self):
        return _model_io(self.source)

    def validate(self, path: Path, recipe, samples: int | None = None) -> tuple:
        """(figures, verdict) of the artifact at `path`, made with `recipe`, on the validation data (its first
        `samples` only, where given: a ranking, not a verdict)."""
        if samples is None or samples >= len(self.val):
            key = (sha256_file(path), self.reference_key, self.layout, recipe.format, recipe.task,
                   recipe.int8_arithmetic, repr(recipe.thresholds()), repr(self.metric))
            if key not in self.request.judged:
                judged = _validate(path, self.reference, self.val, recipe, self.progress, self.source, self.layout,
                                   self.metric)
                self.request.judged = {key: judged}
            return copy.deepcopy(self.request.judged[key])  # the stages add to the figures they get
        return _validate(path, [r[:samples] for r in self.reference], self.val.subset(np.arange(samples)), recipe,
                         self.progress, self.source, self.layout, self.metric)


def _convert(request: _Request, options: ConvertOptions, fallback: dict | None = None,
             precision: dict | None = None, stem_for=None, raises_next: bool = False) -> Artifact:
    """One conversion, its format and precision settled, in its stages: prepare, convert, judge, recover,
    explain, place. Everything is made under a temporary name and placed only at the end. stem_for: the
    refusal of int8 made whole; this conversion runs the source's stem on the host (or raises that refusal).
    raises_next: a refusal is followed by making the higher precision it measured passing (_higher_precision)."""
    run = _prepare(request, options)
    run.raises_next = raises_next
    if stem_for is not None:
        _move_stem_to_host(run, stem_for)
    cached = _cached_verdict(run)
    if cached is not None:
        return cached
    seconds = {}
    request.attempts.append({"format": run.recipe.format, "quantization": run.recipe.quantization,
                             "seconds": seconds})

    def timed(stage, fn, *args):  # what each stage cost, recorded in the manifest (`timing`)
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            seconds[stage] = round(time.monotonic() - started, 1)
    run.reference_key = reference_key = (run.source.sha256, data_fingerprint(run.val))
    if reference_key not in request.references:
        run.progress.step(f"computing reference outputs on {len(run.val)} validation samples")
        request.references = {reference_key: timed("reference", _reference_outputs, run)}  # the last source's only
    run.reference = request.references[reference_key]
    # Pruning works on the live model; a caller's in-memory model gets its weights back.
    given, snapshot, pruner = run.source.model, None, None
    if run.recipe.sparsity:
        from edgesdk.converters import get_pruner
        pruner = get_pruner(run.source.framework)
        snapshot = pruner.snapshot(given) if run.source.path is None else None
    if run.auto_calibration:  # made with the first; the others measured beside it once the rounding is chosen
        run.recipe = replace(run.recipe, calibration_method=run.auto_calibration[0])
    run.tmp = temp_path_in(run.out_dir, run.final.name)
    if run.trainer is not None:
        from .recovery import Training
        # a model about to be pruned teaches with its float outputs, taken now
        run.training = Training(run.trainer, run.tune, run.source.predict(run.tune.x)[0]
                                if run.recipe.sparsity and run.recipe.distill else None)
    try:
        timed("convert", _make, run, pruner)
        timed("validate", _judge, run)  # the auto choices' trials included
        timed("recover", _recover_stage, run)
        info, compat = timed("explain", _explain, run)
        return _place(run, info, compat, fallback, precision)
    finally:
        if run.tmp.exists():
            run.tmp.unlink()
        if snapshot is not None:
            pruner.restore(given, snapshot)


def _prepare(request: _Request, options: ConvertOptions) -> ConversionRun:
    """The recipe, the source, its route, the data: everything checked before anything is made."""
    from edgesdk.converters import get_route
    progress, model = request.progress, request.model
    calibration, validation, inputs = request.calibration, request.validation, options.inputs
    run = ConversionRun(request, options, make_recipe(request.profile, options), load_metric(options.metric),
                        ensure_writable_dir(request.output_dir))
    recipe = run.recipe
    if recipe.quantization == "int8" and calibration is None:
        raise DataError("Full-integer quantization needs representative calibration data to set activation "
                        "ranges: pass --calibration DATA (an .npz with 'x', an .npy or an image folder).")

    progress.step(f"loading {model if isinstance(model, (str, Path)) else type(model).__name__}")
    from edgesdk.sources.data import sample_shapes
    run.source = source = load_source(
        model, unsafe=request.unsafe, input_shape=inputs.input_shape, example_input=request.example_input,
        model_factory=request.model_factory, input_values=inputs.input_values, stateful=inputs.stateful,
        data_shapes=sample_shapes(calibration if calibration is not None else validation))
    run.route = route = get_route(source.framework, recipe.format)
    methods = route.calibration_methods
    if recipe.calibration_method not in ("auto",) + methods:
        listed = " or ".join(filter(None, (", ".join(("auto",) + methods[:-1]), methods[-1])))
        raise OptionError(f"--calibration-method {recipe.calibration_method} is not available from "
                          f"{source.framework} to {recipe.format}: this route calibrates with {listed}.")
    run.auto_calibration = route.auto_methods if recipe.calibration_method == "auto" else ()
    if recipe.activations == "int16" and not route.int16_activations:
        raise OptionError(f"The route from {source.framework} to {recipe.format} makes int8 activations only "
                          f"(int16 ones are made for ONNX artifacts and TFLite ones); "
                          f"use --format onnx, or drop --activations.")
    if recipe.activations == "int16" and (recipe.exclude_nodes or recipe.exclude_op_types) \
            and not route.int16_keeps_float:
        raise OptionError(f"The route from {source.framework} to {recipe.format} keeps layers in float beside int8 "
                          f"activations only; drop --activations int16 or --exclude-nodes/--exclude-op-types.")
    if source.multi_input and not route.multi_input:
        raise ConversionError(f"'{source.name}' has {len(source.inputs)} inputs "
                              f"({', '.join(s.name for s in source.inputs)}); the route from {source.framework} "
                              f"to {recipe.format} takes single-input models only.")
    if source.multi_input and recipe.sparsity:
        raise OptionError(f"--prune on a model with several inputs is not supported yet; convert "
                          f"'{source.name}' without --prune.")
    run.layout = artifact_layout(source.layout, recipe.layout)
    _load_data(run)
    stem = request.name or source.name
    run.final = run.out_dir / f"{stem}.{request.profile.name}.{run.recipe.format}"
    run.cache_key = _cache_key(source, request.profile, run.recipe, run.calib, run.val, run.tune, run.metric,
                               options.recover)
    return run


def _move_stem_to_host(run: ConversionRun, refusal) -> None:
    """The run made to convert the rest of the network after its stem, fed the stem's float outputs (the
    host's share, host_stem.py); `refusal` raised where the graph has no stem to cut."""
    from edgesdk.converters import get_route
    from edgesdk.converters.float_onnx import float_onnx
    from .host_stem import cut, feed
    source = run.source
    stem = None if source.stateful or source.fixed or source.multi_input else cut(float_onnx(source))
    if stem is None:
        raise refusal
    run.progress.warn(f"int8 misses the gate on {run.profile.name}, which computes nothing in float: making it "
                      f"again with {stem.label} run on the host in float, the rest int8 on the target")
    rest = load_source(str(stem.rest))
    rest.name, rest.image_hw = source.name, _model_io(source).input_hw
    if rest.layout is None and len(rest.input_shape) == 4:
        rest.layout = "NCHW"  # a convolution's maps: the artifact takes them as its route takes images
    bar = run.progress.bar("running the stem")
    calib = feed(stem, run.calib, bar)
    val = calib if run.val is run.calib else feed(stem, run.val, bar)
    run.original_source, run.source, run.stem, run.calib, run.val = source, rest, stem, calib, val
    run.route = get_route(rest.framework, run.recipe.format)
    run.layout = artifact_layout(rest.layout, run.recipe.layout)
    run.tune, run.trainer, run.skewed = None, None, []
    run.cache_key = _cache_key(rest, run.request.profile, run.recipe, calib, val, None, run.metric,
                               run.options.recover)


def _load_data(run: ConversionRun) -> None:
    """Calibration, validation (held out of labelled calibration data when none is given) and fine-tuning data,
    read for the source's inputs; the checks that need them."""
    request, source, progress, gate = run.request, run.source, run.progress, run.options.gate
    calibration, validation, fine_tune = request.calibration, request.validation, request.fine_tune
    preprocess = run.recipe.preprocess
    calib = val = tune = None
    if calibration is not None:
        calib = load_for(source, calibration, preprocess=preprocess, what="calibration data")
    if validation is not None:
        val = load_for(source, validation, preprocess=preprocess, what="validation data")
        run.held_out = True
    elif calib is not None and calib.labels is not None:
        calib, val = split_holdout(calib, contiguous=bool(source.stateful))
        run.held_out = True
        progress.step(f"holding out {len(val)} labelled calibration samples for validation")
    elif calib is not None:
        val, run.held_out = calib, False
        progress.warn("no --validation data and the calibration data has no labels: validating against the "
                      "source model's own predictions on the calibration samples (not held out).")
    else:
        raise DataError("Validation needs data: pass --validation DATA (or --calibration DATA).")
    if gate.max_accuracy_drop is not None and val.labels is None:  # a budget the gate can use without labels
        run.recipe = _drop_as_agreement(run.recipe, gate.max_accuracy_drop, gate.min_agreement, progress)
    recipe = run.recipe
    if source.stateful:  # each a sequence from a zero state; calibration sees the states met on the way
        progress.step(f"running the source over the data as a sequence (state {', '.join(source.stateful)})")
        calib = _with_states(source, calib)
        val = calib if val is calib else _with_states(source, val)
    if calib is not None:
        calib, run.sampling = representative(calib, recipe.calibration_samples)
    if calib is not None and len(calib) < FEW_CALIBRATION_SAMPLES:
        progress.warn(f"only {len(calib)} calibration samples: activation ranges estimated from fewer than "
                      f"{FEW_CALIBRATION_SAMPLES} samples often clip real inputs and cost accuracy; "
                      f"give a few hundred representative samples.")
    if calib is not None and recipe.quantization == "int8" and recipe.activations == "int8":
        run.skewed = _skewed_inputs(source, calib, progress)
    if callable(fine_tune):
        tune = fine_tune  # a training callback (PyTorch): fine_tune(model, epoch)
    elif fine_tune is not None:
        tune = load_for(source, fine_tune, preprocess=preprocess, what="fine-tuning data")
    if recipe.distill and (tune is None or callable(tune)):
        raise OptionError("--distill fine-tunes (pruning, or quantization-aware training) on --fine-tune DATA with "
                          "the float source as its teacher: give --fine-tune DATA (a training callback brings its "
                          "own loss).")
    trainer, untrainable = _qat_trainer(source, recipe, tune, run.options.recover or recipe.qat)
    if recipe.qat and trainer is None:
        raise OptionError(f"--qat trains the model quantization-aware on labelled --fine-tune DATA, and "
                          f"{untrainable if tune is not None else 'none was given'}. Drop --qat, or give "
                          f"--fine-tune DATA with a model it can train (Keras to TFLite; PyTorch to TFLite or ONNX).")
    if recipe.sparsity == 0 and tune is not None and trainer is None:
        progress.warn(f"--fine-tune is used for pruning (--prune) and for quantization-aware training when int8 "
                      f"misses the gate, and {untrainable}: ignoring it.")
    run.calib, run.val, run.tune, run.trainer = calib, val, tune, trainer


def _cached_verdict(run: ConversionRun) -> Artifact | None:
    """The artifact already made from the same source, data and recipe (or its kept failure, raised again)."""
    final, progress = run.final, run.progress
    cached = _cached(final, run.cache_key, failed_too=run.options.keep_failed)
    if cached is None or run.request.force:
        return None
    if not cached.manifest["validation"].get("passed"):  # a kept failure is the same verdict, not redone
        progress.step(f"up to date: {final} failed validation with the same source, data and recipe")
        from edgesdk.judge.validation import raise_if_failed
        figures = cached.manifest["validation"]
        try:
            raise_if_failed(figures, {k: figures.get(k) for k in ("verdict", "passed", "reasons")},
                            artifact_kept=str(final))
        except EdgeSDKError as exc:
            exc.cached = True
            raise
    progress.step(f"up to date: {final} (same source, data and recipe)")
    return cached


def _make(run: ConversionRun, pruner) -> None:
    """Prune, train (--qat), cut a detector's tail, convert through the route: the artifact in `run.tmp`."""
    source, progress, tune, profile = run.source, run.progress, run.tune, run.profile
    recipe = run.recipe
    if recipe.sparsity:
        progress.step(f"pruning to {recipe.sparsity:.0%} sparsity" + (
            f", fine-tuning {recipe.epochs} epoch(s)" + ("" if callable(tune) else f" on {len(tune)} samples")
            if tune is not None else ""))
        run.pruning = pruner.prune(source, recipe.sparsity, tune, epochs=recipe.epochs, distill=recipe.distill,
                                   batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                                   log=progress.warn)
        run.pruned_outputs = source.predict(run.val.x)
    if recipe.qat:  # asked for: the trained model is converted in the source's place (this run's copy)
        progress.step(f"training {recipe.epochs} epoch(s) quantization-aware on {len(tune)} samples"
                      + (", the float source teaching" if recipe.distill else ""))
        source.model, run.trained = run.trainer.train(source, tune, recipe, run.training.teacher)
        source.derived = {}  # any float graph a route made so far is the model before training
        run.training = None  # the ladder has no training rung left to climb
    run.recipe = recipe = _cut_detector_tail(run)
    try:
        run.route.prepare(source, recipe, run.calib, step=progress.step)
        precision = "int8 weights, int16 activations," if recipe.quantization == "int8" \
            and recipe.activations == "int16" else recipe.quantization
        progress.step(f"converting to {precision} {recipe.format} for {profile.name}")
        # a detector head found in the float graph the route quantizes (an ONNX source's) is kept in float by
        # the first quantization; a route that exports its graph while converting re-quantizes once it has one
        graph_first = bool(source.float_onnx)
        tail = _detector_tail(run, source.float_onnx) if graph_first else None
        kept = _convert_keeping(run, tail.applied(recipe), tail, run.route.convert) if tail else None
        if kept is None:
            run.tmp.write_bytes(run.route.convert(source, recipe, run.calib, progress=progress.bar("calibrating"),
                                                  profile=profile))
        run.recipe, run.tail = kept or (recipe, None)
        recipe = run.recipe
        _refuse_unquantized(run.tmp, recipe)
        # the family's promise (full int8 on a Pi, ops TensorRT parses), before any minute is spent validating
        # and recovering an artifact it refuses anyway (the speaker encoder's ABS: 11 minutes of ladder first)
        made = describe(run.tmp, fmt=recipe.format)
        get_family(profile.family).check(made, profile, recipe)
    except ConversionError as exc:  # the route failed on this graph: another format may not (convert's fallback)
        exc.route_failed = True
        raise
    if (recipe.exclude_nodes or recipe.exclude_op_types) and recipe.format == "tflite" \
            and not made["coverage"]["float_ops"]:
        raise OptionError("--exclude-nodes/--exclude-op-types matched nothing in the graph: use the layer "
                          "names the validation error lists (TFLite tensor names) or TFLite op types.")
    if not graph_first:
        tail = _detector_tail(run, run.tmp)
        run.recipe, run.tail = (tail and _convert_keeping(run, tail.applied(recipe), tail, run.route.again)) \
            or (recipe, None)


def _judge(run: ConversionRun) -> None:
    """The gate's figures and verdict, after the auto choices measured theirs; what pruning alone cost."""
    run.progress.step("validating against the source model")
    try:
        first = run.validate(run.tmp, run.recipe)
    except ConversionError as exc:  # the runtime refuses what the route made: another format may run
        exc.route_failed = True
        raise
    if _ladder_runs(run, *first):  # the auto choices' alternatives are its first rungs, judged as rungs are
        auto = run.recipe.weight_rounding == "auto"
        run.ladder_roundings = ("corrected",) if auto and run.route.corrected_rounding else ()
        run.recipe = replace(run.recipe, weight_rounding="nearest") if auto else run.recipe
        run.figures, run.verdict = first
    else:
        run.recipe, *first, run.rounding = _choose_rounding(run, first)
        run.recipe, run.figures, run.verdict, run.calibrated = _choose_calibration(run, tuple(first))
    if run.pruning:  # separates what pruning cost from what quantization cost
        from edgesdk.judge.validation import gate, judge
        after = judge(run.reference, run.pruned_outputs, run.val.labels, io=run.io, task=run.recipe.task,
                      thresholds=run.recipe.thresholds())
        run.pruned_passed = gate(after)["passed"]
        run.pruned_figures = {"pruned_source_accuracy": after["artifact_accuracy"],
                              "pruned_source_top1_agreement": after["top1_agreement"]}
        run.figures.update(run.pruned_figures)


def _ladder_runs(run: ConversionRun, figures: dict, verdict: dict) -> bool:
    """int8 that misses the gate climbs the recovery ladder, unless --no-recover."""
    return _misses(figures, verdict) and run.recipe.quantization == "int8" and run.options.recover


def _recover_stage(run: ConversionRun) -> None:
    """The recovery ladder where _ladder_runs says it climbs; after pruning that the float model already pays
    for, only its training rung (or a note that nothing int8 can pass)."""
    if not _ladder_runs(run, run.figures, run.verdict):
        return
    if run.pruned_passed or run.training is not None:  # only training can give back what pruning took
        _recover(run)
        run.figures.update(run.pruned_figures)
    else:
        run.figures["recovery_note"] = (" The pruned float model already misses the gate, so no int8 recipe can "
                                        "pass: the recovery ladder was not tried (with a Keras source going to "
                                        "TFLite, labelled --fine-tune DATA adds quantization-aware training, "
                                        "which can).")


def _explain(run: ConversionRun) -> tuple:
    """The family's check of the artifact; for one that fails, the layers that lose the most and what would
    pass instead. (the artifact's description, the family's report)"""
    recipe, figures, progress = run.recipe, run.figures, run.progress
    info = describe(run.tmp, fmt=recipe.format)
    try:
        compat = get_family(run.profile.family).check(info, run.profile, recipe)
    except ConversionError as exc:  # this route cannot keep the profile's promise (full int8): another format may
        exc.route_failed = True
        raise
    from edgesdk.judge.validation import describe as describe_figures
    progress.step(f"validation: {describe_figures(figures)}")
    if run.verdict["verdict"] == "fail" and recipe.quantization == "int8" and "worst_layers" not in figures:
        progress.step("finding the layers that lose the most to quantization")
        from .diagnosis import diagnose
        figures["worst_layers"], figures["worst_layers_hint"] = diagnose(run)
    if not run.verdict["passed"] and recipe.quantization != "float" and run.pruned_passed:  # say what would pass
        figures["would_pass"] = _what_would_pass(run)
        if figures["would_pass"]:
            figures["recovery_note"] = figures.get("recovery_note", "") + " " + " ".join(
                w["says"] for w in figures["would_pass"])
    return info, compat


def _place(run: ConversionRun, info: dict, compat: dict, fallback: dict | None, precision: dict | None) -> Artifact:
    """The manifest written, the family's compile step run, and everything renamed into place together; a
    failure raised with the figures (kept, marked failed, under --keep-failed)."""
    from edgesdk.judge.validation import raise_if_failed
    final, out_dir, figures, verdict = run.final, run.out_dir, run.figures, run.verdict
    manifest = _manifest(final, run.tmp, run.original_source or run.source, run.profile, run.recipe, run.calib,
                         run.val, run.held_out, run.tune, run.cache_key, info, compat, figures, verdict, run.pruning,
                         run.progress.warnings, run.sampling)
    manifest["interface"], host_tail, host_tail_graph = _interface_record(run)
    manifest["quantization"]["detector_tail"] = run.tail or host_tail
    if run.stem is not None:
        manifest["interface"]["stem"] = {"file": stem_file(final).name, "inputs": list(run.stem.inputs),
                                         "outputs": list(run.stem.outputs)}
        manifest["host_stem"] = {"file": stem_file(final).name, "sha256": sha256_file(run.stem.graph),
                                 "what": run.stem.label, "cut": list(run.stem.outputs),
                                 "why": "int8 missed the gate and the target computes nothing in float: the host "
                                        "runs these first layers in float ('file', an ONNX graph taking the "
                                        "source's inputs) and feeds their outputs to the artifact"}
    if run.rounding:
        manifest["quantization"]["weight_rounding"]["auto"] = run.rounding
    if run.calibrated:
        manifest["quantization"]["calibration_auto"] = run.calibrated
    manifest["recovery"] = run.recovery
    manifest["format_fallback"] = fallback
    manifest["precision_fallback"] = precision
    manifest["options"] = run.request.asked.to_dict()
    manifest["timing"] = run.request.attempts  # every attempt of this convert call, in order, this one last
    manifest["quantization"]["aware_training"] = run.trained or _trained_rung(run.recovery)
    if not verdict["passed"] and not run.options.keep_failed:
        raise_if_failed(figures, verdict, earlier=str(final) if final.exists() else None)
    family = get_family(run.profile.family)
    replaced, moved = False, []
    try:
        with temp_dir_in(out_dir, f"edgesdk-{family.name}") as work:
            compiled = None
            if verdict["passed"]:  # the family's compile step, on the artifact under its final name
                staged = Path(work) / "artifact" / final.name
                staged.parent.mkdir()
                shutil.copyfile(run.tmp, staged)
                compiled = family.compile(staged, compat, Path(work), run.progress)
                if compiled is not None:
                    manifest[compiled.manifest_key] = compiled.record
            produced_files = list(compiled.files if compiled else [])
            if host_tail_graph is not None:  # the tail goes with the artifact, renamed in with it
                produced_files.append(Path(work) / tail_file(final).name)
                shutil.copyfile(host_tail_graph, produced_files[-1])
            if run.stem is not None:  # so does a stem
                produced_files.append(Path(work) / stem_file(final).name)
                shutil.copyfile(run.stem.graph, produced_files[-1])
            os.replace(run.tmp, final)
            replaced = True
            for produced in produced_files:
                os.replace(produced, out_dir / Path(produced).name)
                moved.append(out_dir / Path(produced).name)
            write_json_atomic(manifest_path_for(final), manifest)
            replaced = False  # both in place
    finally:
        if replaced:  # the manifest could not be written: an artifact without one is half-written
            final.unlink()
            for path in moved:
                path.unlink(missing_ok=True)
    raise_if_failed(figures, verdict, artifact_kept=str(final))
    return Artifact(final, manifest)


WOULD_PASS_SAMPLES = 64
SKEWED_SHARE = 0.5  # an input this much of which int8 turns into zero (not zeros already) has lost it there
SKEW_VALUES = 1 << 20  # values enough to tell that share (200 photos are 30 M values: 1.5 s)


def _skewed_inputs(source, calib, progress) -> list:
    """Inputs (their indices) whose range int8 cannot hold, found before quantizing and said by name: one scale
    over a long tail (mel energies 0..20 with a median of 6e-5) puts most values in the zero point's step. The
    recovery ladder's first rung keeps the layers that read them in float (resemblyzer's encoder: cosine 0.53
    with its int8 input)."""
    from edgesdk.sources.inputs import Inputs
    arrays = calib.x.arrays if isinstance(calib.x, Inputs) else {source.inputs[0].name: calib.x}
    order = [i.name for i in source.inputs]
    skewed = []
    for name, x in arrays.items():
        x = np.asarray(x[:256])
        if name in source.fixed or name in source.stateful or not np.issubdtype(x.dtype, np.floating) or not x.size:
            continue
        lo, hi = float(min(x.min(), 0.0)), float(max(x.max(), 0.0))  # the quantizer's range holds zero
        step = (hi - lo) / 255
        if step <= 0:
            continue
        zero = round(-lo / step)
        if x.size > SKEW_VALUES:  # the share, from values drawn at random (a stride could fall on one feature)
            x = x.reshape(-1)[np.random.default_rng(0).integers(0, x.size, SKEW_VALUES)]
        share = float(np.mean((np.round((x - lo) / step) == zero) & (x != 0)))  # values int8 turns into zero
        if share >= SKEWED_SHARE:
            skewed.append(order.index(name) if name in order else 0)
            progress.warn(f"input '{name}' spans {lo:.3g}..{hi:.3g} with a median of {float(np.median(x)):.3g}: "
                          f"in int8 {share:.0%} of its values, none of them zero, become zero (a long tail or a "
                          f"log-scale feature). If the gate refuses int8, recovery first keeps the layers that "
                          f"read it in float (CPU and GPU targets); normalising it (a log, a per-feature scale) "
                          f"before the model helps any artifact.")
    return skewed


def _misses(figures: dict, verdict: dict) -> bool:
    """The artifact misses the gate: a check failed, or one is inconclusive with its figure on the wrong side
    of the threshold (PP-OCRv4's recognizer in int8: 2.4 % CER, 1.8..2.9 %, against 2 %). The recovery ladder
    looks for a recipe that passes outright; an inconclusive figure on the right side only needs samples."""
    if verdict["verdict"] == "fail":
        return True
    return verdict["verdict"] == "inconclusive" and any(
        c["value"] is not None and (c["value"] < c["threshold"] if c["at_least"] else c["value"] > c["threshold"])
        for c in figures["checks"] if c["verdict"] == "inconclusive" and "value" in c)


def _what_would_pass(run: ConversionRun) -> list:
    """When an artifact misses the gate, the family's higher precisions (fp16, then float), each made and judged
    by the same gate on a subset of the validation data (all of it where the first that passes is made next):
    what a refusal can say would pass, with its figures."""
    from edgesdk.judge.validation import describe as describe_figures
    tmp, route, source, recipe, profile = run.tmp, run.route, run.source, run.recipe, run.profile
    calib, val, progress = run.calib, run.val, run.progress
    family = get_family(profile.family)
    # where the refusal is not the answer, the first that passes is made next and judged in full: judged in full
    # here, once (ConversionRun.validate); else a subset tells what would pass
    n = len(val) if run.raises_next else min(len(val), WOULD_PASS_SAMPLES)
    out = []
    higher = QUANTIZATIONS[QUANTIZATIONS.index(recipe.quantization) + 1:]  # more bits than what missed
    for quantization in [q for q in family.computes_in(recipe.format) if q in higher]:
        other = replace(recipe, quantization=quantization, input_dtype="float32", output_dtype="float32",
                        activations="int8", exclude_nodes=(), exclude_op_types=(), weight_rounding="nearest")
        progress.step(f"{recipe.quantization} misses the gate: making {quantization} to measure it on {n} samples")
        trial = temp_path_in(tmp.parent, f"{tmp.name}.{quantization}")
        try:
            trial.write_bytes(route.again(source, other, calib, progress=progress.bar("converting"),
                                          profile=profile))
            figures, verdict = run.validate(trial, other, n)
        except BudgetExceeded:
            raise
        except EdgeSDKError as exc:
            progress.warn(f"could not measure {quantization}: {first_line(exc)[:200]}")
            continue
        finally:
            if trial.exists():
                trial.unlink()
        passed = verdict["verdict"] == "pass"
        how = {"pass": "passes", "fail": "does not pass either"}.get(verdict["verdict"], "is inconclusive")
        out.append({"quantization": quantization, "samples": n, "verdict": verdict["verdict"],
                    "says": f"{quantization} {how} on {n} of these samples ({describe_figures(figures)})"
                            + (f": --quantization {quantization} makes it (`edgesdk tune` measures which is "
                               f"faster on your board)." if passed else ".")})
        if passed:
            break  # the cheapest precision that passes is the one to name
    return out


def _refuse_unquantized(path: Path, recipe) -> None:
    """int8 asked for and not one op quantized (a graph inside If branches the quantizer does not enter)
    is not an int8 artifact, whatever the gate says of its outputs."""
    if recipe.quantization != "int8":
        return
    cov = describe(path, fmt=recipe.format)["coverage"]
    if cov["int8_ops"] or cov.get("int16_ops"):
        return
    control = sorted(set(cov["op_histogram"]) & {"If", "Loop", "Scan", "WHILE", "IF"})
    why = (f" The graph's work sits inside {'/'.join(control)} branches, which the quantizer does not enter."
           if control else "")
    raise ConversionError(f"int8 was asked for, but the quantizer left all {cov['ops']} ops in float: the result "
                          f"would be a float model labelled int8.{why} Convert with --quantization float (or "
                          f"fp16), or export the model without control flow (fixed sizes, one branch). "
                          f"Nothing was written.")


def _with_states(source, ds):
    if ds is None:
        return None
    return replace(ds, x=source_states(source, ds.x)[0])


def _detector_tail(run: ConversionRun, graph):
    """The Concat where a detector head merges pixel boxes and 0..1 scores in one tensor, found in this ONNX
    graph (the float one or the artifact: their nodes keep their names), to be kept in float; else None.

    One int8 scale for both crushes the scores (recall 0.11 on the YOLOv8-style head). ONNX artifacts only:
    a TFLite artifact's int8 output tensor would share the one scale anyway, and the Edge TPU runs no float.
    """
    from .mixed_precision import detector_tail
    recipe = run.recipe
    if recipe.quantization != "int8" or recipe.format != "onnx" or not run.route.excludes_layers \
            or not get_family(run.profile.family).runs_float_ops(recipe.format):
        return None
    tail = detector_tail(graph, recipe.format, run.reference, _model_io(run.source), recipe.task)
    return None if tail is None or set(tail.nodes) <= set(recipe.exclude_nodes) else tail


def _convert_keeping(run: ConversionRun, recipe, tail, make) -> tuple | None:
    """The artifact in `run.tmp` made by the route's `make` with the detector head's `tail` kept in float
    (recipe: the run's with it applied): (recipe, what was kept), or None where the route could not keep it
    (said; the plain artifact is then the gate's to judge)."""
    progress = run.progress
    try:
        data = make(run.source, recipe, run.calib, progress=progress.bar("calibrating"), profile=run.profile)
    except EdgeSDKError as exc:
        progress.warn(f"could not keep the detector head's {tail.label} in float: {first_line(exc)[:200]}")
        return None
    progress.step(f"detector head: keeping {tail.label} in float, where boxes and scores meet, so each keeps "
                  f"its own int8 scale")
    run.tmp.write_bytes(data)
    return recipe, {"mode": "float", "nodes": list(tail.nodes), "why": "boxes and scores merged in one tensor"}


def _cut_detector_tail(run: ConversionRun):
    """A TFLite artifact of a detector whose head merges boxes and scores in one tensor stops before the
    head's post-processing (host_tail.py).

    Its outputs are int8 at the boundary and the Edge TPU runs nothing in float, so keeping the merging
    Concat in float (what ONNX artifacts do) is no answer: the artifact outputs the branches, each with its
    own scale, and the host runs the decode and the joins. Routes that can cut their source say cuts_tails;
    one that converts its framework's model (not the ONNX graph) has cut(source, outputs, calibration), which
    stops that model where the ONNX graph is cut.
    """
    source, recipe, route, reference, calib, progress = (run.source, run.recipe, run.route, run.reference,
                                                         run.calib, run.progress)
    if recipe.quantization != "int8" or not route.cuts_tails or recipe.host_tail:
        return recipe
    from .host_tail import cut_source, plan
    outputs = plan(source, reference, _model_io(source), recipe.task)
    if not outputs:
        return recipe
    try:
        cut_source(source, outputs)
        if route.cut is not None:
            route.cut(source, outputs, calib)
    except Exception as exc:  # onnx's extractor refused this graph: the artifact stays whole, the gate judges it
        progress.warn(f"could not cut the detector head's post-processing off for the host: {first_line(exc)[:200]}")
        return recipe
    progress.step(f"detector head: boxes and scores meet in {', '.join(outputs)}; the artifact stops before "
                  f"the head's post-processing, each branch with its own int8 scale, and the host finishes it")
    return replace(recipe, host_tail=outputs)


def _interface_record(run: ConversionRun) -> tuple:
    """(how edgesdk.load runs the artifact as its source (edgesdk.conversion.interface); for a cut artifact, how its
    outputs are finished into the source's, in its own names, and the tail graph to write beside it, else
    None, None), from one probe of the artifact."""
    from .interface import probe
    final = run.final
    record, tail_path = probe(run.tmp, run.source, run.recipe, run.layout, run.val.x, run.reference)
    if tail_path is None:
        return record, None, None
    record["tail"]["file"] = tail_file(final).name
    return record, {"mode": "host", "file": tail_file(final).name, "sha256": sha256_file(tail_path),
                    **{k: v for k, v in record["tail"].items() if k != "file"},
                    "why": "boxes and scores merged in one tensor: the artifact outputs the branches before the "
                           "head's post-processing, each with its own int8 scale; 'file' is that post-processing "
                           "as a float ONNX graph, fed the artifact's outputs as 'feed' names them"}, tail_path


def tail_file(final: Path) -> Path:
    """Where a cut artifact's host tail lives: NAME.PROFILE.tail.onnx beside it."""
    return final.with_suffix(".tail.onnx")


AUTO_BELOW_DB = 30.0  # int8 this close to the source has nothing another rounding or range could give back
AUTO_MARGIN_DB = 0.3  # the second choice is kept only when it measures at least this much better
AUTO_MARGIN_DETECTIONS = 0.01  # ... or, for a detector, when its F1 against the source is this much higher
RANKING_SAMPLES = 64  # the two auto choices are measured on this many first; a second whose SQNR interval there
# lies wholly below the first's is dropped, any other is validated in full and its full figures decide (on the
# PP-OCR classifier mse measured 1.5 dB lower on the first 64 crops and 0.5 dB higher on all 132: a point
# figure on a subset cannot rank them, only an interval that excludes it can)
RANKED_ABOVE = 4 * RANKING_SAMPLES  # ranking costs two subsets' validations: it pays only where the full one of
# the second is several times dearer (EfficientNet-Lite0, 200 photos: 2.2 s to rank, 3.4 s to validate in full)


def _choose_rounding(run: ConversionRun, first: tuple) -> tuple:
    """--weight-rounding auto: nearest, and the corrected rounding too where the route has it (_choose_measured;
    +5 dB on EfficientNet-Lite0's photos, -2 dB on PP-OCR's text crops: which wins depends on the model)."""
    recipe = run.recipe
    if recipe.weight_rounding != "auto":
        return recipe, *first, None
    nearest = replace(recipe, weight_rounding="nearest")
    if not run.route.corrected_rounding:
        return nearest, *first, None
    return _choose_measured(run, nearest, first, "weight_rounding", "corrected", "weight rounding")


def _choose_calibration(run: ConversionRun, first: tuple) -> tuple:
    """--calibration-method auto: `tmp` was calibrated with the first of the auto methods; the route's second
    is measured too (_choose_measured; mse over min/max: +1.6 dB and 1.5 points on PP-OCR's crops, -2.5 dB on
    the digit CNN: which wins depends on the model)."""
    if len(run.auto_calibration) < 2:
        return run.recipe, *first, None
    return _choose_measured(run, run.recipe, first, "calibration_method", run.auto_calibration[1], "calibration")


def _choose_measured(run: ConversionRun, recipe, first: tuple, option: str, alternative: str, what: str) -> tuple:
    """`tmp` was made with `recipe`. Where int8 costs something (the weakest output's SQNR under AUTO_BELOW_DB),
    the artifact with `option` = `alternative` is made too and judged by the same gate; it is kept when it
    passes where the first did not, or, both passing or both failing, when it measures better (_ranks_higher).
    With more than RANKED_ABOVE validation samples (not a detector, not a stateful model), both are
    measured on the first RANKING_SAMPLES, and a second that is clearly worse there (_clearly_worse) is not
    validated in full.
    Returns (the recipe as chosen, figures, verdict, what was tried or None); `tmp` holds the chosen artifact."""
    from .mixed_precision import Trials
    tmp, source, profile, calib, progress = run.tmp, run.source, run.profile, run.calib, run.progress
    figures, verdict = first
    sqnr = weakest_sqnr(figures)
    if recipe.quantization != "int8" or sqnr is None or sqnr >= AUTO_BELOW_DB:
        return recipe, figures, verdict, None
    plain, other = getattr(recipe, option), replace(recipe, **{option: alternative})
    kept_rounding = source.weight_rounding  # what the artifact in `tmp` records of its rounding
    progress.step(f"int8 SQNR {sqnr:.1f} dB at its weakest output: measuring {alternative} {what} too")
    record = {"chosen": plain, plain: _tried({**figures, **verdict})}
    trial = temp_path_in(tmp.parent, f"{tmp.name}.{alternative}")
    try:
        data = Trials(source, recipe, profile, calib, progress.bar("calibrating")).convert(other)
        if data == tmp.read_bytes():  # nothing it applies to (no kernels it rounds, no inner tensors)
            source.weight_rounding = kept_rounding
            return recipe, figures, verdict, None
        trial.write_bytes(data)
        # a detector's F1 has no interval here; a stateful model's samples are one sequence, so its first 64
        # steps are one stretch of it (Silero VAD: corrected rounding clearly worse there, better on all 555)
        dropped = False
        if len(run.val) > RANKED_ABOVE and detections(figures) is None and not run.io.states:
            ranked = [run.validate(path, r, RANKING_SAMPLES) for path, r in ((tmp, recipe), (trial, other))]
            dropped = _clearly_worse(ranked[1][0], ranked[0][0])
            if dropped:  # both recorded on the samples that ranked them
                progress.step(f"{alternative} {what} measures clearly worse on {RANKING_SAMPLES} samples: "
                              f"keeping {plain}")
                record = {"chosen": plain, "ranked_on": RANKING_SAMPLES,
                          **{r: _tried({**f, **v}) for r, (f, v) in zip((plain, alternative), ranked)}}
        if not dropped:
            tried, judged = run.validate(trial, other)
            record[alternative] = _tried({**tried, **judged})
            if _ranks_higher(tried, judged, figures, verdict):
                os.replace(trial, tmp)
                f1 = detections(tried), detections(figures)  # what a detector's choice was made by
                progress.step(f"{alternative} {what} kept: " + (f"detection F1 {f1[0]:.3f} against {f1[1]:.3f}"
                              if None not in f1 else f"{weakest_sqnr(tried):.1f} dB against {sqnr:.1f} dB"))
                return other, tried, judged, {**record, "chosen": alternative}
    except EdgeSDKError as exc:  # the first artifact stands
        progress.warn(f"could not measure {alternative} {what}: {first_line(exc)[:200]}")
    finally:
        if trial.exists():
            trial.unlink()
    source.weight_rounding = kept_rounding
    return recipe, figures, verdict, record


def _clearly_worse(tried: dict, first: dict) -> bool:
    """Whether the weakest output's SQNR interval of `tried` lies wholly below that of `first`."""
    a, b = _weakest_interval(tried), _weakest_interval(first)
    return a is not None and b is not None and a[1] < b[0]


def _weakest_interval(figures: dict) -> list | None:
    """The bootstrap interval of the output (or detector channel) whose SQNR is the weakest."""
    weakest = weakest_sqnr(figures)
    entries = figures.get("outputs", []) + [c for h in figures.get("heads", []) if h.get("task") == "detect"
                                            for c in h.get("channels", {}).values()]
    return next((e.get("sqnr_db_interval") for e in entries if e.get("sqnr_db") == weakest), None)


def _ranks_higher(tried: dict, judged: dict, figures: dict, verdict: dict) -> bool:
    """Whether the second choice is kept: it passes where the first did not or, both passing or both failing,
    it measures better (_better)."""
    return (judged["passed"] and not verdict["passed"]) or (judged["passed"] == verdict["passed"]
                                                            and _better(tried, figures))


def _better(tried: dict, first: dict) -> bool:
    """Whether `tried` measures better than `first` by what the model is for: a detector by its F1 against the
    source's detections, anything else by its weakest output's SQNR, AUTO_MARGIN_DB higher, and a classifier
    also by its top-1 agreement, no lower (SQNR can rise while the near-ties fall the other way)."""
    if detections(first) is not None and detections(tried) is not None:
        return detections(tried) - detections(first) >= AUTO_MARGIN_DETECTIONS
    got, had = weakest_sqnr(tried), weakest_sqnr(first)
    if got is None or had is None or got - had < AUTO_MARGIN_DB:
        return False
    agreement = tried.get("top1_agreement"), first.get("top1_agreement")
    return None in agreement or agreement[0] >= agreement[1]


def weakest_sqnr(figures: dict) -> float | None:
    """The output SQNR, or a detector head's weakest channel's where that is lower: boxes in pixels outweigh
    0..1 scores in the whole output's figure (35 dB while the scores sit at 12 dB on the YOLOv8-style head)."""
    values = [figures.get("sqnr_db")] + [c.get("sqnr_db") for h in figures.get("heads", [])
                                         if h.get("task") == "detect" for c in h.get("channels", {}).values()]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def detections(figures: dict) -> float | None:
    """A detector's F1 against the source's detections (its worst head's), or None for a model that is not
    one: what its rounding is chosen by (a channel's SQNR can rise while the detections get worse, and recall
    can rise while precision falls further)."""
    heads = [h for h in figures.get("heads", []) if h.get("task") == "detect" and h.get("recall") is not None]
    f1 = [2 * h["recall"] * h["precision"] / (h["recall"] + h["precision"]) if h["recall"] and h["precision"]
          else 0.0 for h in heads]
    return min(f1) if f1 else None


def _tried(figures: dict) -> dict:
    """What the manifest keeps of one try."""
    return {k: figures[k] for k in ("sqnr_db", "top1_agreement", "passed") if figures.get(k) is not None}


def _trained_rung(recovery) -> dict | None:
    """What the recovery ladder's training rung trained, when that rung is the artifact."""
    applied = (recovery or {}).get("applied") or {}
    if applied.get("step") != "quantization-aware training":
        return None
    return next(r["training"] for r in recovery["rungs"] if r.get("applied"))


def _qat_trainer(source, recipe, tune, recover) -> tuple:
    """(the route's quantization-aware trainer when the ladder could use it, else None; why not, in words)."""
    from edgesdk.converters import get_qat_trainer
    trainer = get_qat_trainer(source.framework, recipe.format)
    if tune is None or callable(tune):
        return None, "it takes labelled data, not a training callback"
    if recipe.quantization != "int8" or not recover:
        return None, "the artifact is not int8" if recipe.quantization != "int8" else "--no-recover is set"
    why = (trainer.unavailable(source) if trainer else
           f"there is no quantization-aware training from {source.framework} to {recipe.format}")
    if why is None and tune.y is None:
        why = "the fine-tuning data has no labels"
    return (None, why) if why else (trainer, None)


def _recover(run: ConversionRun) -> None:
    """The recovery ladder; on success `tmp` holds the passing artifact, and the run its recipe and figures."""
    from . import recovery
    tmp, progress, training = run.tmp, run.progress, run.training
    only_training = not run.pruned_passed
    steps = (["weight rounding"] * bool(run.ladder_roundings) + ["calibration", "higher precision"]) \
        * (not only_training) + ["quantization-aware training"] * bool(training)
    progress.step(f"int8 missed the gate{' (so did the pruned float model)' if only_training else ''}: trying the "
                  f"recovery ladder ({', then '.join(steps)}; --no-recover to skip)")
    outcome = recovery.recover(run, only_training)
    run.recovery = record = recovery.summary(outcome)
    rung = outcome["rung"]
    run.source.weight_rounding = (rung or outcome["start"]).rounded  # the artifact's, not the last rung's
    if rung is None:
        if outcome["measured"]:  # else the diagnosis still ranks the layers
            run.figures["worst_layers"], run.figures["worst_layers_hint"] = outcome["measured"], outcome["hint"]
        run.figures["recovery"], run.figures["recovery_note"] = record, recovery.describe(outcome)
        return
    tmp.write_bytes(rung.data)
    progress.step(f"recovered: {rung.change}")
    run.recipe, run.figures, run.verdict = rung.recipe, rung.figures, rung.verdict


def _model_io(source):
    from edgesdk.judge.tasks import ModelIO
    shape = source.input_shape
    hw = source.image_hw
    if hw is None and source.layout == "NCHW" and len(shape) == 4:
        hw = tuple(shape[2:4])
    elif hw is None and source.layout == "NHWC" and len(shape) == 4:
        hw = tuple(shape[1:3])
    states = tuple(source.output_names.index(o) for o in source.stateful.values())
    return ModelIO(output_names=list(source.output_names), input_hw=hw, states=states)


def _validate(path: Path, reference, val, recipe, progress, source, layout, metric):
    """Judge the artifact at `path` as a user's code runs it: through the interface a probe finds
    (edgesdk.conversion.interface) and edgesdk.artifacts.runtime.Loaded, the class behind edgesdk.load."""
    from edgesdk.artifacts.runtime import Loaded, ONNXEngine
    from edgesdk.judge.validation import gate, judge
    from .interface import probe
    try:
        interface, tail_path = probe(path, source, recipe, layout, val.x, reference)
        engine = open_artifact(path, num_threads=os.cpu_count() or 1, delegates=True, format=recipe.format,
                               exact=recipe.int8_arithmetic == "exact")
        loaded = Loaded(engine, interface, ONNXEngine(tail_path) if tail_path else None)
        outs = loaded.predict(val.x, progress=progress.bar("validating"))
    except ModelLoadError as exc:  # the runtime refuses what the converter made (an XNNPACK kernel's limits)
        raise ConversionError(f"The converted {recipe.format} artifact does not run here: "
                              f"{first_line(exc).split(': ', 1)[-1][:300]} Nothing was written. If an op is "
                              f"named, keep it in float (--exclude-op-types OP --allow-float-fallback) or "
                              f"try --format onnx.") from None
    except EdgeSDKError:
        raise
    except Exception as exc:  # the converter wrote something its own runtime cannot run: a route bug
        first = first_line(exc)
        raise ConversionError(f"The converted {recipe.format} artifact does not run here: {first[:300]}. "
                              f"Nothing was written; please report it with the model.") from None
    matched = [{"artifact_name": o["artifact_name"], "matched_by": o["matched_by"],
                **({"layout": "NHWC"} if o.get("nchw") else {})} for o in interface["outputs"]]
    figures = judge(reference, outs, val.labels, io=_model_io(source), task=recipe.task,
                    thresholds=recipe.thresholds(), metric=metric, matched=matched)
    return figures, gate(figures)


def _cache_key(source, profile, recipe, calib, val, tune, metric=None, recover=True) -> str:
    parts = {
        "recover": bool(recover),  # a recovered artifact is not what --no-recover asked for
        "source": source.sha256, "profile": profile.to_dict(), "recipe": recipe.to_dict(),
        "calibration": data_fingerprint(calib) if calib is not None else None,
        "validation": data_fingerprint(val) if val is not None else None,
        # a training callback's effect cannot be fingerprinted: never a cache hit
        "fine_tune": (f"callback {os.urandom(8).hex()}" if callable(tune) else
                      data_fingerprint(tune) if tune is not None else None),
        "tools": tool_versions(),
        # the user's metric judges too: a different one is a different verdict
        "metric": f"{getattr(metric, '__module__', '')}.{getattr(metric, '__qualname__', repr(metric))}"
                  if metric is not None else None,
    }
    parts["profile"].pop("source", None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _drop_as_agreement(recipe, drop: float, min_agreement, progress):
    """--max-accuracy-drop needs labels; without them the gate measures agreement with the source, and a
    drop of D points allows at most D % of the source's answers to change: it becomes --min-agreement
    1 - D/100 (never stricter than the user's own --min-agreement)."""
    agreement = max(0.0, 1.0 - drop / 100.0)
    if min_agreement is not None:
        agreement = min(agreement, float(min_agreement))
    progress.warn(f"--max-accuracy-drop {drop:g} needs labelled validation data; these have no labels, so the "
                  f"gate judges top-1 agreement with the source instead, at least {agreement:.2%}.")
    return replace(recipe, gate=replace(recipe.gate, min_agreement=agreement))


def _cached(final: Path, cache_key: str, failed_too: bool = False) -> Artifact | None:
    """The artifact already at `final` from the same conversion; one that failed validation and was kept
    (--keep-failed) only when failed_too."""
    mp = manifest_path_for(final)
    if not (final.is_file() and mp.is_file()):
        return None
    try:
        manifest = json.loads(mp.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("cache_key") != cache_key or not (failed_too or manifest.get("validation", {}).get("passed")):
        return None
    if manifest.get("artifact", {}).get("sha256") != sha256_file(final):
        return None
    if "interface" not in manifest:
        return None  # made before edgesdk.load could run it as the source
    tail = (manifest.get("quantization") or {}).get("detector_tail") or {}
    if tail.get("file") and not (final.parent / tail["file"]).is_file():
        return None  # a cut artifact without its host tail is half of one
    if (manifest.get("host_stem") or {}).get("file") and not (final.parent / manifest["host_stem"]["file"]).is_file():
        return None  # nor is one without its stem
    return Artifact(final, manifest, cached=True)


def _data_entry(ds, used=None, **extra) -> dict:
    return {"source": ds.source, "samples": used if used is not None else len(ds), "labelled": ds.y is not None,
            "sha256": data_fingerprint(ds), "notes": ds.notes, **extra}


def _manifest(final, tmp, source, profile, recipe, calib, val, held_out, tune, cache_key, info, compat,
              figures, verdict, pruning, warnings, sampling=None) -> dict:
    sparsity = {"target": recipe.sparsity, "artifact": info["weight_sparsity"]["overall"],
                "artifact_layers": info["weight_sparsity"]["layers"]}
    if pruning:
        sparsity.update({"method": pruning["method"], "fine_tuned": pruning["fine_tuned"],
                         "epochs": pruning["epochs"], "source_after_pruning": pruning["achieved"],
                         "teacher": pruning.get("teacher"),
                         "pruned_source_accuracy": figures.get("pruned_source_accuracy")})
    cov = info["coverage"]
    return {
        "schema": MANIFEST_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgesdk": __version__,
        "cache_key": cache_key,
        "artifact": {"file": final.name, "sha256": sha256_file(tmp)},
        "format": recipe.format,
        "source": {**source.describe(), "notes": source.notes},
        "profile": profile.to_dict(),
        "recipe": recipe.to_dict(),
        "tools": tool_versions(),
        "data": {
            "calibration": _data_entry(calib, sampling=sampling) if calib else None,
            "validation": _data_entry(val, held_out=held_out),
            "fine_tune": ({"callback": getattr(tune, "__qualname__", repr(tune))} if callable(tune) else
                          _data_entry(tune) if tune is not None else None),
        },
        "sparsity": sparsity,
        "quantization": {"scheme": recipe.quantization, "input_dtype": recipe.input_dtype,
                         "output_dtype": recipe.output_dtype, "per_channel": recipe.per_channel,
                         "ops": cov["ops"], "int8_ops": cov["int8_ops"],
                         "int16_ops": cov.get("int16_ops", 0), "float_ops": cov["float_ops"],
                         "io_conversion_ops": cov["io_conversion_ops"], "qdq_ops": cov.get("qdq_ops"),
                         "calibration_method": recipe.calibration_method, "activations": recipe.activations,
                         "weight_rounding": {"mode": recipe.weight_rounding, **(source.weight_rounding or {})},
                         "excluded": {"nodes": list(recipe.exclude_nodes),
                                      "op_types": list(recipe.exclude_op_types)},
                         "op_histogram": cov["op_histogram"], "tensor_dtypes": info["tensor_dtypes"]},
        "size": {"bytes": info["size_bytes"], "gzip_bytes": gzip_size(tmp), "source_params": source.param_count},
        "inputs": info["io"]["inputs"],
        "outputs": info["io"]["outputs"],
        "layout": artifact_layout(source.layout, recipe.layout),
        "validation": {**figures, **verdict},
        "compatibility": compat,
        "warnings": list(warnings),
    }
