"""Deploy over real OpenSSH servers on loopback: host keys, content-addressed uploads, probes, faults, fleets."""

import json
import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

import edgesdk
from edgesdk import RuntimeMissing
from edgesdk.devices.deploy import deploy
from edgesdk.devices.results import ResultStore
from edgesdk.devices.ssh import ConnectionLost, DeployError, HostKeyError
from edgesdk.util import sha256_file

from conftest import interactive, pids_with, run_cli, wait_for

pytestmark = pytest.mark.slow
PY = sys.executable  # the "device" python with numpy and ai-edge-litert


@pytest.fixture(scope="module")
def artifact(keras3_mnist, mnist_files, tmp_path_factory):
    return edgesdk.convert(str(keras3_mnist), target="rpi4", calibration=mnist_files["train"],
                           output_dir=tmp_path_factory.mktemp("art"), quiet=True)


def remote_files(server) -> list:
    root = server.workdir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _deploy(server, art, **kw):
    return deploy(str(art.path), "pi.local" if server is None else server.name, remote_python=PY,
                  workdir=str(server.workdir), runs=20, warmup=2, **kw)


def test_deploy_checks_host_key_then_uploads_once(device, ssh_env, artifact):
    server = device()
    # unknown host: refused, with the key's fingerprint and the two ways forward
    with pytest.raises(HostKeyError) as e:
        _deploy(server, artifact)
    msg = str(e.value)
    assert server.fingerprint() in msg and "--accept-new-host-key" in msg and "`ssh pi.local`" in msg
    assert remote_files(server) == []  # nothing reached the device

    store = ResultStore()
    first = _deploy(server, artifact, accept_new_host_key=True, store=store)
    assert ssh_env["known_hosts"].read_text().strip() == server.public_host_key_line("pi.local")
    assert first.uploaded_bytes > artifact.path.stat().st_size  # the artifact and the runner
    assert first.runs == 20 and first.host == "pi.local" and first.runtime == "ai_edge_litert"
    lat = first.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert first.probe["runtimes"]["ai_edge_litert"] and first.probe["cores"] == os.cpu_count()
    # content-addressed: the second deploy sends nothing, and no temporary file is left
    second = _deploy(server, artifact, store=store)
    assert second.uploaded_bytes == 0
    files = remote_files(server)
    assert f"artifacts/{sha256_file(artifact.path)}/model.tflite" in files
    assert len(files) == 2 and not any(f.endswith(".part") for f in files)
    rows = store.list()
    assert [r["id"] for r in rows] == [second.run_id, first.run_id]
    saved = store.get(first.run_id)
    assert saved["latencies"] == first.latencies_ms and saved["probe"]["machine"] == first.probe["machine"]
    assert saved["manifest"]["profile"]["name"] == "rpi4"
    assert saved["extra"]["uploaded_bytes"] == first.uploaded_bytes


def test_changed_host_key_is_always_refused(device, ssh_env, artifact):
    server = device()
    from sshd import keygen
    other = keygen(ssh_env["dir"] / "other_host_key")
    kind, b64 = Path(str(other) + ".pub").read_text().split()[:2]
    # under the bare alias (as OpenSSH files it) and as [alias]:port (as earlier versions did)
    for name in ("pi.local", f"[pi.local]:{server.port}"):
        ssh_env["known_hosts"].write_text(f"{name} {kind} {b64}\n")
        with pytest.raises(HostKeyError, match="CHANGED") as e:
            _deploy(server, artifact, accept_new_host_key=True)
        assert server.fingerprint() in str(e.value) and "ssh-keygen -R" in str(e.value)
        assert remote_files(server) == []


def test_host_keys_that_openssh_wrote_are_trusted(device, ssh_env, artifact, tmp_path, monkeypatch):
    import subprocess
    server = device()
    kh = ssh_env["known_hosts"]
    # real ssh, through the alias: files the key under the bare HostKeyAlias
    r = subprocess.run(["ssh", "-F", str(ssh_env["config"]), "-o", f"UserKnownHostsFile={kh}", "-o",
                        "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "pi.local", "true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert kh.read_text().split()[0] == "pi.local"
    written = kh.read_text()
    assert _deploy(server, artifact).runs == 20  # no --accept-new-host-key needed
    assert kh.read_text() == written  # and nothing added
    # hashed entries from ssh-keyscan -H, for a host given as user@host:port, only in the system-wide file
    kh.write_text("")
    scan = subprocess.run(["ssh-keyscan", "-H", "-p", str(server.port), "127.0.0.1"], capture_output=True,
                          text=True, timeout=30)
    assert scan.stdout.startswith("|1|"), scan.stderr
    system = tmp_path / "ssh_known_hosts"
    system.write_text(scan.stdout)
    monkeypatch.setenv("EDGESDK_GLOBAL_KNOWN_HOSTS", str(system))
    import getpass
    with open(ssh_env["config"], "a") as f:  # the key, but no alias: the host key is looked up as [host]:port
        f.write(f"Host 127.0.0.1\n  IdentityFile {ssh_env['key']}\n")
    spec = f"{getpass.getuser()}@127.0.0.1:{server.port}"
    result = deploy(str(artifact.path), spec, remote_python=PY, workdir=str(server.workdir), runs=3,
                    profile="rpi4")
    assert result.runs == 3 and kh.read_text() == ""  # trusted from the system file, the user's untouched
    monkeypatch.delenv("EDGESDK_GLOBAL_KNOWN_HOSTS")
    monkeypatch.setenv("EDGESDK_GLOBAL_KNOWN_HOSTS", str(tmp_path / "none"))
    with pytest.raises(HostKeyError, match="not in"):
        deploy(str(artifact.path), spec, remote_python=PY, workdir=str(server.workdir), runs=3, profile="rpi4")


def test_wrong_key_and_refused_port(device, ssh_env, artifact):
    from sshd import keygen
    server = device("pi.local", key=keygen(ssh_env["dir"] / "not_authorized"))
    with pytest.raises(DeployError, match="Authentication .* failed"):
        _deploy(server, artifact, accept_new_host_key=True)
    with pytest.raises(DeployError, match="refused the connection"):
        deploy(str(artifact.path), "root@127.0.0.1:1", remote_python=PY)


def test_remote_python_without_runtime(device, ssh_env, artifact):
    server = device()
    r = run_cli("deploy", artifact.path, "--host", "pi.local", "--remote-python", "/usr/bin/python3",
                "--workdir", server.workdir, "--accept-new-host-key")
    assert r.returncode == RuntimeMissing.exit_code, r.stderr
    assert "numpy does not import in /usr/bin/python3" in r.stderr and "edgesdk device setup pi.local" in r.stderr
    assert not any(f.startswith("artifacts/") for f in remote_files(server))  # stopped before uploading it
    r = run_cli("deploy", artifact.path, "--host", "pi.local", "--remote-python", "/no/such/python",
                "--workdir", server.workdir)
    assert r.returncode == RuntimeMissing.exit_code and "install Python 3.8+" in r.stderr


def test_hostile_artifact_name_stays_data(device, ssh_env, artifact, tmp_path):
    server = device()
    name = "a b'c\"$(touch PWNED);x`touch PWNED`; touch PWNED.tflite"
    hostile = tmp_path / name
    shutil.copyfile(artifact.path, hostile)
    shutil.copyfile(artifact.manifest_path, Path(str(hostile) + ".json"))
    r = run_cli("deploy", hostile, "--host", "pi.local", "--remote-python", PY, "--workdir", server.workdir,
                "--accept-new-host-key", "--runs", "5", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifact"] == str(hostile)
    for place in (tmp_path, server.workdir, Path.home()):
        assert not list(place.rglob("PWNED*")), place


def test_disk_full_on_the_device(device, ssh_env, artifact, tmp_path):
    server = device()
    small = server.workdir
    small.mkdir()
    if os.system(f"mount -t tmpfs -o size=48k tmpfs '{small}' 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = run_cli("deploy", artifact.path, "--host", "pi.local", "--remote-python", PY, "--workdir", small,
                    "--accept-new-host-key")
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "No space left" in r.stderr or "Failure" in r.stderr or "space" in r.stderr.lower(), r.stderr
        assert not any(f.endswith(".part") for f in remote_files(server))
    finally:
        os.system(f"umount '{small}'")


def test_sshd_killed_mid_run(device, ssh_env, artifact):
    server = device()
    _deploy(server, artifact, accept_new_host_key=True)  # everything uploaded: the next call only runs
    store = ResultStore()
    errors = []

    def run():
        try:
            deploy(str(artifact.path), "pi.local", remote_python=PY, workdir=str(server.workdir), duration=8,
                   store=store)
        except DeployError as exc:
            errors.append(exc)
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any("runner" in _cmdline(p) and "--duration" in _cmdline(p)
                                                  for p in server.children()):
        time.sleep(0.1)
    server.stop()
    t.join(30)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], (ConnectionLost, DeployError))
    assert "lost" in str(errors[0]) or "failed" in str(errors[0])
    db = sqlite3.connect(str(ssh_env["db"]))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0  # no half result stored


def _cmdline(pid) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_fleet_runs_in_parallel_and_one_failure_does_not_stop_the_others(device, ssh_env, artifact, tmp_path):
    device("pi.local"), device("jetson.local")
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("pi.local\n# a comment\njetson.local\nroot@127.0.0.1:1\n")
    r = run_cli("deploy", artifact.path, "--hosts", hosts, "--remote-python", PY, "--workdir", tmp_path / "fleet",
                "--accept-new-host-key", "--runs", "10", "--json")
    assert r.returncode == 1
    docs = json.loads(r.stdout)
    assert [d["host"] for d in docs] == ["pi.local", "jetson.local", "root@127.0.0.1:1"]
    assert docs[0]["runs"] == docs[1]["runs"] == 10 and "refused" in docs[2]["error"]
    r = run_cli("results", "list", "--json")
    assert sorted(row["host"] for row in json.loads(r.stdout)) == ["jetson.local", "pi.local"]
    ids = [row["id"] for row in json.loads(r.stdout)]
    r = run_cli("results", "compare", str(ids[0]), str(ids[1]), "--json")
    c = json.loads(r.stdout)
    ci = c["median_change"]
    assert ci["low_pct"] <= ci["change_pct"] <= ci["high_pct"] and "one process per run" in ci["basis"]
    assert sorted(c["differences"]["host"]) == ["jetson.local", "pi.local"]


def test_local_host_uses_the_same_runner_path(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_RESULTS_DB", str(tmp_path / "r.db"))
    r = run_cli("deploy", artifact.path, "--host", "local", "--workdir", tmp_path / "w", "--runs", "10", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["host"] == "local" and doc["runs"] == 10 and doc["probe"]["python"]
    assert doc["energy"]["available"] is False and "INA3221" in doc["energy"]["reason"]  # never invented
    r = run_cli("results", "show", str(doc["run_id"]), "--json")
    assert json.loads(r.stdout)["host"] == "local"
    r = run_cli("results", "show", "999")
    assert r.returncode != 0 and "No run 999" in r.stderr
    # the ARM CPU family's device option: LiteRT's built-in kernels without XNNPACK
    r = run_cli("deploy", artifact.path, "--host", "local", "--workdir", tmp_path / "w", "--runs", "5", "--json",
                "--device-option", "delegate=none")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["delegate"] == "none" and doc["delegate"] == "xnnpack"
    r = run_cli("deploy", artifact.path, "--host", "local", "--workdir", tmp_path / "w", "--device-option",
                "delegate=gpu")
    assert r.returncode == 2 and "delegate=gpu is not one" in r.stderr and "xnnpack or none" in r.stderr


# --- named devices in network namespaces: real links to cut and throttle ----------

def test_link_cut_mid_upload_then_cleaned_on_next_contact(netns_device, ssh_env, artifact, tmp_path):
    dev = netns_device("pi.local")
    big = tmp_path / "big.tflite"
    big.write_bytes(os.urandom(3 * 2**20))  # only its bytes matter: the link dies while they travel
    shutil.copyfile(artifact.manifest_path, Path(str(big) + ".json"))
    dev.throttle("1mbit")
    errors, started = [], time.monotonic()

    def run():
        try:
            deploy(str(big), "pi.local", remote_python=PY, workdir=str(dev.server.workdir), accept_new_host_key=True)
        except DeployError as exc:
            errors.append(exc)
    t = threading.Thread(target=run)
    t.start()
    assert wait_for(lambda: any(f.endswith(".part") and "artifacts" in f for f in remote_files(dev.server)))
    dev.cut()
    t.join(60)
    assert not t.is_alive(), "a cut link must not hang the deploy"
    assert errors and ("lost" in str(errors[0]) or "failed" in str(errors[0])), errors
    assert time.monotonic() - started < 60
    # the dead link kept us from removing the partial file; the next contact sweeps it
    dev.restore()
    sh_tc = __import__("netns").sh
    sh_tc("tc", "qdisc", "del", "dev", dev.host_if, "root", check=False)
    for f in remote_files(dev.server):
        if f.endswith(".part"):
            p = dev.server.workdir / f
            os.utime(p, (time.time() - 120, time.time() - 120))
    result = deploy(str(artifact.path), "pi.local", remote_python=PY, workdir=str(dev.server.workdir), runs=5)
    assert result.runs == 5
    assert not any(f.endswith(".part") for f in remote_files(dev.server))


def test_fleet_of_namespaced_devices_with_a_link_cut_mid_run(netns_device, ssh_env, artifact):
    pi, jetson = netns_device("pi.local"), netns_device("jetson.local")
    for dev in (pi, jetson):  # first contact: keys recorded, everything uploaded
        deploy(str(artifact.path), dev.alias, remote_python=PY, workdir=str(dev.server.workdir), runs=5,
               accept_new_host_key=True)
    # both devices share this machine's filesystem, so each is deployed with its own work dir
    results = []

    def one(dev, duration):
        try:
            results.append(deploy(str(artifact.path), dev.alias, remote_python=PY, workdir=str(dev.server.workdir),
                                  duration=duration))
        except DeployError as exc:
            results.append({"host": dev.alias, "error": str(exc)})
    threads = [threading.Thread(target=one, args=(pi, 2)), threading.Thread(target=one, args=(jetson, 8))]
    for t in threads:
        t.start()
    assert wait_for(lambda: any("--duration" in _cmdline(p) for p in jetson.server.children()))
    jetson.cut()
    for t in threads:
        t.join(60)
    ok = [r for r in results if not isinstance(r, dict)]
    failed = [r for r in results if isinstance(r, dict)]
    assert [r.host for r in ok] == ["pi.local"] and ok[0].runs > 10
    assert [f["host"] for f in failed] == ["jetson.local"] and "lost" in failed[0]["error"]


def test_dns_failure_and_timeout(device, ssh_env, artifact):
    with pytest.raises(DeployError, match="Cannot resolve host name 'no-such-device.invalid'"):
        deploy(str(artifact.path), "no-such-device.invalid", remote_python=PY)
    server = device()
    _deploy(server, artifact, accept_new_host_key=True)
    with pytest.raises(DeployError, match="did not finish within 2 s"):
        deploy(str(artifact.path), "pi.local", remote_python=PY, workdir=str(server.workdir), duration=30,
               timeout=2)
    # the runner this run started is stopped on the device (by its pid file), not left timing for 30 s
    assert wait_for(lambda: not pids_with(str(server.workdir), "--duration"), timeout=10)
    assert not list((server.workdir / "runs").iterdir())


def test_ctrl_c_stops_the_remote_run(device, ssh_env, artifact):
    import signal
    import subprocess
    server = device()
    _deploy(server, artifact, accept_new_host_key=True)
    exe = Path(sys.executable).with_name("edgesdk")
    proc = subprocess.Popen([str(exe), "deploy", str(artifact.path), "--host", "pi.local", "--remote-python", PY,
                             "--workdir", str(server.workdir), "--duration", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interactive)
    running = lambda: [p for p in server.children() if "--duration" in _cmdline(p)]  # noqa: E731
    assert wait_for(lambda: bool(running()))
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert proc.returncode != 0
    assert wait_for(lambda: not running(), timeout=10), "the remote runner must stop with the local command"
    db = sqlite3.connect(str(ssh_env["db"]))
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0  # an interrupted run stores nothing
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_proxy_jump_through_a_first_device(device, ssh_env, artifact):
    gateway, inner = device("gateway.local"), device("inner.local")
    config = ssh_env["config"].read_text().replace("Host inner.local\n", "Host inner.local\n  ProxyJump gateway.local\n")
    ssh_env["config"].write_text(config)
    deploy(str(artifact.path), "gateway.local", remote_python=PY, workdir=str(gateway.workdir), runs=3,
           accept_new_host_key=True)  # records the gateway's key
    result = deploy(str(artifact.path), "inner.local", remote_python=PY, workdir=str(inner.workdir), runs=5,
                    accept_new_host_key=True)
    assert result.runs == 5 and result.host == "inner.local"
    log = inner.log.read_text()
    assert "Accepted publickey" in log


def test_results_store_survives_concurrent_writer_processes(tmp_path):
    import subprocess
    db = tmp_path / "shared.db"
    code = (
        "import sys\nfrom edgesdk.devices.results import ResultStore\n"
        "from edgesdk.devices.bench import BenchmarkResult\n"
        "s = ResultStore(sys.argv[1])\n"
        "for i in range(25):\n"
        "    r = BenchmarkResult('a.tflite', 'h' + sys.argv[2], 'rt', '1', 'x', 1, 0, 3, 1.0, 1.0,\n"
        "        {'min': 1, 'mean': 1, 'p50': 1, 'p90': 1, 'p95': 1, 'p99': 1, 'max': 1, 'std': 0}, [1.0, 1.0, 1.0], None)\n"
        "    s.add(r)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), str(k)]) for k in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*), count(DISTINCT host) FROM runs").fetchone() == (100, 4)


def test_a_stop_before_the_run_has_filed_its_pid_still_stops_it(tmp_path):
    import subprocess
    from edgesdk.devices.deploy import _STOP, _SUPERVISE, _death
    pidfile = tmp_path / "runs" / "abc.pid"
    pidfile.parent.mkdir()
    # Ctrl-C lands first: nothing to kill yet, so the stop leaves its mark
    subprocess.run([PY, "-c", _STOP, str(pidfile)], check=True, timeout=30)
    assert (tmp_path / "runs" / "abc.pid.cancel").exists()
    t0 = time.monotonic()
    p = subprocess.run([PY, "-c", _SUPERVISE, str(pidfile), PY, "-c", "import time; time.sleep(60)"],
                       capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30 and p.returncode == 128 + 15
    what, _ = _death(p.stderr)
    assert what == "was killed by signal 15 (SIGTERM)"
    assert list(pidfile.parent.iterdir()) == []  # neither the pid file nor the mark outlives the run
