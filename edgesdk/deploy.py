"""deploy: push an artifact and the standalone runner to a device over SSH, probe it, time it there.

    session (ssh | local) -> probe -> push runner + artifact (skipped when the
    device has that sha256; temp name, verified, renamed) -> run -> JSON ->
    BenchmarkResult -> results store

Remote commands are argv lists, each word quoted; user-supplied names never
reach a shell unquoted, and the artifact is stored on the device under its
sha256, not its file name.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .artifact import Artifact
from .bench import parse_runner_output, result_from_runner
from .errors import EdgeSDKError, OptionError, RuntimeMissing
from .progress import Progress
from .errors import DeployError
from .ssh import Session, resolve
from .util import sha256_file

# Small programs run by the device's own Python; paths arrive as argv, never inside the code.
# Also sweeps partial uploads a dead link left behind (untouched for STALE_PART_S; a live upload keeps writing).
STALE_PART_S = 30
_PREPARE = ("import glob,os,sys,time\nd=os.path.expanduser(sys.argv[1])\n"
            "[os.makedirs(os.path.join(d,s),exist_ok=True) for s in ('runner','artifacts')]\n"
            "[os.unlink(p) for p in glob.glob(os.path.join(d,'*','*.part'))+glob.glob(os.path.join(d,'*','*','*.part'))"
            " if time.time()-os.path.getmtime(p)>float(sys.argv[2])]\nprint(d)")
_SHA = ("import hashlib,os,sys\np=sys.argv[1]\nh=hashlib.sha256()\n"
        "f=open(p,'rb') if os.path.isfile(p) else None\n"
        "[h.update(c) for c in iter(lambda:f.read(1<<20),b'')] if f else None\nprint(h.hexdigest() if f else '')")
_COMMIT = ("import hashlib,os,sys\ntmp,final,want=sys.argv[1:4]\nh=hashlib.sha256()\n"
           "f=open(tmp,'rb')\n[h.update(c) for c in iter(lambda:f.read(1<<20),b'')]\nf.close()\n"
           "ok=h.hexdigest()==want\nos.replace(tmp,final) if ok else os.unlink(tmp)\nprint('ok' if ok else 'mismatch')")
_REMOVE = "import os,sys\n[os.unlink(p) for p in sys.argv[1:] if os.path.exists(p)]"
_FREE = "import shutil,sys\nprint(shutil.disk_usage(sys.argv[1]).free)"


class _Device:
    """One host's steps, sharing its session."""

    def __init__(self, session: Session, python: str, timeout: float, progress: Progress):
        self.s, self.python, self.timeout, self.progress = session, python, timeout, progress

    def py(self, code, *args, timeout=60):
        return self.s.run([self.python, "-c", code, *args], timeout=timeout)[1].strip()

    def prepare(self, workdir: str) -> str:
        try:
            return self.py(_PREPARE, workdir, STALE_PART_S)
        except DeployError as exc:
            if "not found" in str(exc) or "No such file" in str(exc) or "exit 127" in str(exc):
                raise RuntimeMissing(f"{self.python} is not on {self.s.target.spec}: install Python 3.8+ there "
                                     f"(e.g. `sudo apt install python3`) or pass --remote-python PATH.") from None
            raise

    def push(self, local: Path, remote: str, sha: str) -> int:
        """Upload unless the device already has these bytes; returns bytes sent."""
        if self.py(_SHA, remote) == sha:
            return 0
        tmp = f"{remote}.{secrets.token_hex(6)}.part"
        label = f"uploading {local.name} to {self.s.target.spec}"
        bar = self.progress.bar(label)
        size = local.stat().st_size
        try:
            try:
                sent = self.s.put(local, tmp, progress=lambda done, total: bar(done, total or size))
            except DeployError:
                self._explain_space(remote, size)
                raise
            if self.py(_COMMIT, tmp, remote, sha) != "ok":
                raise DeployError(f"The copy of {local.name} on {self.s.target.spec} does not match its sha256; "
                                  f"the upload was corrupted. Try again.")
        except BaseException:
            self.cleanup(tmp)
            raise
        return sent

    def _explain_space(self, remote: str, size: int):
        """A failed upload on a full disk looks like a short write; say what it really is."""
        try:
            free = int(self.py(_FREE, remote.rsplit("/", 1)[0], timeout=20))
        except (EdgeSDKError, ValueError):
            return
        if free < size:
            raise DeployError(f"No space left on {self.s.target.spec}: {free:,} bytes free in "
                              f"{remote.rsplit('/', 1)[0]}, {remote.rsplit('/', 1)[1]} needs {size:,}. Free some "
                              f"space or pass --workdir on a larger disk.") from None

    def cleanup(self, *paths):
        try:
            self.py(_REMOVE, *paths, timeout=20)
        except EdgeSDKError:
            pass  # the link is gone: nothing more can be done from here


def _needs(fmt: str, probe: dict, python: str, spec: str):
    rt = probe.get("runtimes", {})
    if not rt.get("numpy"):
        raise RuntimeMissing(f"numpy does not import in {python} (Python {probe.get('python')}) on {spec}. Install "
                             f"it on the device: `{python} -m pip install numpy`.")
    if fmt == "tflite" and not (rt.get("ai_edge_litert") or rt.get("tflite_runtime") or rt.get("tensorflow")):
        raise RuntimeMissing(f"No TFLite runtime in {python} on {spec}. Install one on the device: "
                             f"`{python} -m pip install ai-edge-litert` (or tflite-runtime on Python < 3.9).")
    if fmt == "onnx" and not (rt.get("onnxruntime") or rt.get("trtexec")):
        raise RuntimeMissing(f"Neither onnxruntime nor TensorRT's trtexec is on {spec}. Install "
                             f"onnxruntime (`{python} -m pip install onnxruntime`) or JetPack's TensorRT.")


def deploy_one(artifact, host: str, *, profile=None, runs=50, warmup=5, threads=None, duration=None,
               remote_python=None, workdir=None, timeout=600.0, accept_new_host_key=False, store=None,
               progress: Progress | None = None):
    from .profiles import load_profile
    from edgesdk.targets import runner_path
    progress = progress or Progress()
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    prof_name = profile or art.manifest.get("profile", {}).get("name")
    if prof_name is None and host != "local":
        raise OptionError(f"{art.path} has no manifest naming its profile; pass --profile.")
    prof = load_profile(prof_name or "local")
    # local runs use this very interpreter; a device, its profile's python
    python = remote_python or (sys.executable if host == "local" else prof.connection.python or "python3")
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise OptionError("--runs and --threads must be at least 1 and --warmup at least 0.")
    threads = threads or (min(prof.artifact.threads, os.cpu_count() or 1) if host == "local" else prof.artifact.threads)
    target = resolve(host, default_user=prof.connection.user or None)
    progress.step(f"{host}: connecting")
    with Session(target, accept_new_host_key=accept_new_host_key) as session:
        dev = _Device(session, python, timeout, progress)
        root = dev.prepare(workdir or prof.connection.workdir or "~/.cache/edgesdk")
        runner_local = Path(str(runner_path()))
        runner_sha = sha256_file(runner_local)
        runner_remote = f"{root}/runner/runner-{runner_sha[:16]}.py"
        runner_sent = dev.push(runner_local, runner_remote, runner_sha)
        probe = json.loads(session.run([python, runner_remote, "--probe"], timeout=60)[1].strip().splitlines()[-1])
        fmt = art.path.suffix.lstrip(".")
        _needs(fmt, probe, python, host)
        local = art.path
        if prof.family == "edgetpu":  # run the compiled model on the Edge TPU when there is one
            compiled = art.path.with_name(art.path.stem + "_edgetpu.tflite")
            local = compiled if compiled.is_file() else art.path
            if not compiled.is_file():
                progress.warn(f"{host}: no {compiled.name} beside the artifact (edgetpu_compiler was not "
                              f"available); running the int8 model on the device's CPU")
        sha = sha256_file(local)
        session.run([python, "-c", "import os,sys;os.makedirs(sys.argv[1],exist_ok=True)", f"{root}/artifacts/{sha}"])
        remote = f"{root}/artifacts/{sha}/model.{fmt}"
        uploaded = dev.push(local, remote, sha) + runner_sent  # every byte this deploy sent
        progress.step(f"{host}: {'uploaded ' + format(uploaded, ',') + ' bytes' if uploaded else 'artifact already there'}"
                      f"; running {runs} runs")
        argv = [python, runner_remote, remote, "--runs", runs, "--warmup", warmup, "--threads", threads]
        if duration:
            argv += ["--duration", duration]
        if local.name.endswith("_edgetpu.tflite"):
            argv += ["--delegate", "edgetpu"]
        if fmt == "onnx" and prof.family == "jetson":
            argv += ["--precision", {"int8": "int8", "fp16": "fp16"}.get(
                art.manifest.get("recipe", {}).get("quantization", ""), "fp32")]
        try:
            status, out, err = session.run(argv, timeout=timeout, check=False)
        except KeyboardInterrupt:
            session.run(["pkill", "-f", runner_remote], check=False, timeout=10)
            raise
        doc = parse_runner_output(out, err, status)
    result = result_from_runner(doc, str(art.path), host)
    result.probe, result.uploaded_bytes = probe, uploaded
    if store is not None:
        result.run_id = store.add(result, probe=probe, manifest=art.manifest or None, profile=prof.name,
                                  extra={"artifact_sha256": sha, "uploaded_bytes": uploaded, "python": python})
    return result


def deploy(artifact, host="local", *, parallel=4, store=None, progress=None, **kwargs):
    """One host -> BenchmarkResult; several -> a list of BenchmarkResult or {"host", "error"} per host."""
    if isinstance(host, str):
        return deploy_one(artifact, host, store=store, progress=progress, **kwargs)
    hosts = list(host)
    if not hosts:
        raise OptionError("No hosts given.")

    def one(h):
        try:
            return deploy_one(artifact, h, store=store, progress=progress, **kwargs)
        except EdgeSDKError as exc:
            return {"host": h, "error": str(exc), "kind": type(exc).__name__, "exit_code": exc.exit_code}
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        return list(pool.map(one, hosts))


def read_hosts_file(path) -> list:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise OptionError(f"Cannot read hosts file {path}: {exc.strerror or exc}.") from None
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
