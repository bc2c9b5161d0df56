"""The `edgesdk` command. Kept light: frameworks load inside the commands that need them."""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import BenchmarkError, ConversionError, EdgeSDKError, ValidationFailed


def _pct(share) -> str:
    return "" if share is None else f"{100 * share:.1f}%"


def _fail(exc: EdgeSDKError, as_json: bool = False):
    if as_json:
        doc = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        if isinstance(exc, ValidationFailed):
            doc["validation"] = exc.figures
        click.echo(json.dumps(doc, indent=2, default=str))
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `timeout`, a job scheduler, `kill`), unwound as Ctrl-C is: every temporary file, folder and
    child process is removed on the way out, where the default action would kill the process where it stands
    and leave them (a 2 MB artifact's temporary in the output folder and 160 MB in /tmp, seen)."""


def _terminate(signum, frame):
    raise Terminated()


class _Group(click.Group):
    def invoke(self, ctx):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():  # (a caller's thread cannot take signals)
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # after the stages' own clean-up ran (tune keeps what it measured)
            terminated = isinstance(exc, Terminated)
            click.echo(f"error: {'terminated (SIGTERM)' if terminated else 'interrupted'}; nothing half-made "
                       f"was kept", err=True)
            sys.exit(143 if terminated else 130)
        except EdgeSDKError as exc:
            _fail(exc, ctx.meta.get("json", False))
        except OSError as exc:  # a full disk, wherever a command writes (artifact, manifest, results, report)
            from .util import out_of_space
            full = out_of_space(exc)
            if full is None:
                raise
            _fail(full, ctx.meta.get("json", False))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgesdk")
def main():
    """Convert, validate and benchmark neural networks for the small devices you own."""


# --- profiles ---------------------------------------------------------------

@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def profiles(ctx, as_json):
    """List device profiles (built-in and your own)."""
    ctx.meta["json"] = as_json
    if ctx.invoked_subcommand:
        return
    from .profiles import available_profiles, load_profile
    rows = []
    for name, origin in available_profiles().items():
        p = load_profile(name)
        rows.append({"name": name, "family": p.family, "format": p.artifact.format,
                     "quantization": p.artifact.quantization, "cpu": f"{p.device.cores}x {p.device.cpu}",
                     "memory_mb": p.device.memory_mb, "description": p.description, "origin": origin})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows, ["name", "family", "format", "quantization", "cpu", "description"]))


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def profiles_show(ctx, name, as_json):
    """Print one profile (a name or a path to a .toml file)."""
    ctx.meta["json"] = as_json
    from .profiles import load_profile
    p = load_profile(name)
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=2))
        return
    d = p.to_dict()
    click.echo(f"{p.name}: {p.description}")
    click.echo(f"  family     {p.family}   (from {p.source})")
    for section in ("device", "accelerator", "artifact", "connection"):
        values = {k: v for k, v in d[section].items() if v not in ("", 0, 0.0, None) or k in p.accelerator.extra}
        if section == "accelerator" and values.get("kind") == "none":
            continue
        click.echo(f"  [{section}]")
        for k, v in values.items():
            click.echo(f"    {k:<20} {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def families(ctx, as_json):
    """List target families (built-in and from installed plug-ins)."""
    ctx.meta["json"] = as_json
    from edgesdk.targets import ORIGINS, families as found
    rows = [{"family": f.name, "formats": ",".join(f.formats), "quantization": ",".join(f.computes_in()),
             "float_ops": f.float_ops, "from": ORIGINS[f.name], "description": f.description}
            for f in found().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows, ["family", "formats", "quantization", "from", "description"]))


# --- convert ----------------------------------------------------------------

def _dest(path: tuple) -> str:
    return "o__" + "__".join(path)


def option_flags(exclude: tuple = ()):
    """Every ConvertOptions field with help, as a flag (edgesdk.conversion.options declares each once, for Python,
    the CLI, TOML files and the docs), and --config FILE; the command reads them back with options_from."""
    from .conversion.options import leaves, flag_of, default_of

    def decorate(func):
        for path, f in reversed(list(leaves())):
            if path in exclude or "help" not in f.metadata:
                continue
            meta = f.metadata
            names = meta["flag"].split("/") if meta.get("flag") else [flag_of(path, f)]
            kwargs = {"help": meta["help"]}
            default = default_of(f)
            if isinstance(f.default, bool):
                kwargs["is_flag"] = True
            else:
                if meta.get("choices"):
                    kwargs["type"] = click.Choice(meta["choices"])
                elif meta.get("type") in (int, float):
                    kwargs["type"] = meta["type"]
                if meta.get("multiple"):
                    kwargs["multiple"] = True
                if meta.get("metavar"):
                    kwargs["metavar"] = meta["metavar"]
                if default not in (None, (), ""):
                    kwargs["help"] += f" [default: {default}]"
            func = click.option(*names, _dest(path), **kwargs)(func)
        return click.option("--config", metavar="FILE", help="Options from a TOML file (one table per group: "
                            "[quantize], [training], [gate], [inputs]; docs/convert-options.md) or a manifest "
                            ".json, to replay its conversion; flags given here override it.")(func)
    return decorate


def options_from(ctx, values: dict):
    """The ConvertOptions a command's flags ask for: --config's, with the flags given on the command line over
    them. Takes the option values out of `values`."""
    from click.core import ParameterSource
    from .conversion.options import ConvertOptions, leaves, parse_flag
    config = values.pop("config", None)
    options = ConvertOptions.load(config) if config else ConvertOptions()
    given = {}
    for path, f in leaves():
        dest = _dest(path)
        if dest not in values:
            continue
        value = values.pop(dest)
        if ctx.get_parameter_source(dest) in (ParameterSource.DEFAULT, None):
            continue
        if (f.metadata.get("flag") or "").startswith("--no-"):
            value = not value
        given[path] = parse_flag(f, value)
    return options.with_values(given)


@main.command()
@click.argument("model")
@click.option("--target", "-t", default="local", show_default=True,
              help="Device profile: a name (see `edgesdk profiles`) or a path to a .toml file.")
@click.option("--calibration", "-c", metavar="DATA", help="Representative data: .npz (x[, y]), .npy or image folder.")
@click.option("--validation", metavar="DATA", help="Validation data (default: 20% held out of labelled calibration data).")
@click.option("--fine-tune", metavar="DATA", help="Labelled data to fine-tune on: while pruning, and for "
              "quantization-aware training when int8 misses the gate (Keras to TFLite, PyTorch).")
@click.option("--output", "-o", "output_dir", default="edgesdk-out", show_default=True, help="Output directory.")
@option_flags()
@click.option("--model-factory", metavar="MODULE:FUNCTION",
              help="PyTorch state_dict: the function that builds the module to load the weights into.")
@click.option("--check-only", is_flag=True, help="Only report whether --target can run MODEL (see `edgesdk check`).")
@click.option("--unsafe-load", is_flag=True, help="Allow models that run Python code when loaded (Lambda layers).")
@click.option("--force", is_flag=True, help="Convert again even when an identical artifact exists.")
@click.option("--budget", help="Wall-time bound, e.g. 20m or 90s, checked inside every stage (exit 15 past it).")
@click.option("--name", help="Artifact file stem (default: the model's).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object describing the artifact on stdout (progress stays on stderr: --quiet).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def convert(ctx, model, target, calibration, validation, fine_tune, output_dir, model_factory, check_only,
            unsafe_load, force, budget, name, as_json, quiet, **flags):
    """Convert MODEL (.keras, .h5, SavedModel dir, .onnx, .pt2 or .pt) into a validated artifact for --target."""
    ctx.meta["json"] = as_json
    options = options_from(ctx, flags)
    if check_only:
        ctx.invoke(check, model=model, targets=(target,), input_shape=options.inputs.input_shape,
                   input_values=options.inputs.input_values, model_factory=model_factory, unsafe_load=unsafe_load,
                   as_json=as_json)
        return
    from .conversion.pipeline import convert as run_convert
    art = run_convert(model, target, calibration=calibration, validation=validation, fine_tune=fine_tune,
                      options=options, output_dir=output_dir, model_factory=model_factory, unsafe=unsafe_load,
                      force=force, name=name, quiet=quiet, budget=budget)
    s = art.summary()
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    v = s["validation"]
    acc = ""
    if v.get("artifact_accuracy") is not None:
        acc = f", accuracy {100 * v['reference_accuracy']:.2f}% -> {100 * v['artifact_accuracy']:.2f}%"
    click.echo(f"{s['artifact']}  ({s['size_bytes']:,} bytes, {s['size_gzip_bytes']:,} gzipped, "
               f"sparsity {100 * (s['sparsity'] or 0):.1f}%{acc})")


# --- check / inspect --------------------------------------------------------

def _verdict_rows(reports) -> str:
    lines = []
    for r in reports:
        lines.append(f"  {r['profile']:<18} {r['family']:<8} {r['status']}")
        lines += [f"      - {note}" for note in r.get("notes", [])]
        formats = r.get("formats") or {}
        if len(formats) > 1 or any(f["status"] == "unsupported" for f in formats.values()):
            lines.append("      formats: " + "; ".join(f"{fmt} {f['status']}" + (f" ({f['reason']})" if f.get("reason")
                                                                                   else "")
                                                       for fmt, f in formats.items()))
    return "\n".join(lines)


@main.command()
@click.argument("model")
@click.option("--target", "-t", "targets", multiple=True,
              help="Profiles to check (repeatable). Default: one per family (rpi4, coral-usb, jetson-orin-nano).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="[NAME:]DIMS",
              help="Input shape for ONNX sources with dynamic dims or PyTorch files, e.g. x:1,3,48,192; "
                   "repeat it per input.")
@click.option("--input-value", "input_values", multiple=True, metavar="NAME=VALUE",
              help="An input that always takes one value (sr=16000); repeatable.")
@click.option("--model-factory", metavar="MODULE:FUNCTION", help="PyTorch state_dict: the module to load into.")
@click.option("--unsafe-load", is_flag=True, help="Allow models that run Python code when loaded.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def check(ctx, model, targets, input_shape, input_values, model_factory, unsafe_load, as_json):
    """Before converting: can MODEL run on each target family, and with what fallbacks?"""
    ctx.meta["json"] = as_json
    from .conversion.check import check_model
    result = check_model(model, list(targets) or None, input_shape=input_shape or None,
                         input_values=input_values or None, model_factory=model_factory, unsafe=unsafe_load)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    src = result["source"]
    shapes = (", ".join(f"{i['name']} {i['shape']}" for i in src["inputs"]) if "inputs" in src
              else f"{src['input_shape']}")
    click.echo(f"{model}: {src['framework']} ({src['flavor']}), input{'s' if 'inputs' in src else ''} {shapes}, "
               f"{src['param_count']:,} parameters")
    click.echo(_verdict_rows(result["targets"]))
    if any(r["status"] == "unsupported" for r in result["targets"]):
        sys.exit(ConversionError.exit_code)  # a target the model reaches in no format


@main.command()
@click.argument("artifact")
@click.option("--target", "-t", "targets", multiple=True,
              help="Judge against these profiles (repeatable). Default: one per family.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def inspect(ctx, artifact, targets, as_json):
    """Describe any .tflite or .onnx file: I/O, ops, int8 coverage, sparsity, sizes, target verdicts."""
    ctx.meta["json"] = as_json
    from .artifacts.inspection import inspect as run_inspect
    r = run_inspect(artifact, list(targets) or None)
    if as_json:
        click.echo(json.dumps(r, indent=2, default=str))
        return
    click.echo(f"{r['artifact']}: {r['format']}, {r['size_bytes']:,} bytes ({r['size_gzip_bytes']:,} gzipped)"
               + (f", {r['subgraphs']} subgraphs" if r["subgraphs"] > 1 else ""))
    for kind in ("inputs", "outputs"):
        for t in r[kind]:
            q = t["quantization"]
            qs = (f"  scale {q['scale']:.6g} zero point {q['zero_point']}" if q and "scale" in q else "")
            click.echo(f"  {kind[:-1]:<6} {t['name']}  {t['dtype']} {t['shape']}{qs}")
    click.echo(f"  ops    {r['ops']} ({r['int8_ops']} int8, "
               + (f"{r['int16_ops']} with int16 activations, " if r["int16_ops"] else "") + f"{r['float_ops']} float"
               + (f", {r['io_conversion_ops']} float I/O conversions" if r["io_conversion_ops"] else "") + ")")
    click.echo("         " + ", ".join(f"{k} x{v}" for k, v in r["op_histogram"].items()))
    if r["custom_ops"]:
        click.echo(f"  custom ops: {', '.join(r['custom_ops'])}")
    click.echo(f"  tensors {', '.join(f'{k} {v}' for k, v in r['tensor_dtypes'].items())}")
    click.echo(f"  weight sparsity {100 * r['sparsity']:.1f}%"
               + "".join(f"\n    {layer['tensor'][:60]:<60} {layer['op']:<18} {100 * layer['sparsity']:5.1f}%"
                         for layer in r["layers"]))
    click.echo(_verdict_rows(r["compatibility"]))


# --- bench ------------------------------------------------------------------

@main.command()
@click.argument("artifact")
@click.option("--runs", type=int, default=50, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--threads", type=int, help="Default: the profile's threads from the manifest (at most this machine's cores), else 1.")
@click.option("--duration", type=float, help="Run for this many seconds instead of --runs.")
@click.option("--delegate", type=click.Choice(["auto", "xnnpack", "none"]), default="auto", show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True, help="Run this many times, a fresh process each.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]DIMS",
              help="Shape for an input with dynamic dims, e.g. images:1,3,640,640 (repeatable).")
@click.option("--db", type=click.Path(dir_okay=False), help="Results database (default: EDGESDK_RESULTS_DB or "
              "~/.local/share/edgesdk/results.db).")
@click.option("--no-store", is_flag=True, help="Do not record the run in the results database.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench(ctx, artifact, runs, warmup, threads, duration, delegate, repeat, input_shapes, db, no_store, as_json):
    """Benchmark ARTIFACT on this machine with the on-device runner."""
    ctx.meta["json"] = as_json
    from .artifacts.artifact import Artifact
    from .devices.bench import benchmark
    art = Artifact.open(artifact)
    res = benchmark(art, runs=runs, warmup=warmup, threads=threads, duration=duration, delegate=delegate,
                    repeat=repeat, input_shape=input_shapes or None)
    if not no_store:
        from .devices.results import ResultStore
        store = ResultStore(db)
        res.run_id = store.add(res, manifest=art.manifest or None, extra={"repeats": res.raw.get("repeats")})
        store.close()
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        return
    lat = res.latency_ms
    click.echo(f"{artifact}: {res.runtime} {res.runtime_version} ({res.delegate}), {res.threads} thread(s), "
               f"{res.warmup} warm-up, {res.runs} runs")
    click.echo(f"  init {res.init_ms:.2f} ms   first inference {res.first_inference_ms:.2f} ms   "
               f"peak RSS {res.peak_rss_mb} MB")
    click.echo("  " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("min", "mean", "p50", "p90", "p95", "p99", "max", "std"))
               + "  (ms)")


# --- tune -------------------------------------------------------------------

@main.command()
@click.argument("model")
@click.option("--target", "-t", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--host", "hosts", multiple=True, help="Where to measure: ssh alias, user@host[:port] or local "
              "(repeatable: hosts of one profile share the work). Default: local.")
@click.option("--calibration", "-c", help="Calibration data (.npz, .npy or image folder).")
@click.option("--validation", "-v", help="Validation data (default: held out from labelled calibration data).")
@click.option("--budget", help="Wall-time bound for the whole search, e.g. 30m, 90s, 1h.")
@click.option("--format", "formats", multiple=True, help="Only these artifact formats (repeatable).")
@click.option("--quantization", "quantizations", multiple=True, help="Only these precisions (repeatable).")
@click.option("--fine-tune", metavar="DATA", help="Labelled data: pruned int8 candidates are fine-tuned on it "
              "and searched too.")
@click.option("--sparsity", "sparsities", type=float, multiple=True,
              help="Sparsity levels to search with --fine-tune (repeatable). Default: 0.5 and 0.75.")
@click.option("--max-size", help="Largest artifact worth measuring, e.g. 5MB or 800KB (a flash budget).")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per measurement.")
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--repeat", type=int, default=2, show_default=True, help="Interleaved rounds per candidate.")
@option_flags(exclude=(("quantize", "format"), ("quantize", "quantization"), ("training", "prune")))
@click.option("--model-factory", metavar="MODULE:FUNCTION",
              help="PyTorch state_dict: the function that builds the module to load the weights into.")
@click.option("--unsafe-load", is_flag=True, help="Allow models that run Python code when loaded (Lambda layers).")
@click.option("--output", "-o", "output_dir", default="edgesdk-out", show_default=True, help="Output directory.")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record an unknown host's key (never a changed one).")
@click.option("--db", type=click.Path(dir_okay=False), help="Results database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (progress stays on stderr: --quiet).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def tune(ctx, model, target, hosts, calibration, validation, budget, formats, quantizations, fine_tune, sparsities,
         max_size, runs, warmup, repeat, model_factory, unsafe_load, output_dir, accept_new_host_key, db, as_json,
         quiet, **flags):
    """Find the fastest artifact of MODEL for --target within the accuracy budget, measured on --host."""
    ctx.meta["json"] = as_json
    from .devices.results import ResultStore
    from .tuning import tune as run_tune
    store = ResultStore(db)
    try:
        doc = run_tune(model, target, hosts=list(hosts) or "local", calibration=calibration, validation=validation,
                       options=options_from(ctx, flags), budget=budget, formats=formats or None,
                       quantizations=quantizations or None, fine_tune=fine_tune, sparsities=sparsities or None,
                       max_size=max_size, runs=runs, warmup=warmup, repeat=repeat, output_dir=output_dir,
                       store=store, accept_new_host_key=accept_new_host_key, quiet=quiet,
                       model_factory=model_factory, unsafe=unsafe_load)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        rows = []
        for r in doc["candidates"]:
            rows.append({"candidate": r["candidate"] + (f" x{r['threads']}" if r.get("threads") else ""),
                         "status": r["status"], "agreement": _pct(r.get("top1_agreement")),
                         "sqnr_db": "" if r.get("sqnr_db") is None else f"{r['sqnr_db']:.1f}",
                         "size": "" if r.get("size_bytes") is None else f"{r['size_bytes']:,}",
                         "gzip": "" if r.get("gzip_bytes") is None else f"{r['gzip_bytes']:,}",
                         "p50_ms": "" if r.get("p50_ms") is None else f"{r['p50_ms']:.3f}",
                         "p90_ms": "" if r.get("p90_ms") is None else f"{r['p90_ms']:.3f}",
                         "rss_mb": "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}",
                         "energy_mj": "" if r.get("energy_mj") is None else f"{r['energy_mj']:.2f}",
                         "why": (r.get("why") or "")[:70]})
        columns = ["candidate", "status", "agreement", "sqnr_db", "size", "gzip", "p50_ms", "p90_ms", "rss_mb",
                   "energy_mj", "why"]
        if not any(r["energy_mj"] for r in rows):  # only boards with power rails measure it
            columns.remove("energy_mj")
        click.echo(_table(rows, columns))
        for s in doc["skipped"]:
            click.echo(f"  not tried: {s['candidate']}: {s['why']}")
        for said in ("finding", "tie"):
            if doc.get(said):
                click.echo(f"  {doc[said]}")
        click.echo(f"winner: {doc['winner']} -> {doc['artifact']}" if doc["winner"] else
                   "no candidate was measured: nothing written")
        if len(doc["run_ids"]) > 1:
            click.echo(f"accuracy vs latency, its Pareto front drawn: edgesdk report {' '.join(map(str, doc['run_ids']))}")
    if doc["winner"] is None:
        ctx.exit(BenchmarkError.exit_code)


# --- deploy / results -------------------------------------------------------

@main.command()
@click.argument("artifact")
@click.option("--host", "hosts", multiple=True, help="ssh alias, user@host[:port], or local (repeatable).")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False), help="File with one host per line.")
@click.option("--profile", help="Device profile (default: the artifact's manifest).")
@click.option("--runs", type=int, default=50, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--threads", type=int, help="Default: the profile's, at most the cores the device reports.")
@click.option("--duration", type=float, help="Run for this many seconds instead of --runs.")
@click.option("--repeat", type=int, default=1, show_default=True,
              help="Run the benchmark this many times, a fresh process each (3+ lets `results compare` measure "
              "run-to-run noise).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]DIMS",
              help="Shape for an input with dynamic dims, e.g. images:1,3,640,640 (repeatable).")
@click.option("--allow-cpu", is_flag=True, help="Measure on the device's CPU when the profile's accelerator cannot "
              "be used there (stored as '<profile> (cpu only)').")
@click.option("--dla-core", type=int, help="Jetson: build and run the engine on this DLA core.")
@click.option("--device-option", "device_options", multiple=True, metavar="KEY=VALUE",
              help="An option the profile's target family takes (see its documentation; repeatable).")
@click.option("--remote-python", help="Python on the device (default: the venv `edgesdk device setup` made, else "
              "the profile's python3); ~ is the device's home.")
@click.option("--workdir", help="Work directory on the device (default: the profile's, ~/.cache/edgesdk).")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds for the run on each device.")
@click.option("--parallel", type=int, default=4, show_default=True, help="Hosts deployed at once.")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record an unknown host's key (never a changed one).")
@click.option("--db", type=click.Path(dir_okay=False), help="Results database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deploy(ctx, artifact, hosts, hosts_file, profile, runs, warmup, threads, duration, repeat, input_shapes,
           allow_cpu, dla_core, device_options, remote_python, workdir, timeout, parallel, accept_new_host_key, db,
           as_json):
    """Push ARTIFACT to devices over SSH, probe them, and benchmark it there."""
    ctx.meta["json"] = as_json
    from .devices.deploy import deploy as run_deploy, read_hosts_file
    from .devices.results import ResultStore
    from .progress import Progress
    from .sources.source import parse_pairs
    options = {k: int(v) if v.lstrip("-").isdigit() else v
               for k, v in parse_pairs(device_options, "--device-option", "npu_core=1").items()}
    targets = list(hosts) + (read_hosts_file(hosts_file) if hosts_file else [])
    if not targets:
        raise click.UsageError("Give --host HOST (an ssh alias, user@host[:port] or local) or --hosts FILE.")
    store = ResultStore(db)
    # one host runs in this thread, so Ctrl-C reaches it and stops the remote runner too
    results = run_deploy(artifact, targets if len(targets) > 1 else targets[0], store=store, parallel=parallel,
                         progress=Progress(quiet=as_json),
                         profile=profile, runs=runs, warmup=warmup, threads=threads, duration=duration,
                         remote_python=remote_python, workdir=workdir, timeout=timeout,
                         accept_new_host_key=accept_new_host_key, allow_cpu=allow_cpu, dla_core=dla_core,
                         repeat=repeat, input_shape=input_shapes or None, device_options=options)
    store.close()
    if not isinstance(results, list):
        results = [results]
    docs = [r if isinstance(r, dict) else r.to_dict() for r in results]
    failed = [d for d in docs if "error" in d]
    if as_json:
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, default=str))
    else:
        rows = []
        for d in docs:
            if "error" in d:
                rows.append({"host": d["host"], "status": "failed", "p50": "", "p90": "", "p99": "", "ips": "",
                             "runtime": "", "uploaded": ""})
            else:
                lat = d["latency_ms"]
                rows.append({"host": d["host"], "status": f"ok (run {d['run_id']})", "p50": f"{lat['p50']:.3f}",
                             "p90": f"{lat['p90']:.3f}", "p99": f"{lat['p99']:.3f}", "ips": d["throughput_ips"],
                             "runtime": f"{d['runtime']} {d['runtime_version']}",
                             "uploaded": f"{d['uploaded_bytes']:,} B"})
        click.echo(_table(rows, ["host", "status", "p50", "p90", "p99", "ips", "runtime", "uploaded"]))
        for d in failed:
            click.echo(f"error: {d['host']}: {d['error']}", err=True)
    if failed:
        sys.exit(failed[0]["exit_code"] if len(docs) == 1 else 1)


@main.group()
def device():
    """Prepare a device for deploys."""


@device.command("setup")
@click.argument("host")
@click.option("--profile", default="rpi4", show_default=True, help="The profile whose runtimes to install.")
@click.option("--format", "formats", multiple=True,
              help="Runtimes for these formats (repeatable; default: every format the profile takes).")
@click.option("--remote-python", help="The device's Python to make the venv with (default: the profile's, python3).")
@click.option("--workdir", help="Work directory on the device (default: the profile's, ~/.cache/edgesdk).")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record an unknown host's key (never a changed one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def device_setup(ctx, host, profile, formats, remote_python, workdir, accept_new_host_key, as_json):
    """Make a venv on HOST with the runtime PROFILE needs, from wheels downloaded here for its platform."""
    ctx.meta["json"] = as_json
    from .devices.device_setup import setup
    from .progress import Progress
    r = setup(host, profile=profile, formats=formats, remote_python=remote_python, workdir=workdir,
              accept_new_host_key=accept_new_host_key, progress=Progress(quiet=as_json))
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"{host}: {r['python']} (Python {r['python_version']}, {r['platform']}) has "
               + ", ".join(f"{k} {v}" for k, v in r["packages"].items())
               + f"; sent {r['uploaded_bytes']:,} bytes. `edgesdk deploy` uses it from now on.")
    if r["note"]:
        click.echo(f"note: {r['note']}")


@main.group()
def results():
    """The local results database: list, show and compare runs."""


@results.command("list")
@click.option("--last", type=int, default=20, show_default=True)
@click.option("--db", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def results_list(ctx, last, db, as_json):
    ctx.meta["json"] = as_json
    from .devices.results import ResultStore
    rows = ResultStore(db).list(last)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows, ["id", "created", "host", "profile", "artifact", "runtime", "runs", "p50_ms", "p90_ms"])
               if rows else "no runs recorded yet")


@results.command("show")
@click.argument("run_id", type=int)
@click.option("--db", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def results_show(ctx, run_id, db, as_json):
    ctx.meta["json"] = as_json
    from .devices.results import ResultStore
    row = ResultStore(db).get(run_id)
    if as_json:
        click.echo(json.dumps(row, indent=2, default=str))
        return
    lat = row["stats"]["latency_ms"]
    click.echo(f"run {row['id']}  {row['created']}  {row['host']}  {row['profile']}  {row['artifact']}")
    click.echo(f"  {row['runtime']} {row['runtime_version']} ({row['delegate']}), {row['threads']} thread(s), "
               f"{row['warmup']} warm-up, {row['runs']} runs")
    click.echo("  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()) + "  (ms)")
    extra = row["extra"] or {}
    if extra.get("threads_reason"):
        click.echo(f"  threads: {extra['threads_reason']}")
    if extra.get("accelerator_problem"):
        click.echo(f"  on the CPU only: {extra['accelerator_problem']}")
    if extra.get("repeats"):
        click.echo(f"  {len(extra['repeats'])} runner processes, p50 each: "
                   + ", ".join(f"{r['p50']:.3f}" for r in extra["repeats"]) + " ms")
    conditions = _conditions(row["probe"] or {})
    if conditions:
        click.echo(f"  device: {conditions}")


def _conditions(probe: dict) -> str:
    """What the probe measured, and only that: a device without cpufreq or vcgencmd shows no 'None'."""
    parts = [" ".join(str(probe[k]) for k in ("machine", "cpu_model") if probe.get(k))
             + (f" x{probe['cores']}" if probe.get("cores") else ""), probe.get("os")]
    if probe.get("governor"):
        parts.append(f"governor {probe['governor']}")
    if probe.get("cur_freq_mhz"):
        parts.append(f"{probe['cur_freq_mhz']} MHz" + (f" of {probe['max_freq_mhz']}" if probe.get("max_freq_mhz")
                                                        else ""))
    if probe.get("throttled") is not None:
        parts.append(f"throttled {probe['throttled']}")
    if probe.get("power_mode"):
        parts.append(f"power mode {probe['power_mode']}")
    parts += [f"{t['zone']} {t['celsius']:.1f} °C" for t in probe.get("temperatures") or []]
    return ", ".join(p for p in parts if p)


@results.command("compare")
@click.argument("first", type=int)
@click.argument("second", type=int)
@click.option("--min-effect", type=float, default=5.0, show_default=True,
              help="Smallest change in median latency, in percent, that counts as a difference.")
@click.option("--db", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def results_compare(ctx, first, second, min_effect, db, as_json):
    """Is SECOND faster or slower than FIRST beyond run-to-run noise, by enough to matter?"""
    ctx.meta["json"] = as_json
    from .devices.results import ResultStore, compare
    store = ResultStore(db)
    c = compare(store.get(first), store.get(second), min_effect_pct=min_effect)
    if as_json:
        click.echo(json.dumps(c, indent=2))
        return
    for key in ("p50", "p90", "p99", "mean"):
        v = c[key]
        click.echo(f"  {key:<4} {v['first']:.3f} -> {v['second']:.3f} ms ({v['change_pct']:+.1f}%)")
    click.echo(f"  median: {c['verdict']}")
    click.echo(f"  (from {c['median_change']['basis']})")
    for k, (a, b) in c.get("differences", {}).items():
        click.echo(f"  note: {k} differs: {a} vs {b}")
    for k, (a, b) in c.get("conditions_differ", {}).items():
        click.echo(f"  note: device condition {k} differs: {a} vs {b}")


@main.command()
@click.argument("run_ids", nargs=-1, type=int)
@click.option("--last", type=int, help="The last N runs (default: 10 when no ids are given).")
@click.option("--output", "-o", default="edgesdk-report.html", show_default=True, help="A .html or .md file.")
@click.option("--db", type=click.Path(dir_okay=False))
@click.pass_context
def report(ctx, run_ids, last, output, db):
    """Stored runs as a report: latency histograms and CDFs, size vs accuracy vs latency, device conditions."""
    from .devices.report import build
    from .devices.results import ResultStore
    store = ResultStore(db)
    ids = list(run_ids) or [r["id"] for r in store.list(last or 10)][::-1]
    path = build([store.get(i) for i in ids], output)
    click.echo(f"{path} ({len(ids)} run(s))")


def _table(rows, columns) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
