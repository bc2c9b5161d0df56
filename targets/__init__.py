"""Target families: what a device demands of an artifact, and the check that it gets it.

One module per family. Each exposes ``FAMILY`` and
``check(artifact_info, profile, recipe) -> dict`` (a compatibility report; raises
ConversionError when the artifact cannot run on the family at all); and, for
deploy, ``device_plan(artifact, probe, profile, dla_core)`` (what the device runs
and how, checked against what its probe found) and ``SETUP_NOTE`` (what
`device setup` cannot install from wheels).
The on-device runner lives beside them in runner.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

FAMILY_MODULES = {"arm-cpu": "arm_cpu", "edgetpu": "edgetpu", "jetson": "jetson"}


def get_family(name: str):
    return importlib.import_module(f"{__name__}.{FAMILY_MODULES[name]}")


def runner_path():
    from importlib import resources
    return resources.files(__name__) / "runner.py"


@dataclass
class DevicePlan:
    """What a device runs for an artifact: the file, the runner's extra options, and on what."""

    path: Path
    runner_args: list = field(default_factory=list)
    accelerator: str | None = None  # what accelerates the run; None: the device's CPU
    problem: str | None = None  # why the profile's accelerator cannot be used on this device


def device_plan(family: str, artifact, probe: dict, profile, dla_core=None) -> DevicePlan:
    module = get_family(family)
    if dla_core is not None and not getattr(module, "HAS_DLA", False):
        from edgesdk.errors import OptionError
        raise OptionError(f"--dla-core is for Jetson modules with a DLA; {profile.name} is {family}.")
    if hasattr(module, "device_plan"):
        return module.device_plan(artifact, probe, profile, dla_core)
    return DevicePlan(artifact.path)


def family_note(family: str) -> str | None:
    return getattr(get_family(family), "SETUP_NOTE", None)
