"""device setup: give a device a venv with the runtime its profile needs, from wheels this machine fetches.

Raspberry Pi OS Bookworm and Debian 12 refuse `pip install` into the system
Python (PEP 668), and a board in the field is often offline. So this machine
downloads the wheels for the device's own platform (CPython version, machine,
glibc, as the device reports them), pushes them into the work dir (each
skipped when the device already has it, like artifacts), and the device
builds a venv in its work dir and installs from those files only. Deploy
then finds that venv by itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from edgesdk.artifacts.artifact import tool_versions
from edgesdk.errors import DeployError, OptionError, RuntimeMissing
from edgesdk.progress import Progress
from edgesdk.util import cache_home, sha256_file

VENV = "venv"  # under the work dir; deploy looks for it there

_FACTS = ("import json,platform,sys\nlibc=platform.libc_ver()\n"
          "try:\n import ensurepip,venv\n ok=True\nexcept ImportError:\n ok=False\n"
          "print(json.dumps({'machine':platform.machine(),'python':'%d.%d'%sys.version_info[:2],"
          "'libc':libc[0],'libc_version':libc[1],'venv':ok}))")
_MAKE_VENV = ("import os,subprocess,sys\nd=sys.argv[1]\np=os.path.join(d,'bin','python')\n"
              "r=0 if os.path.exists(p) else subprocess.call([sys.executable,'-m','venv',d])\n"
              "sys.exit(r)")


def platform_tags(machine: str, libc: str, libc_version: str) -> list:
    """pip --platform tags a device takes: every manylinux glibc level up to its own, newest first."""
    if libc != "glibc" or not libc_version:
        return [f"linux_{machine}"]
    major, minor = (int(p) for p in libc_version.split(".")[:2])
    if (major, minor) < (2, 17):  # older than manylinux2014 itself
        return [f"linux_{machine}"]
    return [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)] + \
        [f"manylinux2014_{machine}", f"linux_{machine}"]


def _abis(python: str) -> list:
    """CPython's ABI tags for a version: 3.7 and older also built 'm' (pymalloc) wheels."""
    major, minor = (int(p) for p in python.split(".")[:2])
    return [f"cp{major}{minor}"] + ([f"cp{major}{minor}m"] if (major, minor) < (3, 8) else [])


def download_wheels(requirements: list, facts: dict, progress: Progress) -> list:
    """Wheels for the device's platform, cached per platform; the last good set is reused offline."""
    py = facts["python"].replace(".", "")
    tags = platform_tags(facts["machine"], facts["libc"], facts["libc_version"])
    cache = cache_home() / "wheels" / f"cp{py}-{facts['machine']}-{facts['libc']}{facts['libc_version']}"
    index = cache / (hashlib.sha256(" ".join(sorted(requirements)).encode()).hexdigest()[:16] + ".json")
    cache.mkdir(parents=True, exist_ok=True)
    progress.step(f"downloading {', '.join(requirements)} for CPython {facts['python']} on {facts['machine']} "
                  f"({facts['libc']} {facts['libc_version']})")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
                "--dest", tmp, "--only-binary=:all:", "--implementation", "cp", "--python-version", facts["python"],
                *(a for abi in _abis(facts["python"]) for a in ("--abi", abi)),
                *(a for t in tags for a in ("--platform", t)), *requirements]
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode == 0:
            names = sorted(f.name for f in Path(tmp).iterdir())
            for name in names:
                Path(tmp, name).replace(cache / name)
            index.write_text(json.dumps(names))
        elif "No matching distribution" in p.stderr or "Could not find a version" in p.stderr:
            m = re.search(r"No matching distribution found for (\S+)", p.stderr)
            raise RuntimeMissing(
                f"No wheel of {m.group(1) if m else ' or '.join(requirements)} fits the device's platform "
                f"(CPython {facts['python']}, {facts['machine']}, {facts['libc']} {facts['libc_version'] or '?'}). "
                f"Use a newer OS image there (Raspberry Pi OS Bookworm has Python 3.11 and glibc 2.36), or pass "
                f"--remote-python with a newer Python on the device.")
        elif index.is_file() and all((cache / n).is_file() for n in json.loads(index.read_text())):
            progress.warn("could not reach the package index; using the wheels downloaded before")
        else:
            raise DeployError("Downloading the device's wheels failed and none are cached: "
                              + (p.stderr.strip().splitlines() or ["(no output)"])[-1])
    return [cache / n for n in json.loads(index.read_text())]


def setup(host: str, *, profile: str = "rpi4", formats=None, remote_python=None, workdir=None,
          accept_new_host_key=False, progress: Progress | None = None) -> dict:
    """Make `host` ready for `profile`'s artifacts; returns what was installed where."""
    from edgesdk.profiles import load_profile
    from edgesdk.targets import get_family
    from .deploy import Device
    from .ssh import Session, resolve
    progress = progress or Progress()
    if host == "local":
        raise OptionError("`device setup` prepares a remote device; this machine's runtimes come with "
                          "`pip install edgesdk[keras]` or `[onnx]`.")
    prof = load_profile(profile)
    formats = list(formats or prof.artifact.formats or [prof.artifact.format])
    family = get_family(prof.family)  # which pip requirement gives each format its runtime there
    bad = [f for f in formats if f not in family.runtimes]
    if bad:
        raise OptionError(f"No runtime to install for format {', '.join(bad)} on {prof.name}; choose from "
                          f"{', '.join(family.runtimes)}.")
    requirements = ["numpy"] + [family.runtimes[f] for f in formats]
    python = remote_python or prof.connection.python or "python3"
    progress.step(f"{host}: connecting")
    with Session(resolve(host, default_user=prof.connection.user or None),
                 accept_new_host_key=accept_new_host_key) as session:
        dev = Device(session, python, 600.0, progress)
        root, _ = dev.prepare(workdir or prof.connection.workdir or "~/.cache/edgesdk")
        facts = json.loads(dev.py(_FACTS))
        if not facts["venv"]:
            raise RuntimeMissing(f"{python} on {host} cannot make a venv (Debian splits it out): run "
                                 f"`sudo apt install python3-venv` on the device, then this again.")
        wheels = download_wheels(requirements, facts, progress)
        sent = 0
        session.run([python, "-c", "import os,sys;os.makedirs(sys.argv[1],exist_ok=True)", f"{root}/wheels"])
        for wheel in wheels:
            sent += dev.push(wheel, f"{root}/wheels/{wheel.name}", sha256_file(wheel))
        venv = f"{root}/{VENV}"
        progress.step(f"{host}: installing {', '.join(requirements)} into {venv}")
        status, out, err = session.run([python, "-c", _MAKE_VENV, venv], timeout=600, check=False)
        if status != 0:
            raise RuntimeMissing(f"Making a venv at {venv} on {host} failed: {(err or out).strip()[-300:]}")
        vpy = f"{venv}/bin/python"
        # --no-compile: bytecode is written on first import instead (much faster on a small board, and under
        # emulation), and only for what the runner imports
        status, out, err = session.run([vpy, "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                                        "--no-compile", "--find-links", f"{root}/wheels", *requirements],
                                       timeout=1800, check=False)
        if status != 0:
            raise RuntimeMissing(f"Installing {', '.join(requirements)} on {host} failed: "
                                 f"{(err or out).strip()[-400:]}")
        installed = json.loads(dev.py(_VERSIONS, *requirements, python=vpy))
    ours = tool_versions(installed)
    for name, version in installed.items():
        if name in ours and _major_minor(version) < _major_minor(ours[name]):
            progress.warn(f"{host} got {name} {version}, the newest for its platform; artifacts made here are "
                          f"checked against {ours[name]} and may use op versions it lacks: a newer OS image on "
                          f"the device avoids that.")
    return {"host": host, "profile": prof.name, "python": vpy, "python_version": facts["python"],
            "platform": f"{facts['machine']} {facts['libc']} {facts['libc_version']}", "packages": installed,
            "uploaded_bytes": sent, "note": family.setup_note}


def _major_minor(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in (version.split(".") + ["0"])[:2])


_VERSIONS = ("import json,sys\nfrom importlib import metadata\n"
             "print(json.dumps({n: metadata.version(n) for n in sys.argv[1:]}))")
