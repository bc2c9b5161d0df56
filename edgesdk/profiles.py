"""Device profiles: one TOML file per device, validated into frozen dataclasses.

Built-in profiles ship inside the package (edgesdk/device_profiles); users add
their own either by path (``--target ./my-board.toml``) or by dropping a file
into ``$XDG_CONFIG_HOME/edgesdk/profiles`` (default ``~/.config/...``), where
it shadows a built-in of the same name.
"""

from __future__ import annotations

import difflib
import os
import platform
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from .errors import ProfileError

FAMILIES = ("arm-cpu", "edgetpu", "jetson")
# What each family can run at all: an Edge TPU takes TFLite, a Jetson's TensorRT takes ONNX.
FAMILY_FORMATS = {"arm-cpu": ("tflite", "onnx"), "edgetpu": ("tflite",), "jetson": ("onnx",)}
FORMATS = ("tflite", "onnx")
QUANTIZATIONS = ("int8", "fp16", "float")
IO_DTYPES = ("int8", "uint8", "float32")
ARCHES = ("aarch64", "armv7l", "x86_64", "any", "auto")
ACCELERATORS = ("none", "edgetpu", "gpu")


@dataclass(frozen=True)
class Device:
    arch: str
    cpu: str
    cores: int
    memory_mb: int
    soc: str = ""
    cpu_max_mhz: int = 0


@dataclass(frozen=True)
class Accelerator:
    kind: str = "none"
    name: str = ""
    tops: float = 0.0
    on_chip_memory_mb: float = 0.0
    dla_cores: int = 0
    jetpack: str = ""
    tensorrt: str = ""
    interface: str = ""


@dataclass(frozen=True)
class ArtifactSpec:
    format: str
    quantization: str
    input_dtype: str
    output_dtype: str
    threads: int
    formats: tuple = ()
    calibration_samples: int = 300
    per_channel: bool = True
    layout: str = ""  # "NHWC", "NCHW"; empty: NHWC for TFLite, the source's layout for ONNX


@dataclass(frozen=True)
class Connection:
    user: str = ""
    python: str = "python3"
    workdir: str = "~/.cache/edgesdk"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    family: str
    device: Device
    artifact: ArtifactSpec
    accelerator: Accelerator = field(default_factory=Accelerator)
    connection: Connection = field(default_factory=Connection)
    source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["artifact"]["formats"] = list(self.artifact.formats)
        return d


# --- schema ---------------------------------------------------------------
# (type, required, allowed values or None) per key, per table.
_TOP = {
    "name": (str, True, None),
    "description": (str, True, None),
    "family": (str, True, FAMILIES),
}
_TABLES = {
    "device": (Device, {
        "arch": (str, True, ARCHES),
        "cpu": (str, True, None),
        "cores": (int, True, None),
        "memory_mb": (int, True, None),
        "soc": (str, False, None),
        "cpu_max_mhz": (int, False, None),
    }),
    "accelerator": (Accelerator, {
        "kind": (str, False, ACCELERATORS),
        "name": (str, False, None),
        "tops": (float, False, None),
        "on_chip_memory_mb": (float, False, None),
        "dla_cores": (int, False, None),
        "jetpack": (str, False, None),
        "tensorrt": (str, False, None),
        "interface": (str, False, None),
    }),
    "artifact": (ArtifactSpec, {
        "format": (str, True, FORMATS),
        "quantization": (str, True, QUANTIZATIONS),
        "input_dtype": (str, True, IO_DTYPES),
        "output_dtype": (str, True, IO_DTYPES),
        "threads": (int, True, None),
        "formats": (list, False, FORMATS),
        "calibration_samples": (int, False, None),
        "per_channel": (bool, False, None),
        "layout": (str, False, ("NHWC", "NCHW")),
    }),
    "connection": (Connection, {
        "user": (str, False, None),
        "python": (str, False, None),
        "workdir": (str, False, None),
    }),
}
_REQUIRED_TABLES = ("device", "artifact")
_POSITIVE = {"cores", "memory_mb", "threads", "calibration_samples"}


def _type_name(t) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list"}[t]


def _check_value(where: str, key: str, value, spec):
    typ, _required, allowed = spec
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ProfileError(f"{where}: key '{key}' must be {_type_name(typ)}, got {value!r}.")
    if typ is list:
        bad = [v for v in value if v not in (allowed or ())]
        if bad:
            raise ProfileError(f"{where}: key '{key}' has {bad!r}; each entry must be one of {list(allowed)}.")
        return tuple(value)
    if allowed and value not in allowed:
        raise ProfileError(f"{where}: key '{key}' is {value!r}; expected one of {list(allowed)}.")
    if key in _POSITIVE and value <= 0:
        raise ProfileError(f"{where}: key '{key}' must be a positive integer, got {value!r}.")
    return value


def _build(cls, where: str, table: dict, schema: dict):
    if not isinstance(table, dict):
        raise ProfileError(f"{where}: expected a table, got {table!r}.")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(schema), n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ProfileError(f"{where}: unknown key '{unknown[0]}'{more}. Known keys: {', '.join(schema)}.")
    values = {}
    for key, spec in schema.items():
        if key not in table:
            if spec[1]:
                raise ProfileError(f"{where}: missing required key '{key}' ({_type_name(spec[0])}).")
            continue
        values[key] = _check_value(where, key, table[key], spec)
    return cls(**values) if cls else values


def _resolve_local(device: dict) -> dict:
    """The `local` profile describes whatever machine it is loaded on."""
    device = dict(device)
    if device.get("arch") == "auto":
        device["arch"] = platform.machine() or "any"
    if device.get("cores") == 0:
        device["cores"] = os.cpu_count() or 1
    if device.get("memory_mb") == 0:
        try:
            pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            device["memory_mb"] = int(pages * size / 2**20)
        except (ValueError, OSError):
            device["memory_mb"] = 1
    return device


def parse_profile(text: str, source: str) -> DeviceProfile:
    """Validate TOML text into a DeviceProfile; errors name `source` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML ({exc}). Fix the syntax and try again.") from None
    unknown = sorted(set(data) - set(_TOP) - set(_TABLES))
    if unknown:
        raise ProfileError(f"{source}: unknown key or table '{unknown[0]}'. "
                           f"Known: {', '.join(list(_TOP) + list(_TABLES))}.")
    top = _build(None, source, {k: v for k, v in data.items() if k in _TOP}, _TOP)
    for name in _REQUIRED_TABLES:
        if name not in data:
            raise ProfileError(f"{source}: missing required table [{name}].")
    if data.get("device", {}).get("arch") == "auto":
        data["device"] = _resolve_local(data["device"])
        if data.get("artifact", {}).get("threads") == 0:
            data["artifact"] = {**data["artifact"], "threads": data["device"]["cores"]}
    parts = {}
    for name, (cls, schema) in _TABLES.items():
        if name in data:
            parts[name] = _build(cls, f"{source} [{name}]", data[name], schema)
    art = parts["artifact"]
    formats = art.formats or (art.format,)
    if art.format not in formats:
        raise ProfileError(f"{source} [artifact]: format '{art.format}' is not in formats {list(formats)}.")
    wrong = [f for f in formats if f not in FAMILY_FORMATS[top["family"]]]
    if wrong:
        raise ProfileError(f"{source} [artifact]: family '{top['family']}' cannot run {', '.join(wrong)} "
                           f"artifacts; it takes {' or '.join(FAMILY_FORMATS[top['family']])}.")
    if top["family"] == "edgetpu" and art.quantization != "int8":
        raise ProfileError(f"{source} [artifact]: quantization must be int8 for the Edge TPU, got "
                           f"'{art.quantization}'.")
    parts["artifact"] = ArtifactSpec(**{**asdict(art), "formats": formats})
    return DeviceProfile(source=source, **top, **parts)


def user_profile_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edgesdk" / "profiles"


def _builtin_files() -> dict:
    root = resources.files("edgesdk.device_profiles")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".toml")}


def _user_files() -> dict:
    d = user_profile_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def available_profiles() -> dict:
    """Name -> where it comes from ('built-in' or a user path)."""
    names = {n: "built-in" for n in _builtin_files()}
    names.update({n: str(p) for n, p in _user_files().items()})
    return dict(sorted(names.items()))


def _looks_like_path(target: str) -> bool:
    return target.endswith(".toml") or os.sep in target or target.startswith(".")


def load_profile(target) -> DeviceProfile:
    """A profile by name (user dir, then built-in), by path, or passed through."""
    if isinstance(target, DeviceProfile):
        return target
    target = str(target)
    if _looks_like_path(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ProfileError(f"Profile file '{target}' does not exist. Give a path to a .toml "
                               f"device profile or a built-in name (see `edgesdk profiles`).")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"Cannot read profile file '{target}': {exc}.") from None
        return parse_profile(text, str(path))
    user = _user_files()
    if target in user:
        return parse_profile(user[target].read_text(encoding="utf-8"), str(user[target]))
    builtin = _builtin_files()
    if target in builtin:
        return parse_profile(builtin[target].read_text(encoding="utf-8"), f"device_profiles/{target}.toml")
    names = list(available_profiles())
    close = difflib.get_close_matches(target, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ProfileError(f"Unknown device profile '{target}'.{hint} Known profiles: {', '.join(names)}. "
                       f"Run `edgesdk profiles` to list them, or pass a path to your own .toml file.")
