"""When int8 misses the gate: find a recipe that passes, cheapest first, and say what it cost.

The ladder; every rung is a candidate recipe judged by the same gate on the
same validation data:

  0. an input int8 cannot hold (a long tail, a log-scale feature, found
     before quantizing): the layers that first read it kept in float and
     the artifact's input float, where the profile lets anything stay float;
  a. the weights' rounding, under --weight-rounding auto: the corrected
     kind where the route has it (where int8 passes, auto measures it
     beside the gate instead); then calibration: the route's other range
     estimators (ONNX Runtime's percentile, then entropy), each from the
     same calibration samples;
  b. higher precision: first the whole graph with int16 activations beside
     its int8 weights, where the route makes them and the target's runtime
     runs them (CPU targets: ONNX Runtime's int16 Q/DQ, TFLite's 16x8);
     then mixed precision by measured
     sensitivity, on the best base so far (int16 when it measured better):
     the candidates the diagnosis measures (the op behind each failing output,
     the debugger's worst layers, every op type but the weight-heavy ones) are
     each kept in float alone and measured, then added best first, one more
     per rung, until the gate passes. int16 activations that pass but run
     slower here than the plain int8 (ONNX Runtime's CPU provider computes
     between int16 Q/DQ pairs in float) are kept as the fallback while the
     float candidates are tried on the int8 base: the faster that passes wins
     (Magika: int16 100 % at 11.3 ms, its element-wise ops in float 100 % at
     4.9 ms, plain int8 5.9 ms).
     Only where the profile lets anything stay float (never the Edge TPU).
  c. quantization-aware training: with labelled --fine-tune data and a
     route that has a trainer (Keras to TFLite: tfmot; PyTorch to TFLite or
     ONNX: fake-quantized training of our own), the model is
     fine-tuned with int8 rounding in the loop, the float source teaching
     under --distill, and converted full int8 (so the Edge TPU has it too).
     The one rung that can also give back what pruning took: when the pruned
     float model already misses the gate, it is the only one tried.

The first rung that passes is the artifact. Each rung tried is recorded with
its verdict, the figures that decided it, its size and its latency on this
machine (the same runner as `edgesdk bench`), so the user sees the price.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgesdk.errors import EdgeSDKError
from edgesdk.sources.data import artifact_layout
from edgesdk.sources.inputs import to_artifact_layout
from .diagnosis import SAMPLES, MIN_GAIN, candidates, check_name, failing_checks, gain, measure
from .mixed_precision import Candidate, Trials, input_boundary

MAX_MIXED_RUNGS = 4
LATENCY_SECONDS = 1.5  # a round of a rung's latency here: as many runs as fit (at least one; 30 fixed runs of a
# layout detector's int16 TFLite, 2.6 s each on this machine's reference kernels, were 90 s without a word)
LATENCY_ROUNDS = 2  # rounds each of two rungs a choice compares, taken in turn: a spell of load here falls on both
LATENCY_CONFIRM = 4  # ... and up to this many where the second still looks slower, before that decides anything
SLOWER = 1.15  # a rung this much slower than another is the dearer one; below it, timing noise here


@dataclass
class Rung:
    step: str            # "as converted", "calibration", "int16 activations", "mixed precision", ...
    change: str          # what this rung does, in words
    recipe: object
    data: bytes | None = None
    figures: dict | None = None
    verdict: dict | None = None
    error: str | None = None
    training: dict | None = None  # what the training rung trained: epochs, samples, learning rate, teacher
    p50s: list = field(default_factory=list)  # median latency here of each round, measured only where a choice
    # or the record needs it (None: it cannot run here)
    rounded: dict | None = None   # what its weight rounding corrected (the manifest's record, when applied)

    @property
    def passed(self) -> bool:
        return bool(self.verdict and self.verdict["passed"])

    @property
    def p50_ms(self) -> float | None:
        """The least of its rounds' median latencies: load here only ever adds time."""
        return min((p for p in self.p50s if p is not None), default=None)

    def latency(self, tmp, rounds: int = 1) -> float | None:
        """p50_ms, with at least `rounds` rounds measured (fewer where it cannot run here): the price of the rung."""
        while len(self.p50s) < rounds and self.data is not None and None not in self.p50s:
            path = Path(tmp) / f"timed-{id(self)}.{self.recipe.format}"
            path.write_bytes(self.data)
            self.p50s.append(_latency_ms(path))
        return self.p50_ms

    def row(self) -> dict:
        row = {"step": self.step, "change": self.change, "weight_rounding": self.recipe.weight_rounding,
               "calibration_method": self.recipe.calibration_method, "activations": self.recipe.activations,
               "input_dtype": self.recipe.input_dtype,
               "float_nodes": list(self.recipe.exclude_nodes), "float_op_types": list(self.recipe.exclude_op_types)}
        if self.training:
            row["training"] = self.training
        if self.error:
            return {**row, "verdict": "error", "error": self.error}
        row.update({"verdict": self.verdict["verdict"], "size_bytes": len(self.data),
                    "figures": {c["check"] + ("" if c.get("output") is None else f" [output {c['output']}]"):
                                c.get("value") for c in self.figures["checks"]}})
        if self.p50_ms is not None:
            row["p50_ms"] = self.p50_ms
        return row


def _latency_ms(path: Path) -> float | None:
    """Median latency here, through the same runner `edgesdk bench` uses; None if it cannot run."""
    import os
    from edgesdk.devices.bench import benchmark
    try:
        return round(benchmark(path, warmup=1, duration=LATENCY_SECONDS, threads=os.cpu_count() or 1).p50, 4)
    except EdgeSDKError:
        return None


@dataclass
class Training:
    """What the training rung needs: the route's trainer, the labelled fine-tuning data, and the float
    source's outputs on it (the teacher, for a model pruned since)."""
    trainer: object
    data: object
    teacher: object = None


def recover(run, only_training: bool = False) -> dict:
    """Climb the ladder from the conversion run's artifact (run.tmp), whose gate result is run.figures and
    run.verdict; each rung is judged by run.validate, the gate itself, and the training rung is run.training
    (a Training, or None).

    only_training: the pruned float model misses the gate, so only training can help. The weight roundings
    --weight-rounding auto leaves to the ladder are run.ladder_roundings. Returns
    {"rung": the passing Rung or None, "start": the plain int8 one, "rows": one per rung for the manifest,
     "measured": the diagnosis rows of the candidates measured alone, "hint": how to apply one by hand}.
    """
    source, recipe, val, progress, training = run.source, run.recipe, run.val, run.progress, run.training
    trials = Trials(source, recipe, run.profile, run.calib, progress.bar("calibrating"))
    start = Rung("as converted", "plain int8", recipe, data=run.tmp.read_bytes(), figures=run.figures,
                 verdict=run.verdict, rounded=source.weight_rounding)
    rungs, measured = [start], []
    with tempfile.TemporaryDirectory(prefix="edgesdk-recovery-") as tmp:
        def judge(rung: Rung, unless=None) -> Rung | None:
            """Convert, validate and record the rung (one that already failed, as its error, is recorded); None,
            not recorded, where it made the very artifact `unless` (bytes): a choice with nothing to apply to."""
            path = Path(tmp) / f"rung{len(rungs)}.{recipe.format}"
            try:
                if rung.error is None:
                    rung.data, rung.rounded = trials.convert(rung.recipe), source.weight_rounding
                    if rung.data == unless:
                        return None
                    path.write_bytes(rung.data)
                    rung.figures, rung.verdict = run.validate(path, rung.recipe)
            except EdgeSDKError as exc:
                rung.error = str(exc).splitlines()[0][:300]
            rungs.append(rung)
            progress.step(f"  {rung.step}, {rung.change}: "
                          + (f"error: {rung.error}" if rung.error else _short(rung.figures, rung.verdict)))
            return rung

        base = start
        # 0. an input whose range int8 cannot hold, found before quantizing: the layers that first read it kept in
        # float, with a float input, so no int8 scale stands between the data and them (where float may stay)
        boundary = input_boundary(run.tmp, recipe.format, run.skewed) \
            if run.skewed and trials.excludes and not only_training else None
        if boundary is not None:
            rung = judge(Rung("input boundary", boundary.label, boundary.applied(recipe)))
            if rung.passed:
                return _outcome(rung, rungs, measured, tmp)
            if not rung.error and _better(rung, base):
                base = rung
        # a. the weights' rounding (--weight-rounding auto; +5 dB on EfficientNet-Lite0's photos, -2 dB on
        # PP-OCR's text crops: which helps depends on the model), then the calibration: the best of them is the
        # base the later rungs build on
        for rounding in () if only_training else run.ladder_roundings:
            rung = judge(Rung("weight rounding", f"{rounding} weight rounding",
                              replace(base.recipe, weight_rounding=rounding)), unless=base.data)
            if rung is not None and rung.passed:
                return _outcome(rung, rungs, measured, tmp)
            if rung is not None and not rung.error and _better(rung, base):
                base = rung
        for method in () if only_training else trials.calibration_methods:
            if method == base.recipe.calibration_method:
                continue
            rung = judge(Rung("calibration", f"{method} calibration",
                              replace(base.recipe, calibration_method=method)))
            if rung.passed:
                return _outcome(rung, rungs, measured, tmp)
            if not rung.error and _better(rung, base):
                base = rung
        # b. int16 activations, the whole graph: more range and steps, no op in float. With the activations'
        # rounding nearly gone, the weights' rounding decides: the corrected kind (chosen against int8
        # activations) is tried, then the nearest (Silero VAD: 92.8 against 95.1 % agreement)
        fallback = None  # int16 that passes but runs slower than int8 here: float ops may cost less
        for rounding in dict.fromkeys((base.recipe.weight_rounding, "nearest")) if trials.int16 and not only_training \
                else ():
            rung = judge(Rung("int16 activations", f"int8 weights ({rounding} rounding), int16 activations",
                              base.recipe.with_int16_activations(weight_rounding=rounding)))
            if rung.passed:
                if not _slower(rung, start, tmp):
                    return _outcome(rung, rungs, measured, tmp)
                fallback = rung
                progress.step(f"  int16 activations pass but run slower here than int8 ({rung.p50_ms:.3f} against "
                              f"{start.p50_ms:.3f} ms p50): trying float ops on the int8 base")
                break
            if not rung.error and trials.int16_keeps_float and _better(rung, base):
                base = rung  # (the Keras route's selective quantization is int8 only)
        # ... then mixed precision: measure each candidate alone, then keep more in float, best first
        failing = failing_checks(base.figures)
        if trials.excludes and failing and not only_training:
            layout = artifact_layout(source.layout, recipe.layout)
            base_path = Path(tmp) / f"base.{recipe.format}"
            base_path.write_bytes(base.data)
            x = to_artifact_layout(val.x[:SAMPLES], source, layout)
            picked, _ = candidates(trials, base.recipe, base_path, x, failing)
            progress.step(f"  measuring what keeping each of {len(picked)} candidates in float repairs")
            measured = measure(base.recipe, trials, val, run.reference, failing, picked, run.io, base_path, source,
                               layout, progress=progress)
            kept = Candidate()
            helpful = [m for m in measured if m["gain"] > MIN_GAIN][:MAX_MIXED_RUNGS]
            for m in helpful:
                # a region keeps what it was called (the stem, an output's region), not its hundred node names
                kept = kept + Candidate(tuple(m["nodes"]), tuple(m["op_types"]),
                                        named=m["node"] if len(m["nodes"]) > 1 and not m["op_types"] else "")
                rung = judge(Rung("mixed precision", f"kept in float: {kept.label}", kept.applied(base.recipe)))
                if rung.passed:
                    faster = fallback if fallback and _slower(rung, fallback, tmp) else rung
                    return _outcome(faster, rungs, measured, tmp)
        if fallback is not None:
            return _outcome(fallback, rungs, measured, tmp)
        # c. quantization-aware training, full int8 from the plain recipe
        if training is not None:
            rung = _trained(source, recipe, training, judge, progress)
            if rung.passed:
                return _outcome(rung, rungs, measured, tmp)
    return _outcome(None, rungs, measured, None, trials.measured_hint)


def _trained(source, recipe, training: Training, judge, progress) -> Rung:
    """Train the source quantization-aware and judge its artifact; the source keeps its own model."""
    data, r = training.data, recipe
    change = (f"{r.epochs} epoch(s) quantization-aware on {len(data)} labelled samples"
              + (", the float source teaching" if r.distill else ""))
    progress.step(f"  training {change}")
    rung = Rung("quantization-aware training", change, replace(recipe, qat=True, weight_rounding="nearest"))
    given, derived = source.model, source.derived
    try:
        source.model, rung.training = training.trainer.train(source, data, recipe, training.teacher)
        source.derived = {}  # the route's float graphs were made from the model before training
    except EdgeSDKError as exc:  # recorded as the rung's error, as a failed conversion is
        rung.error = str(exc).splitlines()[0][:300]
    try:
        return judge(rung)  # the route converts the trained model in the source's place
    finally:
        source.model, source.derived = given, derived


def _slower(rung: Rung, than: Rung, tmp) -> bool:
    """Measurably slower here (beyond timing noise), the two timed in turn, LATENCY_ROUNDS rounds each, and up to
    LATENCY_CONFIRM while `rung` still looks slower (YOLOv8n's int16 activations: 1.04-1.10x its int8 in quiet
    rounds; past 1.15x in one round each timed once, and in both of two rounds of a busy spell); unmeasurable
    counts as not slower."""
    for n in range(1, LATENCY_CONFIRM + 1):
        a, b = than.latency(tmp, n), rung.latency(tmp, n)
        if a is None or b is None or (n >= LATENCY_ROUNDS and b <= a * SLOWER):
            return False
    return True


def _better(rung: Rung, than: Rung) -> bool:
    before = failing_checks(than.figures)
    after = {(c["check"], c.get("output")): c for c in rung.figures["checks"]}
    return gain(before, after) > MIN_GAIN


def _outcome(chosen: Rung | None, rungs: list, measured: list, tmp, hint: str = "") -> dict:
    rows = []
    for i, rung in enumerate(rungs):
        if tmp is not None and (rung is chosen or i == 0):
            rung.latency(tmp)  # the plain artifact's and the kept one's: the price of the fix
        rows.append({**rung.row(), **({"applied": True} if rung is chosen else {})})
    return {"rung": chosen, "start": rungs[0], "rows": rows, "measured": measured, "hint": hint}


def _short(figures, verdict) -> str:
    shown = failing_checks(figures) or figures["checks"]
    return verdict["verdict"] + "".join(f", {check_name(c, shown)} {c['value']:.3g}" for c in shown[:2]
                                        if isinstance(c.get("value"), (int, float)))


def summary(outcome: dict) -> dict:
    """What the manifest records: the rung applied (or none), and every rung tried."""
    chosen = outcome["rung"]
    return {"applied": None if chosen is None else {"step": chosen.step, "change": chosen.change},
            "rungs": outcome["rows"]}


def describe(outcome: dict) -> str:
    """One sentence for the error when no rung passed."""
    tried = outcome["rows"][1:]
    if not tried:
        return (" Recovery found nothing to try: this route has no other calibration, and no layer kept in "
                "float repaired anything measurable (or this target runs nothing in float).")
    parts = []
    for r in tried:
        if r["verdict"] == "error":
            parts.append(f"{r['change']}: {r['error']}")
        else:
            figs = ", ".join(f"{k} {v:.3g}" for k, v in list(r["figures"].items())[:2] if isinstance(v, (int, float)))
            parts.append(f"{r['change']}: {r['verdict']} ({figs})")
    return f" Recovery tried {len(tried)} recipe(s), none passed: {'; '.join(parts)}."
