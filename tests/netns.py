"""Named test devices in network namespaces: each its own network stack, veth link and sshd.

Used to cut and throttle a device's link mid-deploy (`ip link set ... down`, `tc ... tbf`).
Addresses come from 10.213.0.0/16, only ever inside namespaces these tests create.
"""

import fcntl
import itertools
import os
import subprocess

from sshd import SSHServer

_ids = itertools.count(1)
_sweeps = iter([True])  # sweep once per process


def sh(*argv, check=True):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"edgesdk-probe-{os.getpid()}"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def _sweep_stale() -> None:
    """Namespaces (and their host-side links) left by test processes that were killed: their addresses
    would shadow a new device's."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "edgesdk" and parts[1].isdigit() and not _alive(int(parts[1])):
            sh("ip", "netns", "del", name, check=False)
            sh("ip", "link", "del", f"eh{parts[2]}", check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _octets_in_use() -> set:
    out = sh("ip", "-br", "addr", check=False).stdout
    return {int(a.split(".")[2]) for a in out.split() if a.startswith("10.213.")}


class NamespacedDevice:
    def __init__(self, root, alias, client_key, device=None):
        """device: an emulated device's root filesystem whose own sshd serves this namespace."""
        if next(_sweeps, None) is not None:
            _sweep_stale()
        n = (os.getpid() % 200) * 10 + next(_ids)
        self.ns = f"edgesdk-{os.getpid()}-{n}"
        self.host_if, self.dev_if = f"eh{n}", f"ed{n}"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.dev_if)
        sh("ip", "link", "set", self.dev_if, "netns", self.ns)
        with open("/run/edgesdk-netns.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers: choosing an octet and taking it is one step
            used = _octets_in_use()
            octet = next(o for o in (((n + k) % 250) + 1 for k in range(250)) if o not in used)
            self.host_ip, self.ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
            sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        for cmd in (["ip", "addr", "add", f"{self.ip}/30", "dev", self.dev_if], ["ip", "link", "set", self.dev_if, "up"],
                    ["ip", "link", "set", "lo", "up"]):
            sh("ip", "netns", "exec", self.ns, *cmd)
        self.server = SSHServer(root, alias, client_key, address=self.ip, netns=self.ns, device=device).start()
        self.alias = alias

    def ssh_config(self, user, key) -> str:
        return (f"Host {self.alias}\n  HostName {self.ip}\n  Port {self.server.port}\n  User {user}\n"
                f"  IdentityFile {key}\n  HostKeyAlias {self.alias}\n\n")

    def cut(self):
        sh("ip", "link", "set", self.host_if, "down")

    def restore(self):
        sh("ip", "link", "set", self.host_if, "up")

    def throttle(self, rate="1mbit"):
        sh("tc", "qdisc", "replace", "dev", self.host_if, "root", "tbf", "rate", rate, "burst", "16kb",
           "latency", "400ms")

    def close(self):
        self.server.stop()
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
