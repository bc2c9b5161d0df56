"""Target families: what a kind of hardware demands of an artifact, and how its devices run one.

One module per family, each holding one ``TargetFamily`` (``FAMILY``). Core
code (profiles, recipe, conversion, inspection, deploy, device setup, the CLI)
asks the family and never spells its name. Families come from this package
and from any installed distribution that names one in the ``edgesdk.targets``
entry-point group (``rockchip = "my_pkg.rockchip:FAMILY"``). The on-device
runner lives beside them in runner.py.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_POINT_GROUP = "edgesdk.targets"
BUILTIN = {"arm-cpu": "arm_cpu", "edgetpu": "edgetpu", "jetson": "jetson", "rockchip": "rockchip"}
QUANTIZATIONS = ("int8", "fp16", "float")


@dataclass
class DevicePlan:
    """What a device runs for an artifact: the file, the runner's extra options, and on what."""

    path: Path
    runner_args: list = field(default_factory=list)
    accelerator: str | None = None  # what accelerates the run; None: the device's CPU
    problem: str | None = None  # why the profile's accelerator cannot be used on this device


@dataclass
class Compiled:
    """What a family's compile step made: files to place beside the artifact, and what the manifest records."""

    files: list
    manifest_key: str
    record: dict


class TargetFamily:
    """Everything one hardware family demands. Subclass it, set what differs, override what it checks.

    The defaults describe a plain CPU that runs TFLite and ONNX with ONNX Runtime or LiteRT."""

    name = ""
    description = ""
    formats = ("tflite", "onnx")  # artifact formats its devices run; a profile may narrow them
    # formats it brings (edgesdk.artifacts.formats.ArtifactFormat): suffix, reader, where it runs
    artifact_formats: tuple = ()
    # what its devices compute in: one tuple, or one per format (an NPU's own format computes in less than
    # the board's CPU, which runs anything)
    quantizations = QUANTIZATIONS
    # may an int8 artifact keep some ops in float (fallback, exclusions, mixed precision): True, False, or the
    # formats where it may (a family whose accelerator runs int8 only may run other formats on its CPU)
    float_ops = True
    # formats whose runtime on its devices runs int8 weights with int16 activations (LiteRT's 16x8 kernels,
    # ONNX Runtime's int16 QDQ)
    int16_activations = ("tflite", "onnx")
    accelerator_kinds = ("none",)  # values a profile's [accelerator] kind may take
    accelerator_keys: dict = {}  # [accelerator] keys it adds: name -> (type, default)
    representative = ""  # the profile that stands for the family when `check`/`inspect` get no --target
    runtimes = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}  # pip requirement per format, on a device
    setup_note: str | None = None  # what `device setup` cannot install from wheels
    device_options: dict = {}  # deploy options it takes beyond the common ones: name -> who has them
    probe_files: dict = {}  # what the device's probe looks for: name -> paths, the first that exists reported
    profile_dir = None  # a folder of .toml profiles the family ships (third-party packages)

    def computes_in(self, fmt: str | None = None) -> tuple:
        """The precisions an artifact of this format runs in on the family's devices (any format's: None)."""
        if isinstance(self.quantizations, dict):
            if fmt is None:
                return tuple(q for q in QUANTIZATIONS if any(q in v for v in self.quantizations.values()))
            return tuple(self.quantizations.get(fmt, ()))
        return tuple(self.quantizations)

    def runs_float_ops(self, fmt: str) -> bool:
        """Whether an int8 artifact of this format may keep some ops in float on the family's devices."""
        if isinstance(self.float_ops, (tuple, list, set, frozenset)):
            return fmt in self.float_ops
        return bool(self.float_ops)

    # --- profiles and recipes ----------------------------------------------------------
    def validate_profile(self, artifact_spec, accelerator) -> str | None:
        """Why a profile of this family is inconsistent (one sentence), or None."""
        return None

    def quantizer_settings(self, profile, fmt: str) -> dict:
        """How its hardware computes int8, for the route's quantizer (e.g. symmetric activations)."""
        return {}

    # --- artifacts ---------------------------------------------------------------------
    def check(self, info: dict, profile, recipe=None) -> dict:
        """A compatibility report for a described artifact. With a recipe (at conversion), raise
        ConversionError when the artifact cannot run on the family at all."""
        return {"family": self.name, "profile": profile.name, "status": "supported", "fallbacks": [], "notes": []}

    def compile(self, artifact: Path, report: dict, work: Path, progress) -> Compiled | None:
        """The family's compile step on a validated artifact (report: what check() returned); files are
        written under work and moved beside the artifact by the caller."""
        return None

    # --- devices -----------------------------------------------------------------------
    def runtime_missing(self, fmt: str, probe: dict) -> str | None:
        """What the device lacks to run a fmt artifact at all (the runner's own probe), or None."""
        rt = probe.get("runtimes", {})
        if fmt == "tflite" and not (rt.get("ai_edge_litert") or rt.get("tflite_runtime") or rt.get("tensorflow")):
            return "No TFLite runtime (ai-edge-litert)"
        if fmt == "onnx" and not (rt.get("onnxruntime") or rt.get("trtexec")):
            return "Neither onnxruntime nor TensorRT's trtexec"
        return None

    def device_plan(self, artifact, probe: dict, profile, **options) -> DevicePlan:
        """What the device runs and how, checked against what its probe found."""
        return DevicePlan(artifact.path)

    def execution_variants(self, fmt: str, profile) -> list:
        """Other ways a device of this family can run a fmt artifact, each worth measuring against the
        default (a delegate off, an accelerator core): [(label, device options)]. `tune` measures each;
        deploy takes the options (--device-option)."""
        return []


def _load(spec: str):
    module, _, attr = spec.partition(":")
    found = importlib.import_module(module)
    return getattr(found, attr or "FAMILY")


_FAMILIES: dict | None = None
ORIGINS: dict = {}  # family name -> "built-in" or the distribution that registered it


def families() -> dict:
    """Every family by name: the built-in ones, then those installed packages register."""
    global _FAMILIES
    if _FAMILIES is None:
        found = {name: _load(f"{__name__}.{module}") for name, module in BUILTIN.items()}
        ORIGINS.update(dict.fromkeys(found, "built-in"))
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                family = ep.load()
            except Exception as exc:  # a broken plug-in must not take the built-in families down
                _warn(f"target family '{ep.name}' ({ep.value}) could not be loaded: {exc}")
                continue
            if not isinstance(family, TargetFamily) or not family.name:
                _warn(f"target family '{ep.name}' ({ep.value}) is not a named TargetFamily; ignored")
                continue
            if family.name in found:
                _warn(f"target family '{family.name}' from {ep.value} is already defined; the first one is kept")
                continue
            found[family.name] = family
            ORIGINS[family.name] = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
        _FAMILIES = found
    return _FAMILIES


def _warn(message: str) -> None:
    from edgesdk.progress import Progress
    Progress().warn(message)


def get_family(name: str) -> TargetFamily:
    known = families()
    if name not in known:
        from edgesdk.errors import ProfileError
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ProfileError(f"Unknown target family '{name}'{hint}. Known families: {', '.join(known)}; a package "
                           f"adds one through the '{ENTRY_POINT_GROUP}' entry point.")
    return known[name]


def all_formats() -> tuple:
    """Every artifact format some family runs, in a stable order."""
    seen: list = []
    for family in families().values():
        seen += [f for f in family.formats if f not in seen]
    return tuple(seen)


def runner_path():
    from importlib import resources
    return resources.files(__name__) / "runner.py"


def device_plan(family: str, artifact, probe: dict, profile, dla_core=None, **options) -> DevicePlan:
    """The family's plan; an option it does not take is refused, naming the families that do."""
    fam = get_family(family)
    options = {k: v for k, v in {"dla_core": dla_core, **options}.items() if v is not None}
    for key in options:
        if key not in fam.device_options:
            owners = [f.device_options[key] for f in families().values() if key in f.device_options]
            from edgesdk.errors import OptionError
            raise OptionError(f"--{key.replace('_', '-')} is for {' or '.join(owners) or 'no family'}; "
                              f"{profile.name} is {family}.")
    return fam.device_plan(artifact, probe, profile, **options)
