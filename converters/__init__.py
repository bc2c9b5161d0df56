"""Conversion routes, one module per (source framework, artifact format).

The registry maps a route key to a module name; the module is imported only
when its route runs, so frameworks stay unloaded until needed.
"""

from __future__ import annotations

import importlib

from edgesdk.errors import ConversionError

ROUTES = {
    ("keras", "tflite"): "keras_tflite",
    ("keras", "onnx"): "keras_onnx",
    ("onnx", "onnx"): "onnx_int8",
    ("onnx", "tflite"): "onnx_tflite",
    ("torch", "tflite"): "torch_tflite",
    ("torch", "onnx"): "torch_onnx",
    ("onnx", "rknn"): "onnx_rknn",  # Keras and PyTorch through their float ONNX export
    ("keras", "rknn"): "onnx_rknn",
    ("torch", "rknn"): "onnx_rknn",
}

PRUNERS = {"keras": "keras_prune", "torch": "torch_prune"}
# Quantization-aware training, per route: the module has unavailable(source) and train(source, data, recipe,
# teacher); the model it returns is converted by the route in the source's place.
QAT_TRAINERS = {("keras", "tflite"): "keras_qat", ("torch", "tflite"): "torch_qat", ("torch", "onnx"): "torch_qat"}

# What each route imports, and the extra that brings it: a route whose packages are missing says which
# extra to install before it starts, instead of failing half-way with an import error.
REQUIRES = {
    ("keras", "tflite"): {"tensorflow": "keras", "tf_keras": "keras"},
    ("keras", "onnx"): {"tensorflow": "keras", "tf2onnx": "onnx", "onnx": "onnx", "onnxruntime": "onnx"},
    ("onnx", "onnx"): {"onnx": "onnx", "onnxruntime": "onnx"},
    ("onnx", "tflite"): {"onnx": "onnx", "onnxruntime": "onnx", "tensorflow": "tflite",
                         "ai_edge_quantizer": "tflite"},
    ("torch", "tflite"): {"torch": "torch", "litert_torch": "torch", "ai_edge_quantizer": "torch",
                          "tensorflow": "torch"},
    ("torch", "onnx"): {"torch": "torch", "onnxscript": "torch", "onnx": "onnx", "onnxruntime": "onnx"},
    ("onnx", "rknn"): {"onnx": "onnx"},
    ("keras", "rknn"): {"tensorflow": "keras", "tf2onnx": "onnx", "onnx": "onnx"},
    ("torch", "rknn"): {"torch": "torch", "onnxscript": "torch", "onnx": "onnx"},
}

# Each route module has convert(source, recipe, calibration, progress=None, profile=None) -> bytes, and
# CALIBRATION_METHODS: the --calibration-method values it takes (default: "minmax" only), and
# AUTO_CALIBRATION: the ones --calibration-method auto measures, the first always, the others where int8 costs
# something (default: the first of CALIBRATION_METHODS). A route that
# needs a one-time step first (a private toolchain, an intermediate graph) has
# prepare_source(source, recipe, calibration, step=None), called with progress messages before convert.


def get_route(framework: str, fmt: str):
    key = (framework, fmt)
    if key not in ROUTES:
        have = ", ".join(f"{f}->{o}" for f, o in ROUTES)
        raise ConversionError(f"No conversion route from {framework} to {fmt} in this version "
                              f"(available: {have}). Choose a target whose profile takes one of those.")
    import importlib.util
    missing = {m: extra for m, extra in REQUIRES.get(key, {}).items() if importlib.util.find_spec(m) is None}
    if missing:
        extras = ",".join(sorted(set(missing.values())))
        raise ConversionError(f"Making {fmt} from {framework} needs {', '.join(missing)}, not installed here: "
                              f"pip install 'edgesdk[{extras}]'.")
    return importlib.import_module(f"{__name__}.{ROUTES[key]}")


def pick_format(framework: str, profile) -> str:
    """The first of the profile's formats this framework has a route to; none is an error that says so."""
    formats = profile.artifact.formats
    chosen = next(iter(reachable_formats(framework, profile)), None)
    if chosen is None:
        reach = sorted({o for f, o in ROUTES if f == framework})
        raise ConversionError(f"Profile '{profile.name}' takes {' or '.join(formats)} artifacts, and edgesdk cannot "
                              f"make {' or '.join(formats)} from {framework} models yet ({framework} sources go "
                              f"to {', '.join(reach) or 'nothing'}). Convert from the model's original (Keras or "
                              f"PyTorch) for this target, or choose a target that takes {' or '.join(reach)}.")
    return chosen


def reachable_formats(framework: str, profile) -> list:
    """The profile's formats this framework has a route to, in the profile's order of preference."""
    return [f for f in profile.artifact.formats if (framework, f) in ROUTES]


def get_qat_trainer(framework: str, fmt: str):
    """The route's quantization-aware trainer, or None."""
    name = QAT_TRAINERS.get((framework, fmt))
    return importlib.import_module(f"{__name__}.{name}") if name else None


def get_pruner(framework: str):
    if framework not in PRUNERS:
        from edgesdk.errors import OptionError
        raise OptionError(f"Pruning {framework} sources is not supported; prune the model in its framework "
                          f"before exporting it, or drop --prune.")
    return importlib.import_module(f"{__name__}.{PRUNERS[framework]}")
