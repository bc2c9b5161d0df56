"""Shared fixtures: real data (MNIST digits, LFW faces) and real models trained or loaded from it.

Models are built once per session; every conversion writes into its own tmp dir.
"""

import getpass
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


def interactive():
    """preexec_fn for a command a test interrupts as a terminal's Ctrl-C would: SIGINT at its default, whatever
    this process inherited (a job started with `&` from a script runs with SIGINT ignored, and so would the
    command, Python installing its KeyboardInterrupt handler only over the default)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout=30.0, step=0.1) -> bool:
    """Poll until predicate() is true; False when timeout seconds pass first."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def pids_with(*words) -> list:
    """Processes on this machine whose command line holds every word."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(w in cmd for w in words):
            found.append(int(pid))
    return found


def run_cli(*args, cwd=None, env=None):
    """Run the real console script; returns CompletedProcess with text output."""
    exe = Path(sys.executable).with_name("edgesdk")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST digits: 4,000 for training/calibration, 1,000 held out."""
    from edgesdk import fixtures
    x, y = fixtures.mnist_5k()
    x = fixtures.mnist_inputs(x)
    return {"x_train": x[:4000], "y_train": y[:4000], "x_test": x[4000:], "y_test": y[4000:]}


@pytest.fixture(scope="session")
def mnist_files(mnist, tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist-data")
    np.savez(d / "train.npz", x=mnist["x_train"], y=mnist["y_train"])
    np.savez(d / "test.npz", x=mnist["x_test"], y=mnist["y_test"])
    np.save(d / "calib.npy", mnist["x_train"][:300])
    return {"train": d / "train.npz", "test": d / "test.npz", "calib_npy": d / "calib.npy"}


@pytest.fixture(scope="session")
def keras3_mnist(mnist, tmp_path_factory):
    """A Keras 3 CNN trained for a few seconds on real digits, saved as .keras."""
    from edgesdk import fixtures
    model = fixtures.mnist_cnn(mnist["x_train"], mnist["y_train"], epochs=3)
    path = tmp_path_factory.mktemp("keras3") / "mnist.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tfkeras_mnist(mnist, tmp_path_factory):
    """The same CNN built with tf-keras (the tfmot pruning route), saved as legacy .h5."""
    from edgesdk import fixtures
    model = fixtures.mnist_cnn(mnist["x_train"], mnist["y_train"], epochs=3, flavor="tf-keras")
    path = tmp_path_factory.mktemp("tfkeras") / "mnist_tk.h5"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def onet():
    """MTCNN's O-Net with its real pretrained weights (mtcnn 1.0.0), as a functional tf-keras model."""
    from edgesdk import fixtures
    return fixtures.mtcnn_onet()


@pytest.fixture(scope="session")
def lfw_onet_inputs():
    """scikit-image's 100 faces + 100 non-faces as O-Net inputs: 48x48 RGB, (x*255 - 127.5) / 128."""
    from edgesdk import fixtures
    return fixtures.onet_face_crops()


# --- real OpenSSH servers for deploy tests ------------------------------------------

@pytest.fixture
def ssh_env(tmp_path, monkeypatch):
    """A client key, an ssh config, an empty known_hosts and results db, all private to the test."""
    from sshd import keygen
    d = tmp_path / "client"
    d.mkdir()
    env = {"key": keygen(d / "id_ed25519"), "config": d / "ssh_config", "known_hosts": d / "known_hosts",
           "db": d / "results.db", "dir": d}
    env["config"].write_text("")
    monkeypatch.setenv("EDGESDK_SSH_CONFIG", str(env["config"]))
    monkeypatch.setenv("EDGESDK_KNOWN_HOSTS", str(env["known_hosts"]))
    monkeypatch.setenv("EDGESDK_RESULTS_DB", str(env["db"]))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return env


@pytest.fixture
def device(ssh_env, tmp_path):
    """A device called pi.local: a real sshd on loopback, reached through an ssh config alias."""
    from sshd import SSHServer
    servers = []

    def make(alias="pi.local", key=None, sshd_config=""):
        server = SSHServer(tmp_path / f"sshd-{alias}", alias, ssh_env["key"], extra_config=sshd_config).start()
        servers.append(server)
        with open(ssh_env["config"], "a") as f:
            f.write(f"Host {alias}\n  HostName 127.0.0.1\n  Port {server.port}\n  User {getpass.getuser()}\n"
                    f"  IdentityFile {key or ssh_env['key']}\n  HostKeyAlias {alias}\n\n")
        server.workdir = tmp_path / f"remote-{alias}"
        return server
    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def netns_device(ssh_env, tmp_path):
    """Devices in their own network namespaces (root only; CI runs as root and must not skip)."""
    import netns
    why = netns.available()
    if why:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"network namespaces are required in CI as root: {why}")
        pytest.skip(why)
    devices = []

    def make(alias):
        dev = netns.NamespacedDevice(tmp_path / f"ns-{alias}", alias, ssh_env["key"])
        devices.append(dev)
        with open(ssh_env["config"], "a") as f:
            f.write(dev.ssh_config(getpass.getuser(), ssh_env["key"]))
        dev.server.workdir = tmp_path / f"remote-{alias}"
        return dev
    yield make
    for d in devices:
        d.close()


@pytest.fixture(scope="session")
def ppocr(tmp_path_factory):
    """The PP-OCR text-direction classifier (rapidocr's ONNX) and real text-line crops: 132 to calibrate
    (unlabelled), 132 labelled to validate."""
    from edgesdk import fixtures
    x, y = fixtures.text_direction_crops()
    order = np.random.default_rng(0).permutation(len(y))
    d = tmp_path_factory.mktemp("ppocr")
    np.savez(d / "calib.npz", x=x[order[:132]])
    np.savez(d / "val.npz", x=x[order[132:]], y=y[order[132:]])
    return {"model": fixtures.fetch("ppocr_cls"), "calib": d / "calib.npz", "val": d / "val.npz"}


@pytest.fixture(scope="session")
def gained_onet(lfw_onet_inputs):
    """The pretrained O-Net (facenet-pytorch weights) behind a second input: a per-crop exposure gain."""
    import torch
    import torch_models
    from edgesdk import fixtures
    onet = torch_models.onet()
    onet.load_state_dict(torch.load(fixtures.fetch("facenet_onet"), weights_only=True))
    x, y = lfw_onet_inputs
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    gain = np.random.default_rng(0).uniform(0.7, 1.3, (len(x), 1)).astype(np.float32)
    return torch_models.GainedONet(onet), x, gain, y
