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
    "convert", "benchmark", "deploy", "check", "inspect", "ResultStore", "load_profile", "available_profiles", "Artifact", "BenchmarkResult",
    "DeviceProfile", "EdgeSDKError", "OptionError", "ProfileError", "ModelLoadError", "DataError",
    "ConversionError", "ValidationFailed", "OutputError", "RuntimeMissing", "BenchmarkError", "DeployError",
    "HostKeyError", "ConnectionLost", "ResultsError",
]


def __getattr__(name):
    if name == "convert":
        from .conversion import convert
        return convert
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


class _API(types.ModuleType):
    """`edgesdk.deploy` and `edgesdk.check` are the functions, though submodules share their names: the
    import system records a submodule on its package when it loads it, and would shadow them."""

    @property
    def deploy(self):
        from .deploy import deploy
        return deploy

    @deploy.setter
    def deploy(self, _module):
        pass

    @property
    def check(self):
        from .check import check_model
        return check_model

    @check.setter
    def check(self, _module):
        pass


sys.modules[__name__].__class__ = _API
