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
    def __init__(self, root: Path, name: str, client_key: Path, address="127.0.0.1", netns=None):
        self.root, self.name, self.address, self.netns = root, name, address, netns
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if netns is None else 22  # a namespace has its own ports
        self.host_key = keygen(root / "host_key")
        (root / "authorized_keys").write_text(Path(str(client_key) + ".pub").read_text())
        self.config = root / "sshd_config"
        self.config.write_text(f"""Port {self.port}
ListenAddress {address}
HostKey {self.host_key}
AuthorizedKeysFile {root / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
Subsystem sftp internal-sftp
PidFile {root / 'sshd.pid'}
LogLevel VERBOSE
""")
        self.proc = None
        self.log = root / "sshd.log"

    def start(self, timeout=10.0):
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory, needed as root
        self._log = open(self.log, "w+")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(prefix + [SSHD, "-D", "-e", "-f", str(self.config)], stderr=self._log,
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
        kind, b64 = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"[{alias}]:{self.port} {kind} {b64}"

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_key) + ".pub"], capture_output=True, text=True)
        return out.stdout.split()[1]
