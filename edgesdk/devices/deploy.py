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
import secrets
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgesdk.artifacts.artifact import Artifact
from edgesdk.errors import BenchmarkError, DeployError, EdgeSDKError, OptionError, RuntimeMissing
from edgesdk.progress import Progress
from edgesdk.util import sha256_file
from .bench import input_shape_arg, parse_runner_output, pool_repeats, result_from_runner
from .ssh import ConnectionLost, Session, resolve

# Small programs run by the device's own Python; paths arrive as argv, never inside the code.
# Also sweeps partial uploads a dead link left behind (untouched for STALE_PART_S; a live upload keeps writing).
STALE_PART_S = 30
_PREPARE = ("import glob,os,sys,time\nd=os.path.expanduser(sys.argv[1])\n"
            "[os.makedirs(os.path.join(d,s),exist_ok=True) for s in ('runner','artifacts')]\n"
            "[os.unlink(p) for p in glob.glob(os.path.join(d,'*','*.part'))+glob.glob(os.path.join(d,'*','*','*.part'))"
            "+glob.glob(os.path.join(d,'runs','*.cancel'))"
            " if time.time()-os.path.getmtime(p)>float(sys.argv[2])]\nprint(d)\n"
            "v=os.path.join(d,'venv','bin','python')\nprint(v if os.path.exists(v) else '')")
_SHA = ("import hashlib,os,sys\np=sys.argv[1]\nh=hashlib.sha256()\n"
        "f=open(p,'rb') if os.path.isfile(p) else None\n"
        "[h.update(c) for c in iter(lambda:f.read(1<<20),b'')] if f else None\nprint(h.hexdigest() if f else '')")
_COMMIT = ("import hashlib,os,sys\ntmp,final,want=sys.argv[1:4]\nh=hashlib.sha256()\n"
           "f=open(tmp,'rb')\n[h.update(c) for c in iter(lambda:f.read(1<<20),b'')]\nf.close()\n"
           "ok=h.hexdigest()==want\nos.replace(tmp,final) if ok else os.unlink(tmp)\nprint('ok' if ok else 'mismatch')")
_REMOVE = "import os,sys\n[os.unlink(p) for p in sys.argv[1:] if os.path.exists(p)]"
_FREE = "import shutil,sys\nprint(shutil.disk_usage(sys.argv[1]).free)"
# Runs argv in its own process group and files that group's id, so a stop (Ctrl-C, a timeout) ends this run's
# processes and no one else's. A death by signal is said on stderr, with the cgroup's OOM-kill count, because
# sshd would report it as a closed channel with no status.
_SUPERVISE = r"""import json,os,signal,subprocess,sys
pidfile=sys.argv[1]
def ooms():
    try:
        cg=open('/proc/self/cgroup').read().strip().split('::')[-1]
        for l in open('/sys/fs/cgroup'+cg+'/memory.events'):
            if l.startswith('oom_kill '): return int(l.split()[1])
    except Exception: return None
before=ooms()
p=subprocess.Popen(sys.argv[2:],start_new_session=True)
d=os.path.dirname(pidfile);os.makedirs(d,exist_ok=True)
open(pidfile+'.tmp','w').write(str(p.pid));os.replace(pidfile+'.tmp',pidfile)
if os.path.exists(pidfile+'.cancel'): os.killpg(p.pid,signal.SIGTERM)
signal.signal(signal.SIGINT,signal.SIG_IGN)
[signal.signal(s,lambda *a:os.killpg(p.pid,signal.SIGTERM)) for s in (signal.SIGTERM,signal.SIGHUP)]
try: r=p.wait()
finally:
    for f in (pidfile,pidfile+'.cancel'):
        try: os.unlink(f)
        except OSError: pass
if r<0:
    after=ooms()
    kills=None if after is None or before is None else after-before
    sys.stderr.write('\nedgesdk-exit '+json.dumps({'signal':-r,'oom_kills':kills})+'\n')
    sys.exit(128-r)
sys.exit(r)"""
# A stop that comes before the run has filed its pid leaves a cancel mark the supervisor looks for.
_STOP = ("import os,signal,sys,time\nfor pidfile in sys.argv[1:]:\n"
         " read=lambda: int(open(pidfile).read()) if os.path.exists(pidfile) else None\n"
         " pid=read()\n if pid is None:\n  open(pidfile+'.cancel','w').close()\n  pid=read()\n"
         " if pid is None: continue\n"
         " for sig in (signal.SIGTERM,)*30+(signal.SIGKILL,):\n"
         "  try: os.killpg(pid,sig)\n  except ProcessLookupError: break\n  time.sleep(0.1)\n"
         " try: os.unlink(pidfile)\n except OSError: pass")


class Device:
    """One host's steps, sharing its session."""

    def __init__(self, session: Session, python: str, timeout: float, progress: Progress):
        self.s, self.python, self.timeout, self.progress = session, python, timeout, progress

    def py(self, code, *args, timeout=60, python=None):
        return self.s.run([python or self.python, "-c", code, *args], timeout=timeout)[1].strip()

    def prepare(self, workdir: str) -> tuple:
        """(the work dir, expanded; the python of the venv `device setup` made there, or '')."""
        if str(workdir).startswith("-"):  # a device command would take it for an option
            raise OptionError(f"--workdir '{workdir}' begins with '-': give it as ./{workdir} if that is the "
                              f"folder you mean.")
        try:
            root, venv = (self.py(_PREPARE, workdir, STALE_PART_S) + "\n").split("\n")[:2]
            return root, venv
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

    def run_supervised(self, rundir: str, argv: list, runs: RemoteRuns | None):
        """(status, stdout, stderr) of argv run under the supervisor; stops it on Ctrl-C or a timeout."""
        pidfile = f"{rundir}/{secrets.token_hex(8)}.pid"

        def stop():
            try:
                self.py(_STOP, pidfile, timeout=30)
            except EdgeSDKError:
                pass  # the link is gone; the run ends when its output pipe breaks
        if runs is not None:
            runs.add(pidfile, stop)
        try:
            status, out, err = self.s.run([self.python, "-c", _SUPERVISE, pidfile, self.python, *argv],
                                          timeout=self.timeout, check=False)
        except (KeyboardInterrupt, DeployError) as exc:
            if not isinstance(exc, ConnectionLost):
                stop()
            raise
        finally:
            if runs is not None:
                runs.remove(pidfile)
        death = _death(err)
        if death:
            what, tail = death
            raise BenchmarkError(f"The runner on {self.s.target.spec} {what}. Its last output:\n  " + "\n  ".join(tail))
        return status, out, err

    def cleanup(self, *paths):
        try:
            self.py(_REMOVE, *paths, timeout=20)
        except EdgeSDKError:
            pass  # the link is gone: nothing more can be done from here


class RemoteRuns:
    """The remote runs one deploy started, so that Ctrl-C can stop every one, on every host of a fleet."""

    def __init__(self):
        self.stops, self.cancelled, self._lock = {}, False, threading.Lock()

    def add(self, key, stop):
        with self._lock:
            if self.cancelled:
                raise DeployError("Interrupted before the run started.")
            self.stops[key] = stop

    def remove(self, key):
        with self._lock:
            self.stops.pop(key, None)

    def stop_all(self):
        with self._lock:
            self.cancelled = True
            stops = list(self.stops.values())
        for stop in stops:
            stop()


def _death(stderr: str):
    """(what happened, the stderr tail) when the supervisor says its process died by a signal, else None."""
    lines = (stderr or "").strip().splitlines()
    if not lines or not lines[-1].startswith("edgesdk-exit "):
        return None
    info = json.loads(lines[-1].split(" ", 1)[1])
    n = info["signal"]
    try:
        name = signal.Signals(n).name
    except ValueError:
        name = f"signal {n}"
    what = f"was killed by signal {n} ({name})"
    if n == signal.SIGKILL:
        what += (": the kernel's out-of-memory killer ended it (the model or runtime needs more memory than "
                 "the device has free)" if info.get("oom_kills") else
                 ": out of memory? That is what the kernel's OOM killer sends; check `dmesg` on the device")
    elif n == signal.SIGSEGV:
        what += ": the runtime crashed (a segmentation fault)"
    tail = [ln for ln in lines[:-1] if ln.strip()][-8:]
    return what, tail or ["(no output)"]


def _needs(fmt: str, probe: dict, python: str, spec: str, profile):
    setup = (f"Run `edgesdk device setup {spec} --profile {profile.name}`: it makes a venv in the device's work "
             f"dir with the runtime, from wheels this machine downloads (Raspberry Pi OS and Debian 12 refuse a "
             f"system-wide pip install), and deploy uses that venv from then on.")
    if not probe.get("runtimes", {}).get("numpy"):
        raise RuntimeMissing(f"numpy does not import in {python} (Python {probe.get('python')}) on {spec}. {setup}")
    from edgesdk.targets import get_family
    missing = get_family(profile.family).runtime_missing(fmt, probe)
    if missing:
        raise RuntimeMissing(f"{missing} in {python} on {spec}. {setup}", fmt=fmt)


def _threads(asked, profile, probe) -> tuple:
    """(threads, why): the profile's, never more than the cores the device reported, unless asked for."""
    cores = probe.get("cores") or profile.artifact.threads
    if asked is not None:
        why = "--threads" + (f" (more than the device's {cores} cores)" if asked > cores else "")
        return asked, why
    if profile.artifact.threads > cores:
        return cores, f"the device has {cores} cores; {profile.name} asks for {profile.artifact.threads}"
    return profile.artifact.threads, f"{profile.name}'s default"


def deploy_one(artifact, host: str, *, profile=None, runs=50, warmup=5, threads=None, duration=None,
               remote_python=None, workdir=None, timeout=600.0, accept_new_host_key=False, store=None,
               allow_cpu=False, dla_core=None, repeat=1, input_shape=None, progress: Progress | None = None,
               remote_runs=None, device_options=None):
    """remote_runs: the RemoteRuns a fleet shares, where each host files how to stop its remote run.
    device_options: options the profile's target family takes (its TargetFamily.device_options)."""
    from edgesdk.profiles import load_profile
    from edgesdk.targets import device_plan, get_family, runner_path
    progress = progress or Progress()
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    prof_name = profile or art.manifest.get("profile", {}).get("name")
    if prof_name is None and host != "local":
        raise OptionError(f"{art.path} has no manifest naming its profile; pass --profile.")
    prof = load_profile(prof_name or "local")
    tuned = art.manifest.get("tune") if prof.name == art.manifest.get("profile", {}).get("name") else None
    if tuned:  # `tune` measured how this artifact runs fastest: run it so unless told otherwise
        threads = tuned.get("threads") if threads is None else threads
        if not device_options and dla_core is None:
            device_options = tuned.get("device_options") or None
        progress.step(f"{host}: as tuned: {threads} thread(s)" + "".join(
            f", {k}={v}" for k, v in (device_options or {}).items()))
    if runs < 1 or warmup < 0 or repeat < 1 or (threads is not None and threads < 1):
        raise OptionError("--runs, --threads and --repeat must be at least 1 and --warmup at least 0.")
    # local runs use this very interpreter; a device, the venv `device setup` made, else its profile's python
    python = remote_python or (sys.executable if host == "local" else prof.connection.python or "python3")
    target = resolve(host, default_user=prof.connection.user or None)
    progress.step(f"{host}: connecting")
    with Session(target, accept_new_host_key=accept_new_host_key) as session:
        dev = Device(session, python, timeout, progress)
        root, venv_python = dev.prepare(workdir or prof.connection.workdir or "~/.cache/edgesdk")
        if venv_python and not remote_python and host != "local":
            python = dev.python = venv_python
        runner_local = Path(str(runner_path()))
        runner_sha = sha256_file(runner_local)
        runner_remote = f"{root}/runner/runner-{runner_sha[:16]}.py"
        runner_sent = dev.push(runner_local, runner_remote, runner_sha)
        looks = [f"--look={name}={','.join(paths)}" for name, paths in get_family(prof.family).probe_files.items()]
        probe = json.loads(session.run([python, runner_remote, "--probe", *looks],
                                       timeout=60)[1].strip().splitlines()[-1])
        fmt = art.path.suffix.lstrip(".")
        _needs(fmt, probe, python, host, prof)
        plan = device_plan(prof.family, art, probe, prof, dla_core, **(device_options or {}))
        if plan.problem and not allow_cpu:
            raise RuntimeMissing(f"{host} cannot run this artifact on {prof.name}'s accelerator: {plan.problem}. "
                                 f"Nothing was uploaded. Pass --allow-cpu to measure it on the device's CPU "
                                 f"instead (stored as such, not under {prof.name}).", fmt=fmt)
        threads, threads_why = _threads(threads, prof, probe)
        if threads_why.startswith("the device"):
            progress.warn(f"{host}: {threads} threads: {threads_why}")
        local = plan.path
        sha = sha256_file(local)
        session.run([python, "-c", "import os,sys;os.makedirs(sys.argv[1],exist_ok=True)", f"{root}/artifacts/{sha}"])
        remote = f"{root}/artifacts/{sha}/model.{fmt}"
        uploaded = dev.push(local, remote, sha) + runner_sent  # every byte this deploy sent
        progress.step(f"{host}: {'uploaded ' + format(uploaded, ',') + ' bytes' if uploaded else 'artifact already there'}"
                      f"; running {runs} runs" + (f", {repeat} times" if repeat > 1 else ""))
        argv = [runner_remote, remote, "--runs", runs, "--warmup", warmup, "--threads", threads, *plan.runner_args]
        if duration:
            argv += ["--duration", duration]
        if input_shape:
            argv += ["--input-shape", input_shape_arg(input_shape)]
        docs = []
        for _ in range(repeat):  # a fresh runner process each time: run-to-run noise is then measured
            status, out, err = dev.run_supervised(f"{root}/runs", argv, remote_runs)
            docs.append(parse_runner_output(out, err, status))
        doc = pool_repeats(docs)
    result = result_from_runner(doc, str(art.path), host)
    result.probe, result.uploaded_bytes = probe, uploaded
    result.raw["threads_reason"] = threads_why
    result.raw["accelerator"] = plan.accelerator
    stored_profile = prof.name if plan.problem is None else f"{prof.name} (cpu only)"
    if store is not None:
        result.run_id = store.add(result, probe=probe, manifest=art.manifest or None, profile=stored_profile,
                                  extra={"artifact_sha256": sha, "uploaded_bytes": uploaded, "python": python,
                                         "threads_reason": threads_why, "accelerator": plan.accelerator,
                                         "accelerator_problem": plan.problem, "repeats": doc.get("repeats")})
    return result


def deploy(artifact, host="local", *, parallel=4, store=None, progress=None, **kwargs):
    """One host -> BenchmarkResult; several -> a list of BenchmarkResult or {"host", "error"} per host.

    Ctrl-C stops the remote run on every host (each by the pid file its run wrote) before it is raised."""
    remote_runs = RemoteRuns()
    if isinstance(host, str):
        return deploy_one(artifact, host, store=store, progress=progress, remote_runs=remote_runs, **kwargs)
    hosts = list(host)
    if not hosts:
        raise OptionError("No hosts given.")

    def one(h):
        try:
            return deploy_one(artifact, h, store=store, progress=progress, remote_runs=remote_runs, **kwargs)
        except EdgeSDKError as exc:
            return {"host": h, "error": str(exc), "kind": type(exc).__name__, "exit_code": exc.exit_code}
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts))))
    try:
        futures = [pool.submit(one, h) for h in hosts]
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        remote_runs.stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_hosts_file(path) -> list:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise OptionError(f"Cannot read hosts file {path}: {exc.strerror or exc}.") from None
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
