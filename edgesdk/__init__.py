"""edgesdk: pruned, full-integer quantized models for small devices, validated and benchmarked.

Importing edgesdk is cheap: TensorFlow, PyTorch and ONNX Runtime load only
when a conversion or a benchmark needs them.
"""

import sys
import types

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BenchmarkError, ConnectionLost, ConversionError, DataError, DeployError, EdgeSDKError, HostKeyError,
    ModelLoadError, OptionError, OutputError, ProfileError, ResultsError, RuntimeMissing, ValidationFailed,
)

__all__ = [
    "convert", "ConvertOptions", "QuantizeOptions", "TrainingOptions", "InputOptions", "Thresholds", "load", "benchmark", "deploy", "check", "inspect", "tune", "ResultStore", "load_profile", "available_profiles", "Artifact", "BenchmarkResult",
    "DeviceProfile", "EdgeSDKError", "OptionError", "ProfileError", "ModelLoadError", "DataError",
    "ConversionError", "ValidationFailed", "OutputError", "RuntimeMissing", "BenchmarkError", "DeployError",
    "HostKeyError", "ConnectionLost", "ResultsError",
]


def __getattr__(name):
    if name == "convert":
        from .conversion import convert
        return convert
    if name in ("ConvertOptions", "QuantizeOptions", "TrainingOptions", "InputOptions", "Thresholds"):
        from . import options
        return getattr(options, name)
    if name == "load":  # runs an artifact as its source ran; numpy and the artifact's runtime only
        from .runtime import load
        return load
    if name == "inspect":
        from .inspection import inspect
        return inspect
    if name == "ResultStore":
        from .results import ResultStore
        return ResultStore
    if name in ("benchmark", "BenchmarkResult"):
        from . import bench
        return getattr(bench, name)
    if name in ("load_profile", "available_profiles", "DeviceProfile"):
        from . import profiles
        return getattr(profiles, name)
    if name == "Artifact":
        from .artifact import Artifact
        return Artifact
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")


def _function(module: str, name: str) -> property:
    """An API function whose submodule shares its name: the import system records a submodule on its package
    when it loads it (the setter takes that and keeps the function)."""
    def get(self):
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return property(get, lambda self, _module: None)


class _API(types.ModuleType):
    deploy = _function("deploy", "deploy")
    check = _function("check", "check_model")
    tune = _function("tune", "tune")


sys.modules[__name__].__class__ = _API
