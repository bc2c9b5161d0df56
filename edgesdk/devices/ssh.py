"""A small session to a device: run a command, put a file. Over SSH (paramiko), or `local`.

Honours ~/.ssh/config (HostName, User, Port, IdentityFile, HostKeyAlias,
ProxyJump through a first hop), ssh-agent and key files. Unknown host keys are
refused unless the caller opts in (like OpenSSH's accept-new, the key is then
recorded); a changed key is always refused. Keepalives and TCP_USER_TIMEOUT
make a dead link fail in seconds instead of blocking for minutes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgesdk.errors import ConnectionLost, DeployError, HostKeyError  # noqa: F401 (re-exported)
from edgesdk.util import printable


def ssh_config_path() -> Path:
    return Path(os.environ.get("EDGESDK_SSH_CONFIG", "~/.ssh/config")).expanduser()


def known_hosts_path() -> Path:
    return Path(os.environ.get("EDGESDK_KNOWN_HOSTS", "~/.ssh/known_hosts")).expanduser()


def global_known_hosts_path() -> Path:
    """The system-wide file OpenSSH also trusts (read, never written)."""
    return Path(os.environ.get("EDGESDK_GLOBAL_KNOWN_HOSTS", "/etc/ssh/ssh_known_hosts"))


@dataclass
class Target:
    """Where a host spec points: alias, user@host:port, or local."""

    spec: str
    hostname: str
    user: str | None = None
    port: int = 22
    identity_files: tuple = ()
    host_key_alias: str | None = None
    proxy_jump: str | None = None

    @property
    def local(self) -> bool:
        return self.spec == "local"

    @property
    def key_name(self) -> str:
        """The name OpenSSH files the host key under: a HostKeyAlias as it is (no port), else host or [host]:port."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def paramiko_name(self) -> str:
        """The name paramiko looks the key up under (and earlier edgesdk versions filed it under)."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"


def resolve(spec: str, default_user: str | None = None) -> Target:
    if spec == "local":
        return Target("local", "localhost")
    user, _, rest = spec.rpartition("@") if "@" in spec else (None, "", spec)
    host, port = rest, None
    if rest.count(":") == 1:
        host, port_text = rest.split(":")
        if not port_text.isdigit():
            raise DeployError(f"Host '{spec}': the port after ':' must be a number.")
        port = int(port_text)
    config = {}
    path = ssh_config_path()
    if path.is_file():
        import paramiko
        cfg = paramiko.SSHConfig.from_path(str(path))
        config = cfg.lookup(host)
    return Target(
        spec=spec, hostname=config.get("hostname", host), user=user or config.get("user") or default_user,
        port=port or int(config.get("port", 22)),
        identity_files=tuple(os.path.expanduser(f) for f in config.get("identityfile", [])),
        host_key_alias=config.get("hostkeyalias"), proxy_jump=config.get("proxyjump"))


def fingerprint(key) -> str:
    import base64
    import hashlib
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Session:
    """run(cmd) -> (status, stdout, stderr) and put(local, remote) on the device."""

    def __init__(self, target: Target, *, accept_new_host_key=False, connect_timeout=10.0, retries=2,
                 password=None):
        self.target = target
        self.client = None
        if not target.local:
            self._connect(accept_new_host_key, connect_timeout, retries, password)

    # -- connecting -----------------------------------------------------------
    def _connect(self, accept_new, timeout, retries, password):
        import paramiko
        t = self.target
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                sock = self._socket(timeout)
                client = paramiko.SSHClient()
                kh = known_hosts_path()
                _load_known_keys(client.get_host_keys(), t)
                client.set_missing_host_key_policy(_Policy(t, kh, accept_new))
                client.connect(t.host_key_alias or t.hostname, port=t.port, username=t.user, sock=sock,
                               key_filename=list(t.identity_files) or None, timeout=timeout,
                               banner_timeout=timeout, auth_timeout=timeout, password=password,
                               allow_agent=True, look_for_keys=True)
                client.get_transport().set_keepalive(5)
                self.client = client
                return
            except paramiko.BadHostKeyException as exc:
                raise HostKeyError(
                    f"The host key of {t.spec} ({t.key_name}) has CHANGED: it offered {fingerprint(exc.key)}, "
                    f"known_hosts has {fingerprint(exc.expected_key)}. This can mean someone is intercepting "
                    f"the connection, or the device was reinstalled. If you know why, remove the old key with "
                    f"`ssh-keygen -R '{t.key_name}'` and connect again.") from None
            except HostKeyError:
                raise
            except paramiko.PasswordRequiredException:
                if password is None and os.isatty(0):  # a passphrase prompt only on a terminal
                    import getpass
                    password = getpass.getpass(f"Passphrase for the key to {t.spec}: ")
                    continue
                raise DeployError(f"The key for {t.spec} is encrypted and there is no terminal to ask for its "
                                  f"passphrase: add it to ssh-agent (`ssh-add KEY`) first.") from None
            except paramiko.AuthenticationException:
                raise DeployError(f"Authentication to {t.user or '(default user)'}@{t.hostname}:{t.port} failed: "
                                  f"no key was accepted. Load your key into ssh-agent, set IdentityFile in "
                                  f"~/.ssh/config, or check the user name.") from None
            except socket.gaierror:
                raise DeployError(f"Cannot resolve host name '{t.hostname}' ({t.spec}). Check the name or "
                                  f"your ~/.ssh/config.") from None
            except (ConnectionRefusedError, socket.timeout, TimeoutError, OSError,
                    paramiko.SSHException) as exc:
                if attempt < retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                what = ("refused the connection (is sshd running on that port?)"
                        if isinstance(exc, ConnectionRefusedError) else f"could not be reached ({exc})")
                raise DeployError(f"{t.hostname}:{t.port} ({t.spec}) {what}; tried {retries + 1} times.") from None

    def _socket(self, timeout):
        t = self.target
        if t.proxy_jump:
            jump = Session(resolve(t.proxy_jump))
            channel = jump.client.get_transport().open_channel("direct-tcpip", (t.hostname, t.port),
                                                              ("127.0.0.1", 0), timeout=timeout)
            self._jump = jump
            return channel
        sock = socket.create_connection((t.hostname, t.port), timeout=timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # a dead peer fails writes within 15 s
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 15000)
        for opt, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        return sock

    # -- using ----------------------------------------------------------------
    def run(self, argv, timeout=None, check=True):
        """Run argv (a list; every word is quoted) and return (status, stdout, stderr)."""
        command = " ".join(_quote(str(a)) for a in argv)
        if self.target.local:
            try:
                p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeployError(f"`{argv[0]}` did not finish within {timeout:g} s.") from None
            status, out, err = p.returncode, p.stdout, p.stderr
        else:
            status, out, err = self._run_remote(command, timeout)
        if check and status != 0:
            raise DeployError(f"On {self.target.spec}, `{command[:200]}` failed (exit {status}): "
                              f"{(err or out).strip()[-400:]}")
        return status, out, err

    def _run_remote(self, command, timeout):
        try:
            chan = self.client.get_transport().open_session(timeout=10)
            chan.settimeout(timeout)
            chan.exec_command(command)
            out, err = chan.makefile("r").read(), chan.makefile_stderr("r").read()
            status = chan.recv_exit_status()
        except socket.timeout:
            raise DeployError(f"The command on {self.target.spec} did not finish within {timeout:g} s.") from None
        except (EOFError, OSError, AttributeError, _ssh_errors()) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectionLost(f"The connection to {self.target.spec} was lost ({reason}).") from None
        if status == -1:  # paramiko's way of saying the channel closed without an exit status
            transport = self.client.get_transport()
            if transport is not None and transport.is_active():  # the link is fine: a signal ended the command
                tail = "\n  ".join(printable(err.decode(errors="replace") if isinstance(err, bytes) else err)
                                   .strip().splitlines()[-5:]) or "(no output)"
                raise DeployError(f"On {self.target.spec}, `{command[:120]}` ended without an exit status "
                                  f"(killed by a signal?). Its last output:\n  {tail}")
            raise ConnectionLost(f"The connection to {self.target.spec} was lost while running the command.")
        if isinstance(out, bytes):
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        return status, printable(out), printable(err)  # a device's text reaches the terminal: no escapes

    def put(self, local, remote, progress=None) -> int:
        local = str(local)
        if self.target.local:
            shutil.copyfile(local, os.path.expanduser(remote))
            return os.path.getsize(local)
        try:
            sftp = self.client.open_sftp()
            try:
                sftp.put(local, remote, callback=progress, confirm=True)
            finally:
                sftp.close()
        except (EOFError, OSError, _ssh_errors()) as exc:
            raise ConnectionLost(f"Uploading to {self.target.spec} failed, the connection was lost or refused "
                                 f"the write: {str(exc) or type(exc).__name__}") from None
        return os.path.getsize(local)

    def close(self):
        if self.client is not None:
            self.client.close()
        if getattr(self, "_jump", None):
            self._jump.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _load_known_keys(into, target: Target) -> None:
    """The keys OpenSSH would trust for target (user file, then the system's; hashed names too), filed under
    the name paramiko looks up."""
    import paramiko
    for path in (known_hosts_path(), global_known_hosts_path()):
        try:
            keys = paramiko.HostKeys(str(path)) if path.is_file() else None
        except (OSError, paramiko.SSHException):
            continue  # unreadable: as if absent, like OpenSSH
        for name in (target.key_name, target.paramiko_name) if keys else ():
            found = keys.lookup(name)
            if found:
                have = into.lookup(target.paramiko_name) or {}
                for kind in found.keys():
                    if kind not in have:
                        into.add(target.paramiko_name, kind, found[kind])
                break


def _quote(word: str) -> str:
    """Shell-quote a word, leaving a leading `~/` for the device's shell to expand (its home, not ours)."""
    if word == "~" or word.startswith("~/"):
        return "~" + (("/" + shlex.quote(word[2:])) if len(word) > 2 else ("/" if word == "~/" else ""))
    return shlex.quote(word)


def _ssh_errors():
    import paramiko
    return paramiko.SSHException


class _Policy:
    """Refuse unknown hosts, showing the fingerprint; with accept_new, record the key (OpenSSH accept-new)."""

    def __init__(self, target, known_hosts, accept_new):
        self.target, self.known_hosts, self.accept_new = target, known_hosts, accept_new

    def missing_host_key(self, client, hostname, key):
        name = self.target.key_name
        if not self.accept_new:
            scan = ("" if self.target.host_key_alias else
                    f", or `ssh-keyscan -p {self.target.port} {self.target.hostname} >> {self.known_hosts}`")
            raise HostKeyError(
                f"{self.target.spec} ({name}) is not in {self.known_hosts} nor {global_known_hosts_path()}. Its "
                f"{key.get_name()} key is {fingerprint(key)}. If that is your device's key, either add it "
                f"yourself after checking it (connect once with `ssh {self.target.spec}`{scan}) or pass "
                f"--accept-new-host-key to record it on first use.")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{name} {key.get_name()} {key.get_base64()}\n")
