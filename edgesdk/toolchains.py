"""Private environments for converters whose pins clash with the main stack.

onnx2tf pins TensorFlow 2.19, numpy 1.26 and onnx 1.19; the SDK runs TensorFlow 2.21 and onnx 1.23.
Such a toolchain gets its own venv under the cache dir, keyed by what it contains (requirements, this
Python, the platform), made on first use and reused after. It is built where it will live (a venv
records its own path) and marked READY only once complete, under a lock: an interrupted or failed
install never looks ready (the next use rebuilds it) and two processes never build the same one.

A job runs as one subprocess: a standalone worker script (it imports nothing of edgesdk) gets a JSON
request on stdin and writes a JSON reply to the file the request names; its chatter goes to a log whose
tail is the error message when it fails. A Worker is the same kept running for several requests, one JSON
line each way, for tools whose state cannot be saved between them (a model built in memory).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError
from .util import cache_home

# A toolchain that pulls torch gets the CPU build the main stack uses, never a multi-GB CUDA build.
CONSTRAINTS = ("torch==2.13.0",)
INSTALL_TIMEOUT = 1800


class ToolchainError(ConversionError):
    """A private toolchain could not be made or its job failed (exit code 6, as conversion failures)."""


@dataclass(frozen=True)
class Toolchain:
    name: str
    requirements: tuple      # pip requirement strings, installed with their dependencies
    purpose: str             # what it is for, in messages
    size_note: str = ""      # what the first use costs, said before it starts
    no_deps: tuple = ()      # installed after, without their declared dependencies (pins that cannot hold)

    def key(self) -> str:
        parts = {"requirements": list(self.requirements), "constraints": list(CONSTRAINTS),
                 "python": platform.python_version(), "machine": platform.machine(), "system": sys.platform}
        if self.no_deps:
            parts["no_deps"] = list(self.no_deps)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def home(self) -> Path:
        return cache_home() / "toolchains" / f"{self.name}-{self.key()}"

    @property
    def python(self) -> Path:
        return self.home / "bin" / "python"

    def ready(self) -> bool:
        return (self.home / "READY").is_file() and self.python.is_file()


def ensure(toolchain: Toolchain, step=None) -> Path:
    """The toolchain's Python, making its environment first if it does not exist yet."""
    if toolchain.ready():
        return toolchain.python
    root = toolchain.home.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{toolchain.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then reuse
        if toolchain.ready():
            return toolchain.python
        if step:
            step(f"creating the private {toolchain.name} environment for {toolchain.purpose} (first use"
                 f"{': ' + toolchain.size_note if toolchain.size_note else ''}) in {toolchain.home}")
        _build(toolchain)
    return toolchain.python


def _build(toolchain: Toolchain) -> None:
    try:
        if toolchain.home.exists():
            shutil.rmtree(toolchain.home)  # a leftover without READY: an install that did not finish
        _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(toolchain.home)], toolchain,
             "creating its venv")
        constraints = toolchain.home / "constraints.txt"
        constraints.write_text("\n".join(CONSTRAINTS) + "\n")
        _run([str(toolchain.python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
              "--constraint", str(constraints), *toolchain.requirements], toolchain, "installing "
             + " ".join(toolchain.requirements))
        if toolchain.no_deps:
            _run([str(toolchain.python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                  "--no-deps", "--constraint", str(constraints), *toolchain.no_deps], toolchain,
                 "installing " + " ".join(toolchain.no_deps))
        (toolchain.home / "READY").write_text(json.dumps({"requirements": list(toolchain.requirements)}) + "\n")
    except BaseException:
        shutil.rmtree(toolchain.home, ignore_errors=True)
        raise


def _run(cmd: list, toolchain: Toolchain, what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"})
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"Creating the private {toolchain.name} environment timed out while {what} "
                             f"(over {INSTALL_TIMEOUT // 60} minutes). Check the network or the package "
                             f"index pip uses, then run the command again.") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise ToolchainError(f"Could not create the private {toolchain.name} environment for "
                             f"{toolchain.purpose}: {what} failed (exit {proc.returncode}). pip said:\n{tail}\n"
                             f"It needs the package index that pip is set up for (or a local mirror of it). "
                             f"Nothing was kept; the next run tries again.")


HEARTBEAT_S = 10  # a job still running says so this often (no stage is silent longer), and the budget is checked


def run(toolchain: Toolchain, worker: Path, request: dict, *, timeout: float = 3600, step=None,
        waiting=None) -> dict:
    """Run `worker` with the toolchain's Python on `request`; returns its reply.

    The worker runs in a fresh working directory (tools that drop files into the cwd drop them there),
    with -I so nothing of the caller's environment (PYTHONPATH, user site) leaks into it. waiting(seconds) is
    called every HEARTBEAT_S while it runs; what it raises (a spent budget) stops the job.
    """
    python = ensure(toolchain, step)
    with tempfile.TemporaryDirectory(prefix=f"edgesdk-{toolchain.name}-") as work:
        reply_path = Path(work) / "reply.json"
        log_path = Path(work) / "log.txt"
        request = {**request, "reply": str(reply_path), "work": work}
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(python), "-I", str(worker)], stdin=subprocess.PIPE, text=True,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=work, env=_env(python))
            try:
                try:
                    proc.stdin.write(json.dumps(request))
                    proc.stdin.close()
                except BrokenPipeError:  # it ended before reading: its log says why
                    pass
                _wait(proc, timeout, waiting, toolchain.name)
            finally:
                if proc.poll() is None:  # stopped by the budget or an interrupt: nothing of it is left running
                    proc.kill()
                    proc.wait()
        reply = json.loads(reply_path.read_text()) if reply_path.is_file() else None
        if proc.returncode != 0 or reply is None or reply.get("error"):
            said = reply.get("error") if reply and reply.get("error") else _tail(log_path)
            raise ToolchainError(f"{toolchain.name} failed: {_sentence(said)} (its full log: {_keep_log(log_path, toolchain)})")
        return reply


def _wait(proc, timeout: float, waiting, name: str) -> None:
    """Until `proc` ends, calling waiting(seconds so far) every HEARTBEAT_S."""
    started = time.monotonic()
    while True:
        try:
            proc.wait(timeout=HEARTBEAT_S)
            return
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise ToolchainError(f"{name} did not finish within {timeout / 60:.0f} minutes.") from None
            if waiting is not None:
                waiting(elapsed)


LOGS_KEPT = 20


def _keep_log(log: Path, toolchain: Toolchain) -> Path:
    """A failed job's log, kept under the cache dir (the last LOGS_KEPT of them) so its message can name it."""
    logs = cache_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kept = logs / f"{toolchain.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    shutil.copyfile(log, kept)
    for old in sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-LOGS_KEPT]:
        old.unlink(missing_ok=True)
    return kept


def _sentence(text: str, limit: int = 300) -> str:
    """One line of a tool's message, cut at a word, not mid-word."""
    text = _paragraph(text)
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _tail(path: Path, lines: int = 8) -> str:
    text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(text[-lines:]) or "(no output)"


class Worker:
    """A toolchain's worker kept running: request and reply are one JSON line each on its stdin and stdout
    (the worker moves its own chatter to stderr, which goes to a log). Close it, or use it as a context."""

    def __init__(self, toolchain: Toolchain, worker: Path, *, step=None):
        python = ensure(toolchain, step)
        self.name = toolchain.name
        self._work = tempfile.TemporaryDirectory(prefix=f"edgesdk-{toolchain.name}-")
        self.work = Path(self._work.name)
        self._log_path = self.work / "log.txt"
        self._log = open(self._log_path, "w")
        self._proc = subprocess.Popen([str(python), "-I", str(worker), "--serve"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, cwd=self.work, text=True,
                                      env=_env(python))

    def call(self, request: dict, timeout: float = 3600, waiting=None) -> dict:
        """The worker's reply to `request`; waiting(seconds) is called every HEARTBEAT_S until it comes, and
        what it raises (a spent budget) stops the worker."""
        if self._proc.poll() is not None:
            raise ToolchainError(f"{self.name} stopped earlier: {_paragraph(_tail(self._log_path))}")
        try:
            self._proc.stdin.write(json.dumps({**request, "work": str(self.work)}) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:  # it ended between the poll and the write
            self._proc.wait()
            raise ToolchainError(f"{self.name} stopped earlier: {_paragraph(_tail(self._log_path))}") from None
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                self.close(kill=True)
                raise ToolchainError(f"{self.name} did not answer within {timeout / 60:.0f} minutes.")
            ready, _, _ = select.select([self._proc.stdout], [], [], min(HEARTBEAT_S, timeout - elapsed))
            if ready:
                break
            if waiting is not None:
                try:
                    waiting(time.monotonic() - started)
                except BaseException:
                    self.close(kill=True)  # mid-job: its state is no use to anyone
                    raise
        line = self._proc.stdout.readline()
        reply = json.loads(line) if line.strip() else None
        if reply is None:  # its stdout closed: it is ending; reap it so the next call knows
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if reply is None or reply.get("error"):
            said = reply["error"] if reply else _tail(self._log_path)
            raise ToolchainError(f"{self.name} failed: {_paragraph(said)[:600]}")
        return reply

    def close(self, kill: bool = False) -> None:
        if self._proc.poll() is None and kill:
            self._proc.kill()
            self._proc.wait()
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        self._work.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _env(python: Path) -> dict:
    """The worker's environment: nothing of the caller's Python, and the toolchain's own commands first on PATH
    (onnx2tf runs onnxsim as a command, and silently skips it when it finds none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = os.pathsep.join(filter(None, (str(python.parent), env.get("PATH"))))
    return env


def _paragraph(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
