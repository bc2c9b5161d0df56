"""Deploy to an emulated Raspberry Pi: Debian bookworm arm64 under qemu-user, its own aarch64 sshd.

What a board runs is what runs here: aarch64 Python 3.11, numpy, ai-edge-litert (XNNPACK) and ONNX
Runtime from their published aarch64 wheels, installed by `edgesdk device setup`. Emulated timings mean nothing:
these tests assert success, figures' order and what is left on the device, never time.
"""

import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

import edgesdk
from edgesdk import ConvertOptions, QuantizeOptions, RuntimeMissing
from edgesdk.devices.deploy import deploy
from edgesdk.devices.results import ResultStore
from edgesdk.errors import BenchmarkError
from edgesdk.util import sha256_file

from conftest import interactive, pids_with, run_cli, wait_for

# one emulated Pi serves the module: its tests stay on one test worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("emulated-pi")]
ALIAS = "emupi"
WORKDIR = "root/.cache/edgesdk"  # the profile's ~/.cache/edgesdk, as seen from outside the device


@pytest.fixture(scope="module")
def emupi(tmp_path_factory):
    """One emulated Pi for the module: rootfs restored from the cache, sshd in its own namespaces."""
    import emulated_device
    import netns
    from sshd import keygen
    why = emulated_device.unavailable() or netns.available()
    if why:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"the emulated device is required in CI as root: {why}")
        pytest.skip(why)
    emulated_device.ensure_binfmt()
    base = tmp_path_factory.mktemp("emupi")
    root = emulated_device.restore(emulated_device.rootfs_tarball(), base / "root")
    key = keygen(base / "id_ed25519")
    dev = netns.NamespacedDevice(base / "ns", ALIAS, key, device=root)
    dev.root, dev.key = root, key
    yield dev
    dev.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pi(emupi, ssh_env):
    """The emulated Pi reachable as `emupi` from this test's ssh config; nothing of this test's left running."""
    with open(ssh_env["config"], "a") as f:
        f.write(emupi.ssh_config("root", emupi.key))
    yield emupi
    # a stop the SDK sent as its command ended may still be finishing: Python starts slowly under emulation
    # on a loaded machine (CI once saw the stop script itself at teardown); what outlives that is a stray
    _wait_for(lambda: _strays(emupi) == [], timeout=30)
    assert _strays(emupi) == [], "processes left running on the device"


@pytest.fixture
def ready_pi(pi):
    """The Pi after `device setup` (done once; the first test does it through the CLI and checks it)."""
    if not (pi.root / WORKDIR / "venv/bin/python").exists():
        from edgesdk.devices.device_setup import setup
        setup(ALIAS, profile="rpi4", accept_new_host_key=True)
    return pi


def _strays(dev):
    import emulated_device
    return [cmd for pid, cmd in emulated_device.processes(dev.root) if "sshd" not in cmd]


def _runners(dev):
    """The benchmark runners on the device (not a probe, not the supervisor that started them)."""
    import emulated_device
    return [pid for pid, cmd in emulated_device.processes(dev.root)
            if "runner-" in cmd and "--probe" not in cmd and "import " not in cmd]


def _descends(pid, ancestor) -> bool:
    """Whether process pid was started, directly or not, by ancestor."""
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


def _wait_for(cond, timeout=120.0):  # an emulated runtime takes its time to start
    return wait_for(cond, timeout, step=0.2)


@pytest.fixture(scope="module")
def tflite_artifact(keras3_mnist, mnist_files, tmp_path_factory):
    return edgesdk.convert(str(keras3_mnist), target="rpi4", calibration=mnist_files["train"],
                           output_dir=tmp_path_factory.mktemp("tfl"), quiet=True)


@pytest.fixture(scope="module")
def onnx_artifact(keras3_mnist, mnist_files, tmp_path_factory):
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx"))
    return edgesdk.convert(str(keras3_mnist), target="rpi4", calibration=mnist_files["train"],
                           output_dir=tmp_path_factory.mktemp("onnx"), quiet=True, options=options)


def _files(dev, sub):
    d = dev.root / WORKDIR / sub
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_fresh_pi_setup_then_tflite_and_onnx(pi, ssh_env, tflite_artifact, onnx_artifact):
    # a fresh Pi OS has python3 but no numpy and no runtime: refused before the artifact is sent, with the fix
    r = run_cli("deploy", tflite_artifact.path, "--host", ALIAS, "--accept-new-host-key")
    assert r.returncode == RuntimeMissing.exit_code, r.stderr
    assert f"edgesdk device setup {ALIAS} --profile rpi4" in r.stderr and "Traceback" not in r.stderr
    assert _files(pi, "artifacts") == []

    r = run_cli("device", "setup", ALIAS, "--profile", "rpi4", "--json")
    assert r.returncode == 0, r.stderr
    setup = json.loads(r.stdout)
    assert setup["python"] == "/root/.cache/edgesdk/venv/bin/python" and setup["python_version"] == "3.11"
    assert setup["platform"].startswith("aarch64 glibc 2.36")
    assert setup["packages"]["ai-edge-litert"].startswith("2.") and "onnxruntime" in setup["packages"]
    assert setup["uploaded_bytes"] > 30_000_000  # the wheels went over the link: the device needs no index
    assert any(n.startswith("ai_edge_litert-") and "aarch64" in n for n in _files(pi, "wheels"))

    store = ResultStore()
    tfl = deploy(str(tflite_artifact.path), ALIAS, runs=10, warmup=1, store=store)
    assert tfl.runtime == "ai_edge_litert" and tfl.runs == 10 and tfl.raw["machine"] == "aarch64"
    assert tfl.probe["machine"] == "aarch64" and tfl.probe["python"].startswith("3.11")
    assert tfl.probe["cpu_model"].startswith("Raspberry Pi 4")  # the device's ARM cpuinfo, not this machine's
    assert "Debian GNU/Linux 12" in tfl.probe["os"]
    # rpi4 asks for 4 threads; the device has fewer cores: it gets its cores, and says why
    cores = tfl.probe["cores"]
    assert cores < 4 and tfl.threads == cores and "has %d cores" % cores in tfl.raw["threads_reason"]
    lat = tfl.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]
    saved = store.get(tfl.run_id)
    assert saved["extra"]["python"] == setup["python"] and saved["profile"] == "rpi4"
    # results show prints what the device's probe measured, and nothing it did not
    r = run_cli("results", "show", tfl.run_id)
    assert r.returncode == 0 and "None" not in r.stdout, r.stdout
    assert "Raspberry Pi 4 Model B" in r.stdout and f"threads: the device has {cores} cores" in r.stdout

    onnx = deploy(str(onnx_artifact.path), ALIAS, runs=10, warmup=1, store=store)
    assert onnx.runtime == "onnxruntime" and onnx.raw["machine"] == "aarch64"
    # --repeat: fresh runner processes, each summarized, so compare can measure run-to-run noise
    again = [deploy(str(tflite_artifact.path), ALIAS, runs=10, warmup=1, repeat=3, store=store) for _ in range(2)]
    assert again[0].uploaded_bytes == 0 and again[0].runs == 30 and len(again[0].raw["repeats"]) == 3
    r = run_cli("results", "compare", again[0].run_id, again[1].run_id, "--json")
    c = json.loads(r.stdout)
    assert c["median_change"]["basis"].startswith("the medians of 3 and 3 fresh runner processes")
    r = run_cli("device", "setup", ALIAS, "--profile", "rpi4", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["uploaded_bytes"] == 0  # the wheels are already there
    # `~` in --remote-python is the device's home
    home = deploy(str(tflite_artifact.path), ALIAS, runs=3, warmup=0,
                  remote_python="~/.cache/edgesdk/venv/bin/python")
    assert home.runtime == "ai_edge_litert"
    assert sorted(_files(pi, "artifacts")) == sorted([sha256_file(tflite_artifact.path),
                                                      sha256_file(onnx_artifact.path)])
    assert _files(pi, "runs") == []  # no pid file outlives its run


@pytest.mark.parametrize("sig, said", [(signal.SIGKILL, "signal 9 (SIGKILL): out of memory?"),
                                       (signal.SIGSEGV, "segmentation fault")])
def test_runner_dying_on_the_device_is_reported_as_such(ready_pi, ssh_env, tflite_artifact, sig, said):
    deploy(str(tflite_artifact.path), ALIAS, runs=2, warmup=0, accept_new_host_key=True)
    outcome = {}

    def run():
        try:
            deploy(str(tflite_artifact.path), ALIAS, duration=120, store=ResultStore())
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            outcome["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    assert _wait_for(lambda: bool(_runners(ready_pi)))
    time.sleep(2)  # let it load and print
    for pid in _runners(ready_pi):
        os.kill(pid, sig)
    t.join(120)
    err = outcome.get("error")
    assert isinstance(err, BenchmarkError) and err.exit_code == 10, err  # not "connection lost" (13)
    assert f"The runner on {ALIAS} was killed by" in str(err) and said in str(err)
    db = sqlite3.connect(str(ssh_env["db"]))
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_coral_without_libedgetpu_is_refused_before_upload(ready_pi, ssh_env, tflite_artifact, tmp_path):
    # the compiler's output is a stand-in copy: edgetpu_compiler cannot exist here; the device's lack of
    # libedgetpu is real and is what is checked
    art = tmp_path / "model.tflite"
    shutil.copyfile(tflite_artifact.path, art)
    shutil.copyfile(tflite_artifact.manifest_path, str(art) + ".json")
    shutil.copyfile(tflite_artifact.path, tmp_path / "model_edgetpu.tflite")
    before = _files(ready_pi, "artifacts")
    r = run_cli("deploy", art, "--host", ALIAS, "--profile", "coral-usb", "--accept-new-host-key")
    assert r.returncode == RuntimeMissing.exit_code, r.stderr
    assert "no libedgetpu" in r.stderr and "--allow-cpu" in r.stderr and "Nothing was uploaded" in r.stderr
    assert _files(ready_pi, "artifacts") == before
    r = run_cli("deploy", art, "--host", ALIAS, "--profile", "coral-usb", "--allow-cpu", "--runs", "3", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    row = ResultStore().get(doc["run_id"])
    assert row["profile"] == "coral-usb (cpu only)" and row["extra"]["accelerator"] is None
    assert "libedgetpu" in row["extra"]["accelerator_problem"]


def test_rockchip_setup_installs_rknnlite_and_a_board_without_the_npu_is_refused(ready_pi, ssh_env, keras3_mnist,
                                                                                   mnist_files, tmp_path):
    # an arm64 Debian without Rockchip's kernel driver: the runtime installs from its aarch64 wheel and imports;
    # the NPU is missing, and that is said before anything is uploaded
    r = run_cli("device", "setup", ALIAS, "--profile", "rock5b", "--accept-new-host-key", "--json")
    assert r.returncode == 0, r.stderr
    setup = json.loads(r.stdout)
    assert setup["packages"]["rknn-toolkit-lite2"].startswith("2.") and "librknnrt.so" in setup["note"]
    art = edgesdk.convert(str(keras3_mnist), "rock5b", calibration=mnist_files["train"], output_dir=tmp_path,
                          quiet=True)
    before = _files(ready_pi, "artifacts")
    r = run_cli("deploy", art.path, "--host", ALIAS, "--json")
    assert r.returncode == RuntimeMissing.exit_code, r.stderr
    assert "no rknpu driver" in r.stderr and "Nothing was uploaded" in r.stderr and "Traceback" not in r.stderr
    assert _files(ready_pi, "artifacts") == before


def test_fleet_of_emulated_and_local_hosts_and_ctrl_c_stops_every_remote_run(ready_pi, ssh_env, tflite_artifact):
    import subprocess
    deploy(str(tflite_artifact.path), ALIAS, runs=2, warmup=0, accept_new_host_key=True)
    results = deploy(str(tflite_artifact.path), [ALIAS, "local"], runs=5, warmup=1)
    assert [r.host for r in results] == [ALIAS, "local"]
    assert results[0].raw["machine"] == "aarch64" and results[1].raw["machine"] == os.uname().machine

    exe = Path(sys.executable).with_name("edgesdk")
    proc = subprocess.Popen([str(exe), "deploy", str(tflite_artifact.path), "--host", ALIAS, "--host", "local",
                             "--duration", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interactive)
    local_runner = lambda: [p for p in pids_with("runner", "--duration") if _descends(p, proc.pid)]  # noqa: E731
    assert _wait_for(lambda: bool(_runners(ready_pi)) and bool(local_runner()))
    local = local_runner()  # other tests may run runners of their own at the same time: follow this one's
    alive = lambda: [p for p in local if os.path.exists(f"/proc/{p}")]  # noqa: E731
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode != 0
    assert _wait_for(lambda: not _runners(ready_pi), timeout=30), "the device's runner must stop with the command"
    assert _wait_for(lambda: not alive(), timeout=30), "the local runner must stop too"
    db = sqlite3.connect(str(ssh_env["db"]))
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_tune_measures_on_the_emulated_pi_and_deploy_runs_the_winner_as_tuned(ready_pi, ssh_env, keras3_mnist,
                                                                              mnist_files, tflite_artifact, tmp_path):
    """The search on an aarch64 userland: each candidate measured there, the winner deployed as it won."""
    deploy(str(tflite_artifact.path), ALIAS, runs=2, warmup=0, accept_new_host_key=True)  # first contact
    store = ResultStore()
    doc = edgesdk.tune(str(keras3_mnist), "rpi4", hosts=[ALIAS], calibration=str(mnist_files["train"]),
                       formats=["tflite"], quantizations=["int8"], runs=10, warmup=1, repeat=1,
                       output_dir=tmp_path / "out", store=store, quiet=True)
    rows = {r["candidate"]: r for r in doc["candidates"]}
    assert set(rows) == {"tflite int8", "tflite int8 no XNNPACK"} and doc["host_errors"] == {}
    assert all(r["status"] == "measured" and set(r["by_threads"]) == {1, 4} for r in rows.values()), rows
    for r in rows.values():
        for m in r["by_threads"].values():
            stored = store.get(m["run_id"])
            assert stored["host"] == ALIAS and stored["probe"]["machine"] == "aarch64", stored
    winner = rows[doc["winner"].rsplit(" x", 1)[0]]
    ran = deploy(doc["artifact"], ALIAS, runs=3, warmup=0, store=store)
    assert ran.raw["machine"] == "aarch64" and ran.delegate == ("none" if winner["variant"] else "xnnpack")
    assert ran.threads == min(winner["threads"], ran.probe["cores"])
