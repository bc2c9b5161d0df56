"""An emulated Raspberry Pi: a Debian bookworm arm64 userland under qemu-user, with its own aarch64 sshd.

The root filesystem is built once with debootstrap (about 5 minutes) and cached as a tarball under the
user's cache dir, keyed by what it contains; a device restores it in seconds. The device runs in its
own network namespace (a veth link, like tests/netns.py) and in a private mount namespace that gives
it /proc, /sys, /dev and an ARM /proc/cpuinfo: qemu-user would pass the host's x86 cpuinfo through,
and the cpuinfo library inside XNNPACK and ONNX Runtime crashes on it. Every binary the device runs is
aarch64, executed through binfmt_misc by qemu-aarch64-static. Emulated timings mean nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgesdk.util import cache_home

SUITE, ARCH = "bookworm", "arm64"
# What Raspberry Pi OS Lite has that deploy relies on; no numpy and no runtime: `device setup` brings those.
PACKAGES = ("openssh-server", "python3", "python3-venv", "procps")
QEMU = "/usr/bin/qemu-aarch64-static"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CPU_PART = "0xd08"  # Cortex-A72, the Pi 4's core


def unavailable() -> str | None:
    """None when an emulated device can run here, else why not."""
    if os.geteuid() != 0:
        return "the emulated device needs root (debootstrap, chroot, namespaces)"
    for tool in (QEMU, "/usr/sbin/debootstrap", "/usr/sbin/update-binfmts"):
        if not Path(tool).exists():
            return f"{tool} is missing: run `make test-deps`"
    return None


def ensure_binfmt() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered (a fresh machine has neither until asked)."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True, capture_output=True)
    if "enabled" not in entry.read_text():
        raise RuntimeError(f"binfmt_misc has {entry} but it is not enabled")


def _interpreter() -> str:
    """Where the kernel looks for qemu when the device execs an aarch64 binary (inside its root)."""
    for line in (BINFMT / "qemu-aarch64").read_text().splitlines():
        if line.startswith("interpreter "):
            return line.split(" ", 1)[1]
    raise RuntimeError("binfmt_misc's qemu-aarch64 entry names no interpreter")


def _mirror() -> list:
    """This machine's own Debian mirror, so the build uses what apt here uses."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            uris = [w for w in words if "://" in w and "security" not in w]
            if words[:1] in (["URIs:"], ["deb"]) and uris:
                return [uris[0]]
    return []


def rootfs_tarball() -> Path:
    """The cached root filesystem, built on first use (one builder at a time across processes)."""
    key = hashlib.sha256(repr((SUITE, ARCH, "minbase", PACKAGES, 1)).encode()).hexdigest()[:16]
    cache = cache_home() / "devices"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"debian-{SUITE}-{ARCH}-{key}.tar"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            subprocess.run(["debootstrap", f"--arch={ARCH}", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                            SUITE, str(build / "root"), *_mirror()], check=True, capture_output=True, text=True)
            for keyfile in (build / "root/etc/ssh").glob("ssh_host_*"):
                keyfile.unlink()  # each device gets its own host key
            part = tarball.with_suffix(".part")
            subprocess.run(["tar", "-cf", str(part), "-C", str(build / "root"), "."], check=True)
            part.rename(tarball)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"debootstrap failed: {exc.stderr[-2000:]}") from None
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return tarball


def restore(tarball: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
    interp = root / _interpreter().lstrip("/")
    interp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(QEMU, interp)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    return root


def arm_cpuinfo(cores: int) -> str:
    block = ("processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: " + CPU_PART +
             "\nCPU revision\t: 3\n\n")
    return "".join(block.format(n=n) for n in range(cores)) + \
        "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1 (emulated)\n"


def device_command(root: Path, argv: list) -> list:
    """argv run as the device: a private mount namespace with its /proc, /sys, /dev and ARM cpuinfo, chrooted."""
    cpuinfo = root.parent / "cpuinfo"
    cpuinfo.write_text(arm_cpuinfo(os.cpu_count() or 1))
    r = str(root)
    setup = (f"mount -t proc proc {r}/proc && mount --bind {cpuinfo} {r}/proc/cpuinfo && "
             f"mount -t sysfs sysfs {r}/sys && mount --rbind /dev {r}/dev && exec chroot {r} \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "device", *argv]


def processes(root: Path) -> list:
    """(pid, command line) of every process running inside this device's root."""
    found, real = [], os.path.realpath(root)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == real:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(pid), cmd.strip()))
        except OSError:
            continue
    return found
