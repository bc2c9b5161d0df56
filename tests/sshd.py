"""A real OpenSSH server on a loopback port, for the deploy tests.

Fresh host key and client key per server, public-key auth only, no PAM,
internal-sftp. The server runs in the foreground (-D -e) so its own stderr
tells when it listens; stop() kills it and the session processes it forked.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind="ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path


class SSHServer:
    """sshd on `address`; in a network namespace with `netns`; with `device`, the sshd of an emulated
    device's root filesystem (see emulated_device.py), its files written inside that root."""

    def __init__(self, root: Path, name: str, client_key: Path, address="127.0.0.1", netns=None, device=None,
                 extra_config: str = ""):
        self.root, self.name, self.address, self.netns, self.device = root, name, address, netns, device
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if netns is None else 22  # a namespace has its own ports
        # where the server's files live on this machine, and how the server itself names them
        files, seen_as = (device / "etc/edgesdk-sshd", "/etc/edgesdk-sshd") if device else (root, str(root))
        files.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(files / "host_key")
        (files / "authorized_keys").write_text(Path(str(client_key) + ".pub").read_text())
        self.config = files / "sshd_config"
        self.config.write_text(f"""Port {self.port}
ListenAddress {address}
HostKey {seen_as}/host_key
AuthorizedKeysFile {seen_as}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
Subsystem sftp internal-sftp
PidFile {seen_as}/sshd.pid
LogLevel VERBOSE
{extra_config}""")
        self.sshd_argv = [SSHD if device is None else "/usr/sbin/sshd", "-D", "-e", "-f", f"{seen_as}/sshd_config"]
        self.proc = None
        self.log = root / "sshd.log"

    def start(self, timeout=10.0):
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory, needed as root
        self._log = open(self.log, "w+")
        argv = self.sshd_argv
        if self.device is not None:
            import emulated_device
            argv = emulated_device.device_command(self.device, argv)
            timeout = max(timeout, 60.0)  # an emulated sshd starts slowly
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(prefix + argv, stderr=self._log,
                                     stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            if f"Server listening on {self.address} port {self.port}" in self.log.read_text():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start listening: {self.log.read_text()}")

    def children(self) -> list:
        """PIDs of the per-connection processes this sshd forked."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        kids = [int(p) for p in out.stdout.split()]
        for k in list(kids):
            more = subprocess.run(["ps", "-o", "pid=", "--ppid", str(k)], capture_output=True, text=True).stdout
            kids += [int(p) for p in more.split()]
        return kids

    def stop(self):
        if self.proc is None:
            return
        pids = self.children() + [self.proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None
        self._log.close()

    def public_host_key_line(self, alias: str) -> str:
        """The line OpenSSH writes for a host reached through HostKeyAlias: the alias alone, no port."""
        kind, b64 = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"{alias} {kind} {b64}"

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_key) + ".pub"], capture_output=True, text=True)
        return out.stdout.split()[1]
