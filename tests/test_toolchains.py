"""Private toolchain environments: made once under a lock, reused, never half-made; jobs through a subprocess."""

import threading

import pytest

from edgesdk import toolchains
from edgesdk.errors import ConversionError

pytestmark = pytest.mark.slow

# pip itself: installs from the new venv's own copy, so no package index is needed
PIP_ONLY = toolchains.Toolchain("probe", ("pip",), "tests")

ECHO = '''
import json, os, sys, time
request = json.loads(sys.stdin.read())
print("chatter on stdout", flush=True)
if request.get("pidfile"):
    open(request["pidfile"], "w").write(str(os.getpid()))
time.sleep(request.get("sleep", 0))
if request.get("fail"):
    raise SystemExit("worker gave up: " + request["fail"])
open(request["reply"], "w").write(json.dumps({"cwd": os.getcwd(), "got": request["value"],
                                              "path": sys.path[0], "env": os.environ.get("PYTHONPATH")}))
'''


def test_made_once_under_a_lock_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path / "cache"))
    steps = []
    # two callers at once: one builds, the other waits for it and reuses it
    threads = [threading.Thread(target=toolchains.ensure, args=(PIP_ONLY, steps.append)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(steps) == 1 and "creating the private probe environment for tests" in steps[0]
    assert PIP_ONLY.ready() and PIP_ONLY.home.parent == tmp_path / "cache" / "toolchains"
    made = (PIP_ONLY.home / "READY").stat().st_mtime_ns
    assert toolchains.ensure(PIP_ONLY, steps.append) == PIP_ONLY.python and len(steps) == 1
    assert (PIP_ONLY.home / "READY").stat().st_mtime_ns == made
    # keyed by what it contains: another requirement set is another environment
    other = toolchains.Toolchain("probe", ("pip", "setuptools"), "tests")
    assert other.home != PIP_ONLY.home


def test_a_half_made_environment_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path / "cache"))
    PIP_ONLY.home.mkdir(parents=True)
    (PIP_ONLY.home / "leftover").write_text("an install that was killed")
    assert not PIP_ONLY.ready()
    toolchains.ensure(PIP_ONLY)
    assert PIP_ONLY.ready() and not (PIP_ONLY.home / "leftover").exists()


def test_failed_install_leaves_nothing_and_says_what_pip_said(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path / "cache"))
    for k, v in {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
                 "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(k, v)
    missing = toolchains.Toolchain("absent", ("no-such-package-edgesdk==1.0",), "tests")
    with pytest.raises(toolchains.ToolchainError, match="(?s)Could not create the private absent environment.*"
                                                        "pip said:.*no-such-package-edgesdk") as e:
        toolchains.ensure(missing)
    assert isinstance(e.value, ConversionError) and e.value.exit_code == 6
    assert not missing.home.exists()
    assert [p for p in missing.home.parent.iterdir() if not p.name.startswith(".absent.lock")] == []


def test_jobs_run_isolated_in_their_own_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    worker = tmp_path / "echo.py"
    worker.write_text(ECHO)
    reply = toolchains.run(PIP_ONLY, worker, {"value": [1, 2]})
    assert reply["got"] == [1, 2] and reply["env"] is None  # nothing of the caller's PYTHONPATH
    assert reply["cwd"] != str(tmp_path) and "edgesdk-probe-" in reply["cwd"]
    with pytest.raises(toolchains.ToolchainError, match="(?s)probe failed: .*worker gave up: no"):
        toolchains.run(PIP_ONLY, worker, {"value": 0, "fail": "no"})


SERVER = '''
import json, os, sys, time
proto = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # chatter to the log, as the rknn worker does
total = 0
for line in sys.stdin:
    request = json.loads(line)
    print("chatter on stdout", flush=True)
    if request.get("die"):
        os._exit(3)
    time.sleep(request.get("sleep", 0))
    if request.get("fail"):
        reply = {"error": "cannot: " + request["fail"]}
    else:
        total += request["add"]
        reply = {"total": total, "work": request["work"]}
    proto.write(json.dumps(reply) + "\\n")
    proto.flush()
'''


def test_a_worker_keeps_its_state_between_requests_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path / "cache"))
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    with toolchains.Worker(PIP_ONLY, server) as worker:
        work = worker.work
        assert worker.call({"add": 2})["total"] == 2 and worker.call({"add": 3})["total"] == 5  # one process
        assert worker.call({"add": 0})["work"] == str(work)
        with pytest.raises(toolchains.ToolchainError, match="probe failed: cannot: no"):
            worker.call({"fail": "no"})
        assert worker.call({"add": 1})["total"] == 6  # an error reply leaves the worker serving
    assert not work.exists()
    worker = toolchains.Worker(PIP_ONLY, server)
    with pytest.raises(toolchains.ToolchainError, match="(?s)probe failed: .*chatter on stdout"):
        worker.call({"die": True})  # gone without a reply: its log's tail is the message
    with pytest.raises(toolchains.ToolchainError, match="probe stopped earlier"):
        worker.call({"add": 1})
    worker.close()
    assert not worker.work.exists()


def _gone(pid: int) -> bool:
    import os
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_long_job_says_it_is_still_working_and_a_spent_budget_stops_it(tmp_path, monkeypatch):
    """A job or a worker's request that takes a while calls waiting(seconds) every HEARTBEAT_S (what draws
    "still working" and checks the budget: rknn-toolkit2 was silent for minutes); what waiting raises stops
    it, and its process is gone."""
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(toolchains, "HEARTBEAT_S", 0.2)

    class Spent(Exception):
        pass

    def stop(seconds):
        if seconds > 0.5:
            raise Spent
    job = tmp_path / "echo.py"
    job.write_text(ECHO)
    said = []
    assert toolchains.run(PIP_ONLY, job, {"value": 1, "sleep": 1.2}, waiting=said.append)["got"] == 1
    assert len(said) >= 3 and said == sorted(said), said
    with pytest.raises(Spent):
        toolchains.run(PIP_ONLY, job, {"value": 1, "sleep": 60, "pidfile": str(tmp_path / "pid")}, waiting=stop)
    assert _gone(int((tmp_path / "pid").read_text()))
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    worker = toolchains.Worker(PIP_ONLY, server)
    said.clear()
    assert worker.call({"add": 2, "sleep": 1.2}, waiting=said.append)["total"] == 2 and len(said) >= 3
    pid = worker._proc.pid
    with pytest.raises(Spent):
        worker.call({"add": 1, "sleep": 60}, waiting=stop)
    assert _gone(pid) and not worker.work.exists()
