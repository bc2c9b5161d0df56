"""The built wheel: one `edgesdk` namespace with converters, targets, the runner and the profiles inside."""

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

# the wheel is built once for the module: its tests stay on one test worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, text=True)
    (whl,) = out.glob("edgesdk-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for profile in ("rpi4", "rpi5", "coral-usb", "coral-devboard", "jetson-nano", "jetson-orin-nano", "local"):
        assert f"edgesdk/device_profiles/{profile}.toml" in names
    assert "edgesdk/targets/runner.py" in names
    assert "edgesdk/converters/keras_tflite.py" in names
    assert "edgesdk/judge/tasks/detect.py" in names  # the gate's tasks ship too
    top = {n.split("/")[0] for n in names}
    assert "converters" not in top and "targets" not in top and "device_profiles" not in top
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_installs_into_a_fresh_venv_and_lists_profiles(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-compile",
                    "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, text=True)
    r = subprocess.run([str(env_dir / "bin" / "edgesdk"), "profiles"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "jetson-orin-nano" in r.stdout and "coral-usb" in r.stdout
    r = subprocess.run([str(env_dir / "bin" / "edgesdk"), "profiles", "show", "rpi5"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert "Cortex-A76" in r.stdout
    # the runner ships as a plain file a device can be handed
    r = subprocess.run([str(py), "-c", "from edgesdk.targets import runner_path; print(runner_path())"],
                       capture_output=True, text=True, cwd=tmp_path, check=True)
    assert Path(r.stdout.strip()).is_file() and str(env_dir) in r.stdout


def _fresh_venv(wheel, extra, tmp_path) -> Path:
    """A new venv with the wheel and one extra, nothing else; its bin directory."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    # --no-compile: byte-compiling TensorFlow and torch at install costs minutes; imports compile what they use
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                    "--disable-pip-version-check", f"{wheel}[{extra}]"], check=True, capture_output=True, text=True)
    return env_dir / "bin"


def test_keras_extra_alone_converts_for_the_pi_and_names_the_extra_onnx_needs(wheel, keras3_mnist, mnist_files,
                                                                              tmp_path):
    """`pip install edgesdk[keras]`: Keras -> full-int8 TFLite works; Keras -> ONNX (Jetson) asks for the onnx
    extra in one line (exit 6)."""
    bin_dir = _fresh_venv(wheel, "keras", tmp_path)
    exe = str(bin_dir / "edgesdk")
    args = [str(keras3_mnist), "-c", str(mnist_files["test"]), "-q", "--max-accuracy-drop", "3"]  # 200 held out
    r = subprocess.run([exe, "convert", *args, "-t", "rpi4", "-o", str(tmp_path / "pi")], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "pi" / f"{keras3_mnist.stem}.rpi4.tflite").is_file()
    r = subprocess.run([exe, "convert", *args, "-t", "jetson-orin-nano", "-o", str(tmp_path / "jetson")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 6 and "pip install 'edgesdk[onnx]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "jetson").exists() or list((tmp_path / "jetson").iterdir()) == []


def test_torch_extra_alone_converts_for_the_pi_and_names_the_extra_onnx_needs(wheel, tmp_path):
    """`pip install edgesdk[torch]`: PyTorch -> full-int8 TFLite works (TensorFlow comes with the extra);
    PyTorch -> ONNX asks for the onnx extra in one line (exit 6)."""
    import numpy as np
    bin_dir = _fresh_venv(wheel, "torch", tmp_path)
    script = tmp_path / "make.py"
    script.write_text("import torch\n"
                      "m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),\n"
                      "                        torch.nn.Linear(8 * 14 * 14, 4), torch.nn.Softmax(dim=1)).eval()\n"
                      "torch.manual_seed(0)\n"
                      "torch.export.save(torch.export.export(m, (torch.zeros(1, 3, 16, 16),)), 'm.pt2')\n")
    subprocess.run([str(bin_dir / "python"), str(script)], check=True, cwd=tmp_path, capture_output=True)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((64, 3, 16, 16)).astype(np.float32))
    exe = str(bin_dir / "edgesdk")
    args = ["m.pt2", "-c", "x.npy", "-q", "--min-agreement", "0.8"]
    r = subprocess.run([exe, "convert", *args, "-t", "rpi4", "-o", "pi"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "pi" / "m.rpi4.tflite").is_file()
    r = subprocess.run([exe, "convert", *args, "-t", "jetson-orin-nano", "-o", "jetson"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 6 and "pip install 'edgesdk[onnx]'" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_onnx_extra_alone_converts_for_jetson_and_names_the_extra_tflite_needs(wheel, tmp_path):
    """`pip install edgesdk[onnx]` into a fresh venv: the ONNX route works; the Pi's TFLite from ONNX asks for
    the tflite extra in one line (exit 6), not with a traceback, before any private toolchain is made."""
    import numpy as np
    from edgesdk import fixtures
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-compile",
                    "--disable-pip-version-check", f"{wheel}[onnx]"],
                   check=True, capture_output=True, text=True)
    missing = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True, text=True)
    assert missing.returncode != 0  # the onnx extra does not drag TensorFlow in
    x, _ = fixtures.text_direction_crops()
    np.save(tmp_path / "x.npy", x[:64])
    model = fixtures.fetch("ppocr_cls")
    exe = env_dir / "bin" / "edgesdk"
    cache = {"EDGESDK_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([str(exe), "convert", str(model), "-t", "jetson-orin-nano", "--input-shape", "1,3,48,192",
                        "-c", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"), "--min-agreement", "0",
                        "--max-accuracy-drop", "100", "-q"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, **cache})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / f"{model.stem}.jetson-orin-nano.onnx").is_file()
    r = subprocess.run([str(exe), "convert", str(model), "-t", "rpi4", "--input-shape", "1,3,48,192",
                        "-c", str(tmp_path / "x.npy"), "-o", str(tmp_path / "pi"), "-q"], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, **cache})
    assert r.returncode == 6 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'edgesdk[tflite]'" in r.stderr
    assert not (tmp_path / "cache" / "toolchains").exists() and list((tmp_path / "pi").iterdir()) == []
