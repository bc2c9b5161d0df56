"""edgesdk: pruned, full-integer quantized models for small devices, validated and benchmarked.

Importing edgesdk is cheap: TensorFlow, PyTorch and ONNX Runtime load only
when a conversion or a benchmark needs them.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BenchmarkError, ConnectionLost, ConversionError, DataError, DeployError, EdgeSDKError, HostKeyError,
    ModelLoadError, OptionError, OutputError, ProfileError, ResultsError, RuntimeMissing, ValidationFailed,
)

# The public API, each name loaded from its stage on first use (a name and its module never share a spelling at
# this level, so loading a submodule never replaces an API function on the package).
_API = {
    "convert": "conversion.pipeline:convert",
    "check": "conversion.check:check_model",
    "tune": "tuning:tune",
    **{name: f"conversion.options:{name}" for name in (
        "ConvertOptions", "QuantizeOptions", "TrainingOptions", "InputOptions", "Thresholds")},
    "Preprocess": "sources.data:Preprocess",
    "load": "artifacts.runtime:load",  # runs an artifact as its source ran; numpy and the artifact's runtime only
    "inspect": "artifacts.inspection:inspect",
    "Artifact": "artifacts.artifact:Artifact",
    "deploy": "devices.deploy:deploy",
    "benchmark": "devices.bench:benchmark",
    "BenchmarkResult": "devices.bench:BenchmarkResult",
    "ResultStore": "devices.results:ResultStore",
    **{name: f"profiles:{name}" for name in ("load_profile", "available_profiles", "DeviceProfile")},
}

__all__ = [*_API, "EdgeSDKError", "OptionError", "ProfileError", "ModelLoadError", "DataError", "ConversionError",
           "ValidationFailed", "OutputError", "RuntimeMissing", "BenchmarkError", "DeployError", "HostKeyError",
           "ConnectionLost", "ResultsError"]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")
    import importlib
    module, attr = _API[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
