"""Target families: what a device demands of an artifact, and the check that it gets it.

One module per family. Each exposes ``FAMILY`` and
``check(artifact_info, profile, recipe) -> dict`` (a compatibility report; raises
ConversionError when the artifact cannot run on the family at all).
The on-device runner lives beside them in runner.py.
"""

from __future__ import annotations

import importlib

FAMILY_MODULES = {"arm-cpu": "arm_cpu", "edgetpu": "edgetpu", "jetson": "jetson"}


def get_family(name: str):
    return importlib.import_module(f"{__name__}.{FAMILY_MODULES[name]}")


def runner_path():
    from importlib import resources
    return resources.files(__name__) / "runner.py"
