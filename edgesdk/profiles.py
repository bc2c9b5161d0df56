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

QUANTIZATIONS = ("int8", "fp16", "float")
IO_DTYPES = ("int8", "uint8", "float32")
ARCHES = ("aarch64", "armv7l", "x86_64", "any", "auto")


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
    interface: str = ""
    extra: dict = field(default_factory=dict, hash=False)  # the keys its family adds (a Jetson's dla_cores)

    def __getattr__(self, key):
        extra = self.__dict__.get("extra", {})
        if key in extra:
            return extra[key]
        raise AttributeError(f"this profile's accelerator has no '{key}'")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "tops": self.tops, "interface": self.interface, **self.extra}


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
        d["accelerator"] = self.accelerator.to_dict()
        return d


# --- schema ---------------------------------------------------------------
# (type, required, allowed values or None) per key, per table.
_TOP = {
    "name": (str, True, None),
    "description": (str, True, None),
    "family": (str, True, None),  # one of the installed target families, checked against them
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
    "accelerator": (Accelerator, {  # and the keys the family adds (TargetFamily.accelerator_keys)
        "kind": (str, False, None),
        "name": (str, False, None),
        "tops": (float, False, None),
        "interface": (str, False, None),
    }),
    "artifact": (ArtifactSpec, {
        "format": (str, True, None),
        "quantization": (str, True, QUANTIZATIONS),
        "input_dtype": (str, True, IO_DTYPES),
        "output_dtype": (str, True, IO_DTYPES),
        "threads": (int, True, None),
        "formats": (list, False, None),
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


def _schemas(family) -> dict:
    """The tables' schemas for a profile of this family: what it runs, the accelerator keys it adds."""
    from edgesdk.targets import all_formats
    formats = all_formats()
    tables = dict(_TABLES)
    cls, acc = tables["accelerator"]
    acc = {**acc, "kind": (str, False, ("none",) + tuple(k for k in family.accelerator_kinds if k != "none"))}
    acc.update({key: (typ, False, None) for key, (typ, _default) in family.accelerator_keys.items()})
    tables["accelerator"] = (cls, acc)
    cls, art = tables["artifact"]
    tables["artifact"] = (cls, {**art, "format": (str, True, formats), "formats": (list, False, formats)})
    return tables


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
    family = _family(top["family"], source)
    for name in _REQUIRED_TABLES:
        if name not in data:
            raise ProfileError(f"{source}: missing required table [{name}].")
    if data.get("device", {}).get("arch") == "auto":
        data["device"] = _resolve_local(data["device"])
        if data.get("artifact", {}).get("threads") == 0:
            data["artifact"] = {**data["artifact"], "threads": data["device"]["cores"]}
    parts = {}
    for name, (cls, schema) in _schemas(family).items():
        if name in data:
            parts[name] = _build(None if name == "accelerator" else cls, f"{source} [{name}]", data[name], schema)
    extra = {key: default for key, (_typ, default) in family.accelerator_keys.items()}
    acc = parts.get("accelerator", {})
    extra.update({k: v for k, v in acc.items() if k in family.accelerator_keys})
    parts["accelerator"] = Accelerator(**{k: v for k, v in acc.items() if k not in family.accelerator_keys},
                                       extra=extra)
    art = parts["artifact"]
    formats = art.formats or (art.format,)
    if art.format not in formats:
        raise ProfileError(f"{source} [artifact]: format '{art.format}' is not in formats {list(formats)}.")
    wrong = [f for f in formats if f not in family.formats]
    if wrong:
        raise ProfileError(f"{source} [artifact]: family '{family.name}' cannot run {', '.join(wrong)} "
                           f"artifacts; it takes {' or '.join(family.formats)}.")
    if art.quantization not in family.computes_in(art.format):
        raise ProfileError(f"{source} [artifact]: quantization must be {' or '.join(family.computes_in(art.format))} "
                           f"for family '{family.name}' ({art.format}), got '{art.quantization}'.")
    problem = family.validate_profile(art, parts["accelerator"])
    if problem:
        raise ProfileError(f"{source}: {problem}")
    parts["artifact"] = ArtifactSpec(**{**asdict(art), "formats": formats})
    return DeviceProfile(source=source, **top, **parts)


def _family(name: str, source: str):
    from edgesdk.targets import families
    known = families()
    if name not in known:
        raise ProfileError(f"{source}: key 'family' is {name!r}; expected one of {list(known)}.")
    return known[name]


def user_profile_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edgesdk" / "profiles"


def _builtin_files() -> dict:
    """Name -> (file, label): the profiles shipped in the package, then those target-family plug-ins ship
    (never shadowing ours)."""
    from edgesdk.targets import families
    found = {p.name[:-5]: (p, f"device_profiles/{p.name}")
             for p in resources.files("edgesdk.device_profiles").iterdir() if p.name.endswith(".toml")}
    for family in families().values():
        if family.profile_dir:
            for p in sorted(Path(family.profile_dir).glob("*.toml")):
                found.setdefault(p.stem, (p, str(p)))
    return found


def _user_files() -> dict:
    d = user_profile_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def available_profiles() -> dict:
    """Name -> where it comes from ('built-in' or a user path)."""
    names = {n: "built-in" if label.startswith("device_profiles/") else label
             for n, (_path, label) in _builtin_files().items()}
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
        path, label = builtin[target]
        return parse_profile(path.read_text(encoding="utf-8"), label)
    names = list(available_profiles())
    close = difflib.get_close_matches(target, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ProfileError(f"Unknown device profile '{target}'.{hint} Known profiles: {', '.join(names)}. "
                       f"Run `edgesdk profiles` to list them, or pass a path to your own .toml file.")
