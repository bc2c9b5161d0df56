"""Conversion routes: the registry by (source framework, artifact format).

Each route module declares one Route (converters/route.py): its functions and capabilities as data. The
modules import their frameworks only when a route runs, so finding a route loads none.
"""

from __future__ import annotations

import functools
import importlib

from edgesdk.errors import ConversionError

from .route import Route

# the modules that declare a route (ROUTE, converters/route.py); each is light to import: frameworks load
# when its route runs
ROUTE_MODULES = ("keras_tflite", "keras_onnx", "onnx_int8", "onnx_tflite", "torch_tflite", "torch_onnx", "onnx_rknn")
PRUNERS = {"keras": "keras_prune", "torch": "torch_prune"}


@functools.cache
def routes() -> dict:
    """Every route by (framework, format)."""
    found = {}
    for name in ROUTE_MODULES:
        route = importlib.import_module(f"{__name__}.{name}").ROUTE
        for framework in route.sources:
            found[(framework, route.format)] = route
    return found


def get_route(framework: str, fmt: str) -> Route:
    """The route from `framework` to `fmt`, its packages checked: a missing one names the extra to install."""
    key = (framework, fmt)
    if key not in routes():
        have = ", ".join(f"{f}->{o}" for f, o in routes())
        raise ConversionError(f"No conversion route from {framework} to {fmt} in this version "
                              f"(available: {have}). Choose a target whose profile takes one of those.")
    import importlib.util
    route = routes()[key]
    missing = {m: extra for m, extra in route.sources[framework].items() if importlib.util.find_spec(m) is None}
    if missing:
        extras = ",".join(sorted(set(missing.values())))
        raise ConversionError(f"Making {fmt} from {framework} needs {', '.join(missing)}, not installed here: "
                              f"pip install 'edgesdk[{extras}]'.")
    return route


def pick_format(framework: str, profile) -> str:
    """The first of the profile's formats this framework has a route to; none is an error that says so."""
    formats = profile.artifact.formats
    chosen = next(iter(reachable_formats(framework, profile)), None)
    if chosen is None:
        reach = sorted({o for f, o in routes() if f == framework})
        raise ConversionError(f"Profile '{profile.name}' takes {' or '.join(formats)} artifacts, and edgesdk cannot "
                              f"make {' or '.join(formats)} from {framework} models yet ({framework} sources go "
                              f"to {', '.join(reach) or 'nothing'}). Convert from the model's original (Keras or "
                              f"PyTorch) for this target, or choose a target that takes {' or '.join(reach)}.")
    return chosen


def reachable_formats(framework: str, profile) -> list:
    """The profile's formats this framework has a route to, in the profile's order of preference."""
    return [f for f in profile.artifact.formats if (framework, f) in routes()]


def get_qat_trainer(framework: str, fmt: str):
    """The route's quantization-aware trainer, or None."""
    route = routes().get((framework, fmt))
    return importlib.import_module(f"{__name__}.{route.trainer}") if route and route.trainer else None


def get_pruner(framework: str):
    if framework not in PRUNERS:
        from edgesdk.errors import OptionError
        raise OptionError(f"Pruning {framework} sources is not supported; prune the model in its framework "
                          f"before exporting it, or drop --prune.")
    return importlib.import_module(f"{__name__}.{PRUNERS[framework]}")
