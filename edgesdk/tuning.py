"""`edgesdk tune`: the fastest artifact that keeps the accuracy budget, measured on the user's own devices.

A search over what the profile can run, cheapest checks first:
  1. candidates: every format the profile takes that the source has a route to, times every precision its
     family computes in (int8 with the recovery ladder when the gate fails, fp16, float), each also run
     the other ways the family offers (XNNPACK off, a DLA core); a recipe the options refuse is dropped with
     why, before anything is converted;
  2. each candidate converted and judged by the same gate as `convert` (cached: the same recipe and data
     are not converted twice, a failure is kept as its verdict); a candidate that misses the gate is shown
     with why and never measured;
  3. each survivor measured on the host(s) at each thread count (1 and the profile's), rounds interleaved
     in a shuffled order so drift hits every candidate alike; after the first round a candidate over
     DROP_AFTER times the best p50 cannot win and is not measured again;
  4. the fastest within budget is written as the artifact, its manifest naming the search, the others, and
     the threads and device options deploy then runs it with.
Several hosts of one profile share the measurements (a fleet is a tuning farm); a host that fails is
reported and its jobs go to the others, a host that lacks one format's runtime still measures the rest.
`budget` bounds the wall time; what it cut is reported. Ctrl-C keeps what was measured.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BenchmarkError, BudgetExceeded, EdgeSDKError, OptionError, RuntimeMissing
from .progress import Progress, parse_budget

DROP_AFTER = 1.5  # after round 1: p50 over this many times the best cannot win
DEFAULT_SPARSITIES = (0.5, 0.75)  # searched when fine-tuning data is given
TIE = 0.03  # p50s this close to the fastest are one speed: the smaller artifact wins


@dataclass
class Candidate:
    fmt: str
    quantization: str
    sparsity: float = 0.0     # pruned to this before quantizing (fine-tuned on the user's data)
    variant: str = ""         # how the device runs it when not the default (the family's execution variants)
    options: dict = field(default_factory=dict)  # the device options that variant is
    base: "Candidate | None" = None  # a variant measures its base's artifact: converted once
    status: str = "pending"   # converted, failed, cut (too big), skipped, measured, dropped
    why: str = ""
    artifact: object = None   # edgesdk.Artifact once converted
    cached: bool = False
    figures: dict = field(default_factory=dict)
    p50s: dict = field(default_factory=dict)   # threads -> [p50 per round]
    results: dict = field(default_factory=dict)  # threads -> last BenchmarkResult

    @property
    def name(self) -> str:
        return (f"{self.fmt} {self.quantization}" + (f" {self.sparsity:.0%} sparse" if self.sparsity else "")
                + (f" {self.variant}" if self.variant else ""))

    @property
    def folder(self) -> str:
        return f"{self.fmt}-{self.quantization}" + (f"-s{round(self.sparsity * 100)}" if self.sparsity else "")


def parse_size(value) -> int | None:
    """'5MB', '800KB', '1.5 GB', '123456' (bytes) or a number -> bytes; None for no limit."""
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        text = str(value).strip().upper().replace(" ", "")
        unit = next((u for u in ("KB", "MB", "GB", "B") if text.endswith(u)), "")
        try:
            size = float(text[: len(text) - len(unit)]) * {"KB": 1e3, "MB": 1e6, "GB": 1e9}.get(unit, 1)
        except ValueError:
            raise OptionError(f"--max-size takes a size such as 5MB, 800KB or a number of bytes; got {value!r}.") \
                from None
    if size <= 0:
        raise OptionError(f"--max-size must be positive, got {value!r}.")
    return int(size)


def too_big(size: int, max_size: int | None, profile) -> str:
    """Why an artifact of `size` bytes cannot be the answer on this profile, or ''."""
    if max_size is not None and size > max_size:
        return f"{size:,} bytes, over --max-size {max_size:,}"
    memory = getattr(profile.device, "memory_mb", None)
    if memory and size > memory * 1e6 / 2:  # the runtime holds the weights at least once more as it loads them
        return f"{size:,} bytes cannot load in {profile.name}'s {memory} MB"
    return ""


def candidates(framework: str, profile, formats=None, quantizations=None, sparsities=()) -> tuple:
    """(candidates worth converting, [(name, why) dropped before converting]); formats/quantizations narrow
    the search to those the user asked for. Each sparsity adds a pruned int8 candidate per format (pruning
    pays where weights are int8: that is the artifact the SDK ships)."""
    from .converters import routes
    from .targets import get_family
    family = get_family(profile.family)
    for asked, known, what in ((formats, profile.artifact.formats, "formats"),
                               (quantizations, family.computes_in(), "quantizations")):
        unknown = [a for a in asked or () if a not in known]
        if unknown:
            raise OptionError(f"{profile.name} ({family.name}) cannot run {what} {', '.join(unknown)}; it takes "
                              f"{', '.join(known)}.")
    picked, dropped = [], []
    for fmt in formats or profile.artifact.formats:
        if (framework, fmt) not in routes():
            dropped.append((f"{fmt} *", f"no route from {framework} to {fmt}"))
            continue
        quants = list(quantizations or ("int8", "fp16", "float"))
        for quant, sparsity in [(q, 0.0) for q in quants] + [("int8", s) for s in sparsities if "int8" in quants]:
            if quant not in family.computes_in(fmt):
                dropped.append((Candidate(fmt, quant, sparsity).name,
                                f"{profile.name} ({family.name}) does not compute in {quant}"))
                continue
            base = Candidate(fmt, quant, sparsity)
            picked.append(base)
            picked += [Candidate(fmt, quant, sparsity, label, dict(options), base)
                       for label, options in family.execution_variants(fmt, profile)]
    return picked, dropped


def thread_counts(profile) -> list:
    return sorted({1, profile.artifact.threads})


def tune(model, target="local", *, hosts="local", calibration=None, validation=None, options=None,
         budget=None, runs=50, warmup=5, repeat=2, output_dir="edgesdk-out", store=None, seed=0,
         formats=None, quantizations=None, fine_tune=None, sparsities=None, max_size=None, remote_python=None,
         workdir=None, accept_new_host_key=False, quiet=False, progress: Progress | None = None,
         model_factory=None, example_input=None, unsafe=False, **legacy) -> dict:
    """Search what `target` can run for the fastest artifact within the accuracy budget; see the module doc.

    options: an edgesdk.ConvertOptions every candidate is converted with (the gate's thresholds, the inputs,
    preprocessing); its format, quantization and pruning are what the search sets per candidate.
    hosts: "local", one host, or a list of hosts of this profile. fine_tune: labelled data; with it, pruned int8
    candidates at each of `sparsities` (default 50 % and 75 %) are fine-tuned on it and searched too. Returns the
    search as a dict: the winner's artifact path, one row per candidate (figures, size, p50/p90 per thread
    count, why it failed or was cut)."""
    from . import convert
    from .conversion.options import with_legacy
    from .devices.deploy import deploy_one, RemoteRuns
    from .profiles import load_profile
    from .sources.source import framework_of
    options = with_legacy(options, legacy, "edgesdk.tune")  # each candidate's format, precision and pruning are
    progress = progress or Progress(quiet)                  # the search's; the rest applies to every candidate
    started = time.monotonic()
    seconds = parse_budget(budget)
    max_size = parse_size(max_size)
    deadline = started + seconds if seconds else None
    hosts = [hosts] if isinstance(hosts, str) else list(hosts)
    if not hosts:
        raise OptionError("tune needs at least one host (or 'local').")
    if runs < 1 or warmup < 0 or repeat < 1:
        raise OptionError("--runs and --repeat must be at least 1 and --warmup at least 0.")
    profile = load_profile(target)
    framework = framework_of(model, model_factory)
    if framework is None:
        raise OptionError(f"Cannot tell which framework {model!r} comes from; give a .keras/.h5/SavedModel, "
                          f".onnx, .pt2 file or a live Keras/PyTorch model.")
    out = Path(output_dir)
    if sparsities is None:
        sparsities = DEFAULT_SPARSITIES if fine_tune is not None else ()
    if any(not 0 < x < 1 for x in sparsities):
        raise OptionError(f"--sparsity takes fractions between 0 and 1, e.g. 0.5; got {list(sparsities)}.")
    cands, dropped = candidates(framework, profile, formats, quantizations, sorted(set(sparsities)))
    threads = thread_counts(profile)
    progress.step(f"tune for {profile.name}: {len(cands)} candidate(s) x threads {threads} on "
                  f"{', '.join(hosts)}" + (f", budget {seconds:.0f} s" if seconds else ""))
    skipped = [{"candidate": n, "why": w} for n, w in dropped]
    interrupted = False

    def over_budget() -> bool:
        return deadline is not None and time.monotonic() > deadline

    farm, remote_runs = _Farm(hosts, progress), RemoteRuns()

    def measure(job, host):
        c, t = job
        res = deploy_one(c.artifact, host, runs=runs, warmup=warmup, threads=t, store=store,
                         device_options=c.options, accept_new_host_key=accept_new_host_key, progress=Progress(quiet=True),
                         remote_runs=remote_runs, remote_python=remote_python, workdir=workdir)
        c.p50s.setdefault(t, []).append(res.p50)
        c.results[t] = res

    try:
        # 2. convert and judge, cheapest precisions first
        for c in cands:
            if c.base is not None:  # the same artifact, run another way
                c.status, c.why, c.artifact, c.cached, c.figures = (c.base.status, c.base.why, c.base.artifact,
                                                                    c.base.cached, c.base.figures)
                continue
            if over_budget():
                c.status, c.why = "skipped", "the budget ran out before it was converted"
                continue
            progress.step(f"converting {c.name}")
            try:
                art = convert(model, profile, calibration=calibration, validation=validation,
                              fine_tune=fine_tune if c.sparsity else None, options=options.with_values({
                                  ("quantize", "format"): c.fmt, ("quantize", "quantization"): c.quantization,
                                  ("training", "prune"): c.sparsity,
                                  # kept, a failed candidate is a cached verdict next time
                                  ("keep_failed",): True}),
                              output_dir=out / "candidates" / c.folder, model_factory=model_factory,
                              example_input=example_input, unsafe=unsafe,
                              # the budget is checked inside the conversion's stages too, not only between them
                              progress=Progress(quiet=True, deadline=deadline))
            except BudgetExceeded:
                c.status, c.why = "skipped", "the budget ran out while it was converted"
                progress.step(f"  {c.name}: {c.why}")
                continue
            except EdgeSDKError as exc:
                c.status, c.why, c.cached = "failed", _first(exc), bool(getattr(exc, "cached", False))
                c.figures = getattr(exc, "figures", None) or {}
                progress.step(f"  {c.name}: {c.why[:160]}{' (cached verdict)' if c.cached else ''}")
                continue
            c.status, c.artifact, c.cached = "converted", art, bool(getattr(art, "cached", False))
            c.figures = art.manifest.get("validation", {})
            progress.step(f"  {c.name}: passes the gate{' (cached)' if c.cached else ''}")
            big = too_big(art.path.stat().st_size, max_size, profile)
            if big:  # a cheap check before any measurement: it cannot be the answer
                c.status, c.why = "cut", big
                progress.step(f"  {c.name}: not measured: {big}")
        # 3. measure the survivors, rounds interleaved, across the hosts
        live = [c for c in cands if c.status == "converted"]
        rng = random.Random(seed)
        for rnd in range(repeat):
            jobs = [(c, t) for c in live if c.status == "converted" for t in threads]
            if not jobs:
                break
            if over_budget():
                for c in live:
                    if c.status == "converted" and not c.p50s:
                        c.status, c.why = "skipped", "the budget ran out before it was measured"
                break
            rng.shuffle(jobs)
            farm.run(jobs, measure, deadline)
            if rnd == 0:  # 3b. what cannot win is not measured again
                best = min((min(v) for c in live for v in c.p50s.values()), default=None)
                for c in live:
                    mine = min((min(v) for v in c.p50s.values()), default=None)
                    if best and mine and mine > DROP_AFTER * best and repeat > 1:
                        c.status, c.why = "dropped", f"{mine / best:.1f}x the best p50 after round 1"
        for c in live:
            if c.status == "converted" and c.p50s:
                c.status = "measured"
            elif c.status == "converted":
                c.status, c.why = "skipped", farm.why_not_measured(c.fmt) or "not measured"
    except KeyboardInterrupt:
        interrupted = True
        remote_runs.stop_all()  # no run left behind on any host
        for c in cands:
            if c.status == "converted" and c.p50s:
                c.status = "measured"
            elif c.status in ("pending", "converted"):
                c.status, c.why = "skipped", "interrupted"
        progress.warn("interrupted: keeping what was measured")
    return _finish(cands, skipped, profile, hosts, threads, out, started, seconds, interrupted, farm,
                   runs, warmup, repeat, progress)


class _Farm:
    """Measurement jobs (candidate, threads) spread over the hosts, one at a time per host. A host that fails
    is retired and its job given to another; a host that lacks one format's runtime keeps measuring the
    others; a candidate whose run fails on the device is marked failed there, not retried."""

    def __init__(self, hosts: list, progress: Progress):
        self.hosts, self.progress = list(hosts), progress
        self.errors: dict = {}   # host -> why it was retired
        self.cannot: dict = {}   # (host, format) -> why that host cannot run that format

    def can(self, host: str, fmt: str) -> bool:
        return host not in self.errors and (host, fmt) not in self.cannot

    def why_not_measured(self, fmt: str) -> str:
        whys = [f"{h}: {self.errors.get(h) or self.cannot.get((h, fmt))}" for h in self.hosts if not self.can(h, fmt)]
        return "no host could measure it: " + "; ".join(whys) if len(whys) == len(self.hosts) else ""

    def run(self, jobs: list, measure, deadline) -> None:
        todo, lock = list(jobs), threading.Lock()

        def take(host):
            with lock:
                for i, (c, _) in enumerate(todo):
                    if self.can(host, c.fmt):
                        return todo.pop(i)
            return None

        def worker(host):
            while host not in self.errors and not (deadline is not None and time.monotonic() > deadline):
                job = take(host)
                if job is None:
                    return
                c = job[0]
                try:
                    measure(job, host)
                except RuntimeMissing as exc:
                    with lock:
                        if exc.fmt:
                            self.cannot[(host, exc.fmt)] = _first(exc)
                        else:
                            self.errors[host] = _first(exc)
                        todo.append(job)
                    self.progress.warn(f"{host} cannot run {exc.fmt or 'any'} artifacts ({_first(exc)[:120]}): "
                                       f"those jobs go to the other hosts")
                except BenchmarkError as exc:  # this artifact's run failed there: the candidate, not the host
                    c.status, c.why = "failed", f"its run failed on {host}: {_first(exc)}"
                    with lock:
                        todo[:] = [j for j in todo if j[0] is not c]
                    self.progress.warn(f"{c.name} failed on {host}: {_first(exc)[:120]}")
                except EdgeSDKError as exc:
                    with lock:
                        self.errors[host] = _first(exc)
                        todo.append(job)
                    self.progress.warn(f"{host} failed ({_first(exc)[:120]}): its jobs go to the other hosts")
                    return

        while True:  # a job put back after its host gave up may fit a host that had run out of work
            alive = [h for h in self.hosts if any(self.can(h, c.fmt) for c, _ in todo)]
            if not alive or (deadline is not None and time.monotonic() > deadline):
                return
            if len(alive) == 1:
                worker(alive[0])  # in this thread: Ctrl-C reaches the run
                continue
            threads = [threading.Thread(target=worker, args=(h,), daemon=True) for h in alive]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)


def _first(exc) -> str:
    from .util import first_line
    return first_line(exc)


def _finish(cands, skipped, profile, hosts, threads, out, started, budget, interrupted, farm, runs, warmup,
            repeat, progress) -> dict:
    rows = []
    for c in cands:
        row = {"candidate": c.name, "format": c.fmt, "quantization": c.quantization, "sparsity": c.sparsity,
               "variant": c.variant, "device_options": c.options, "status": c.status, "why": c.why, "cached": c.cached, "passed": c.artifact is not None,
               "top1_agreement": c.figures.get("top1_agreement"), "sqnr_db": c.figures.get("sqnr_db"),
               "size_bytes": c.artifact.path.stat().st_size if c.artifact is not None else None,
               # what a pruned artifact saves shows compressed (its zeros are stored dense)
               "gzip_bytes": c.artifact.manifest.get("size", {}).get("gzip_bytes") if c.artifact is not None else None,
               "artifact": str(c.artifact.path) if c.artifact is not None else None, "by_threads": {}}
        for t, p50s in sorted(c.p50s.items()):
            res = c.results.get(t)
            energy = (res.raw.get("energy") or {}) if res is not None else {}
            row["by_threads"][t] = {"p50_ms": round(statistics.median(p50s), 4), "rounds": len(p50s),
                                    "p90_ms": res.p90 if res is not None else None,
                                    "peak_rss_mb": res.peak_rss_mb if res is not None else None,
                                    "energy_mj": energy.get("energy_per_inference_mj"),
                                    "run_id": res.run_id if res is not None else None,
                                    "host": res.host if res is not None else None}
        if row["by_threads"]:
            t_best = min(row["by_threads"], key=lambda t: row["by_threads"][t]["p50_ms"])
            row["threads"], row["p50_ms"] = t_best, row["by_threads"][t_best]["p50_ms"]
            for k in ("p90_ms", "peak_rss_mb", "energy_mj"):
                row[k] = row["by_threads"][t_best][k]
        rows.append(row)
    # a candidate whose run failed on a device keeps its figures but is never picked
    timed = sorted((r for r in rows if r.get("p50_ms") is not None and r["status"] != "failed"),
                   key=lambda r: r["p50_ms"])
    _mark_pareto(timed)
    winner = _pick(timed)
    doc = {"profile": profile.name, "hosts": hosts, "threads": threads, "runs": runs, "warmup": warmup,
           "repeat": repeat, "budget_s": budget, "wall_s": round(time.monotonic() - started, 1),
           "interrupted": interrupted, "host_errors": farm.errors, "skipped": skipped,
           "host_limits": {h: {f: why for (h2, f), why in farm.cannot.items() if h2 == h}
                           for h in dict.fromkeys(h for h, _ in farm.cannot)},
           "candidates": timed + [r for r in rows if not any(r is t for t in timed)],
           "run_ids": sorted(m["run_id"] for r in rows for m in r["by_threads"].values() if m["run_id"]),
           "converted": sum(c.status != "skipped" and not c.cached and (c.artifact is not None or bool(c.figures))
                            for c in cands if c.base is None),
           "cached": sum(c.cached for c in cands if c.base is None), "winner": None, "artifact": None}
    if winner is not None:
        doc["winner"] = winner["candidate"] + f" x{winner['threads']}"
        doc["tie"] = winner.get("tie")
        doc["artifact"] = str(_write_winner(winner, doc, out))
        int8 = [r["p50_ms"] for r in timed if r["quantization"] == "int8"]
        if winner["quantization"] != "int8" and int8:  # a valid outcome, said plainly
            doc["finding"] = (f"{winner['quantization']} is faster than int8 on this device: "
                              f"{winner['p50_ms']:.3f} ms p50 against {min(int8):.3f} ms")
        progress.step(f"winner: {doc['winner']}, p50 {winner['p50_ms']:.3f} ms -> {doc['artifact']}")
    else:
        progress.warn("no candidate was measured: nothing written")
    return doc


def _pick(timed: list) -> dict | None:
    """The fastest; p50s within TIE of it are one speed (run-to-run noise), and of those the smallest
    artifact (compressed: what a pruned one saves) wins."""
    if not timed:
        return None
    tied = [r for r in timed if r["p50_ms"] <= timed[0]["p50_ms"] * (1 + TIE)]
    winner = min(tied, key=lambda r: (r["gzip_bytes"] or r["size_bytes"] or 0, r["p50_ms"]))
    if winner is not timed[0]:
        winner["tie"] = (f"within {TIE:.0%} of the fastest ({timed[0]['candidate']}, {timed[0]['p50_ms']:.3f} ms) "
                         f"and smaller: {winner['gzip_bytes'] or winner['size_bytes']:,} bytes compressed")
    return winner


def _mark_pareto(timed: list) -> None:
    """On the front: no other candidate is at least as fast, as close to the source (SQNR) and as small
    (compressed), and better in one of them. Size counts because tune's own pick does: within noise of the
    fastest, the smallest wins, and a winner off the front would contradict it."""
    def scores(r):  # higher is better in each
        return (-r["p50_ms"], r["sqnr_db"] or 0, -(r["gzip_bytes"] or r["size_bytes"] or 0))
    for r in timed:
        mine = scores(r)
        r["pareto"] = not any(o is not r and all(a >= b for a, b in zip(scores(o), mine)) and scores(o) != mine
                              for o in timed)


def _write_winner(winner: dict, doc: dict, out: Path) -> Path:
    """The winner beside the candidates, under the name `convert` gives it, its manifest naming the search;
    files its family made beside it (a compiled model) come along."""
    from .artifacts.artifact import manifest_path_for, write_json_atomic
    src = Path(winner["artifact"])
    dest = out / src.name
    for f in src.parent.iterdir():
        if f.name.startswith(src.stem) and f != manifest_path_for(src):
            tmp = out / f".{f.name}.tuning"
            shutil.copyfile(f, tmp)
            tmp.replace(out / f.name)
    manifest = json.loads(manifest_path_for(src).read_text())
    # deploy runs the artifact as it won: these threads and device options unless told otherwise
    manifest["tune"] = {"winner": doc["winner"], "threads": winner["threads"], "p50_ms": winner["p50_ms"],
                        "device_options": winner["device_options"],
                        "hosts": doc["hosts"], "runs": doc["runs"], "repeat": doc["repeat"],
                        "alternatives": [{k: r.get(k) for k in ("candidate", "status", "why", "p50_ms", "threads",
                                                                "top1_agreement", "sqnr_db", "size_bytes",
                                                                "gzip_bytes", "sparsity")}
                                         for r in doc["candidates"] if r is not winner]}
    write_json_atomic(manifest_path_for(dest), manifest)
    return dest
