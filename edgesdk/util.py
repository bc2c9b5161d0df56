"""Small helpers shared by the core: hashing, sizes, atomic writes, captured output."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


def cache_home() -> Path:
    """The SDK's cache dir ($EDGESDK_CACHE, else the user's cache dir): fixtures, device wheels, toolchains."""
    base = os.environ.get("EDGESDK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgesdk")
    return Path(base)


def printable(text: str) -> str:
    """Text from a device or a tool, safe to print on a terminal: escape sequences and other control
    characters removed (line breaks and tabs kept)."""
    import re
    osc, csi = r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?", r"\x1b\[[0-?]*[ -/]*[@-~]"  # titles, colours, cursor moves
    return re.sub(rf"{osc}|{csi}|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", str(text))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path) -> str:
    """Hash of a directory (SavedModel): relative paths and contents, in order."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def gzip_size(path) -> int:
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9, mtime=0))


def temp_path_in(directory, name: str) -> Path:
    """A fresh hidden temporary file beside its final name, so rename is atomic. Its name carries this process's
    id, so a later run can tell the leftovers of a killed one (remove_dead_temps).

    mkstemp creates it 0600; give it the permissions a plain open() would.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(tmp)


def temp_dir_in(directory, name: str) -> tempfile.TemporaryDirectory:
    """A hidden temporary directory in `directory` whose name carries this process's id (remove_dead_temps)."""
    return tempfile.TemporaryDirectory(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=directory)


def remove_dead_temps(directory: Path) -> list:
    """Remove what temp_path_in and temp_dir_in left in `directory` for processes that no longer run (a
    conversion killed by the OOM killer or Ctrl-C twice); returns their names."""
    import re
    import shutil
    removed = []
    for path in directory.glob(".*.tmp"):
        match = re.search(r"\.(\d+)\.[^.]+\.tmp$", path.name)
        if not match or _running(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def out_of_space(exc: BaseException, directory=None):
    """An OutputError that says which disk is full and how much room is left there, for an OSError that means a
    full disk or quota (any other error: None). directory: where the user asked the output to go."""
    import errno
    from .errors import OutputError
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    places = [Path(p) for p in (exc.filename, directory, tempfile.gettempdir()) if p]
    free = []
    for place in dict.fromkeys(p if p.is_dir() else p.parent for p in places):
        try:
            free.append(f"{shutil.disk_usage(place).free / 1e6:.1f} MB free under {place}")
        except OSError:
            continue
    return OutputError(f"No space left on the disk{f' writing {exc.filename}' if exc.filename else ''} "
                       f"({'; '.join(free) or 'free space unknown'}). Nothing was kept of what was being written: "
                       f"free some space, or choose another --output DIR (or TMPDIR for temporary files).")


def ensure_writable_dir(directory) -> Path:
    from .errors import OutputError
    d = Path(directory).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(d)
        probe = temp_path_in(d, "write-check")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"Cannot write to output directory '{directory}': {exc.strerror or exc}. "
                          f"Choose another with --output DIR, or fix its permissions.") from None
    return d


@contextlib.contextmanager
def captured_output():
    """Silence C++ and Python chatter (TFLite converter, TF logging) at the fd level.

    Yields a function returning what was captured, so errors can quote it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

        def read() -> str:
            sys.stdout.flush()
            sys.stderr.flush()
            log.seek(0)
            return log.read().decode("utf-8", "replace")
        try:
            yield read
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def first_line(exc) -> str:
    """The first non-empty line of an exception's message (libraries append pages of context), else its type."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def load_callable(spec: str, option: str, error):
    """`package.module:function` (an option's value) -> the callable, or `error` saying what is wrong."""
    import importlib
    if ":" not in spec:
        raise error(f"{option} '{spec}' must look like package.module:function.")
    mod_name, func_name = spec.split(":", 1)
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:
        first = first_line(exc)[:300]
        raise error(f"{option}: cannot import '{mod_name}' ({first}). Is it on PYTHONPATH (or installed)?") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise error(f"{option}: '{mod_name}' has no callable '{func_name}'.")
    return func


@contextlib.contextmanager
def working_directory(path):
    """Run a library that writes scratch files into the current directory inside a private one."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
