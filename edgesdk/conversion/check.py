"""`edgesdk check`: before converting for real, what each target family would make of a model.

For every family the model goes through that family's route with a small
synthetic calibration set (op support does not depend on the ranges), and the
result is judged by the family's own check. Nothing is written where the user
looks; the trial artifacts live in a temporary directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgesdk.artifacts.inspection import describe, representatives
from edgesdk.errors import EdgeSDKError
from edgesdk.profiles import load_profile
from edgesdk.sources.data import Dataset
from edgesdk.sources.inputs import synthetic
from edgesdk.sources.source import load_source
from edgesdk.util import first_line
from .options import ConvertOptions, QuantizeOptions
from .recipe import make_recipe

TRIAL_SAMPLES = 16


def check_model(model, targets=None, *, input_shape=None, input_values=None, example_input=None,
                model_factory=None, unsafe=False) -> dict:
    source = load_source(model, unsafe=unsafe, input_shape=input_shape, example_input=example_input,
                         model_factory=model_factory, input_values=input_values, stateful="none")
    trial = Dataset(synthetic(source, TRIAL_SAMPLES), source="synthetic")
    reports = []
    with tempfile.TemporaryDirectory(prefix="edgesdk-check-") as tmp:
        for name in targets or representatives():
            profile = load_profile(name)
            reports.append(_check_one(source, profile, trial, Path(tmp)))
    return {"model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
            "source": source.describe(), "targets": reports}


def _check_one(source, profile, trial, tmp: Path) -> dict:
    """The family's verdict on the first of the profile's formats that the model reaches, and under "formats"
    what each format the profile takes came to (convert falls back to the next one when a route fails)."""
    from edgesdk.converters import pick_format, reachable_formats
    base = {"family": profile.family, "profile": profile.name, "quantization": profile.artifact.quantization}
    try:
        pick_format(source.framework, profile)  # no route to any of the profile's formats: said so
    except EdgeSDKError as exc:
        return {**base, "status": "unsupported", "fallbacks": [], "notes": [str(exc)], "formats": {}}
    reports, formats = [], {}
    for fmt in reachable_formats(source.framework, profile):
        try:
            report = _check_format(source, profile, trial, tmp, fmt)
        except EdgeSDKError as exc:
            formats[fmt] = {"status": "unsupported", "reason": first_line(exc)}
            reports.append({**base, "status": "unsupported", "fallbacks": [], "notes": [str(exc)]})
            continue
        formats[fmt] = {"status": report["status"]}
        reports.append({**base, **report})
    reached = [r for r in reports if r["status"] != "unsupported"]
    return {**(reached or reports)[0], "formats": formats}


def _check_format(source, profile, trial, tmp: Path, fmt: str) -> dict:
    from edgesdk.converters import get_route
    from edgesdk.targets import get_family
    recipe = make_recipe(profile, ConvertOptions(quantize=QuantizeOptions(  # ops, not ranges, are checked
        format=fmt, calibration_samples=TRIAL_SAMPLES, calibration_method="minmax")))
    route = get_route(source.framework, recipe.format)
    if source.multi_input and not route.multi_input:
        return {"status": "unsupported", "fallbacks": [], "format": fmt,
                "notes": [f"{len(source.inputs)} inputs: the route from {source.framework} to {recipe.format} "
                          f"takes single-input models only so far"]}
    from edgesdk.progress import Progress
    route.prepare(source, recipe, trial, step=Progress().step)  # a private toolchain's first use takes minutes
    data = route.convert(source, recipe, trial, profile=profile)
    path = tmp / f"{profile.name}.{recipe.format}"
    path.write_bytes(data)
    info = describe(path, fmt=recipe.format)
    report = get_family(profile.family).check(info, profile)
    return {**report, "format": recipe.format, "size_bytes": len(data)}
