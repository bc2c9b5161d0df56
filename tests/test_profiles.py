"""Device profiles: built-ins true to the hardware, user profiles, and errors that name file and key."""

import json

import pytest

from edgesdk import ProfileError, available_profiles, load_profile
from edgesdk.profiles import parse_profile

from conftest import run_cli

REQUIRED = {"rpi4", "rpi5", "coral-usb", "coral-devboard", "jetson-nano", "jetson-orin-nano", "rock5b", "orangepi5",
            "rk3566", "local"}


def test_all_required_builtins_load_and_are_valid():
    names = set(available_profiles())
    assert REQUIRED <= names
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert p.family in ("arm-cpu", "edgetpu", "jetson", "rockchip")
        assert p.artifact.format in p.artifact.formats
        assert p.artifact.threads >= 1 and p.device.cores >= 1


@pytest.mark.parametrize("name, cpu, cores, family, fmt", [
    ("rpi4", "Cortex-A72", 4, "arm-cpu", "tflite"),
    ("rpi5", "Cortex-A76", 4, "arm-cpu", "tflite"),
    ("coral-devboard", "Cortex-A53", 4, "edgetpu", "tflite"),
    ("jetson-nano", "Cortex-A57", 4, "jetson", "onnx"),
    ("jetson-orin-nano", "Cortex-A78AE", 6, "jetson", "onnx"),
    ("rock5b", "Cortex-A76 + Cortex-A55", 8, "rockchip", "rknn"),
    ("rk3566", "Cortex-A55", 4, "rockchip", "rknn"),
])
def test_builtin_profiles_match_the_hardware(name, cpu, cores, family, fmt):
    p = load_profile(name)
    assert (p.device.cpu, p.device.cores, p.family, p.artifact.format) == (cpu, cores, family, fmt)
    if family != "edgetpu":
        assert p.device.arch == "aarch64"


def test_edgetpu_profiles_demand_int8_with_uint8_io_and_8mb_cache():
    for name in ("coral-usb", "coral-devboard"):
        p = load_profile(name)
        assert p.artifact.quantization == "int8"
        assert p.artifact.formats == ("tflite",)
        assert (p.artifact.input_dtype, p.artifact.output_dtype) == ("uint8", "uint8")
        assert p.accelerator.kind == "edgetpu" and p.accelerator.on_chip_memory_mb == 8.0


def test_jetson_profiles_carry_jetpack_and_tensorrt():
    nano, orin = load_profile("jetson-nano"), load_profile("jetson-orin-nano")
    assert nano.accelerator.tensorrt.startswith("8.2") and nano.artifact.quantization == "fp16"
    assert orin.accelerator.jetpack.startswith("6") and orin.accelerator.dla_cores == 0


def test_local_profile_describes_this_machine():
    import os
    import platform
    p = load_profile("local")
    assert p.device.arch == platform.machine()
    assert p.device.cores == os.cpu_count() == p.artifact.threads
    assert p.device.memory_mb > 256


def test_unknown_profile_suggests_close_names():
    with pytest.raises(ProfileError) as e:
        load_profile("rpi-4")
    assert "Did you mean 'rpi4'" in str(e.value)
    assert "edgesdk profiles" in str(e.value)


GOOD = """
name = "my-board"
description = "test board"
family = "arm-cpu"
[device]
arch = "aarch64"
cpu = "Cortex-A55"
cores = 4
memory_mb = 2048
[artifact]
format = "tflite"
quantization = "int8"
input_dtype = "int8"
output_dtype = "int8"
threads = 4
"""


def test_user_profile_by_path(tmp_path):
    f = tmp_path / "my-board.toml"
    f.write_text(GOOD)
    p = load_profile(str(f))
    assert p.name == "my-board" and p.device.cpu == "Cortex-A55" and p.artifact.formats == ("tflite",)


def test_user_profile_dir_adds_profiles(tmp_path, monkeypatch):
    d = tmp_path / "edgesdk" / "profiles"
    d.mkdir(parents=True)
    (d / "my-board.toml").write_text(GOOD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert available_profiles()["my-board"] == str(d / "my-board.toml")
    assert load_profile("my-board").device.memory_mb == 2048


@pytest.mark.parametrize("edit, needle", [
    (("threads = 4", 'threads = "four"'), "[artifact]: key 'threads' must be an integer, got 'four'"),
    (("threads = 4", "threads = 0"), "key 'threads' must be a positive integer"),
    (('family = "arm-cpu"', 'family = "gpu"'), "key 'family' is 'gpu'; expected one of"),
    (('cpu = "Cortex-A55"\n', ""), "[device]: missing required key 'cpu'"),
    (("cores = 4", "cores = 4\ncorez = 2"), "unknown key 'corez' (did you mean 'cores'?)"),
    (('format = "tflite"', 'format = "onnx"\nformats = ["tflite"]'), "format 'onnx' is not in formats"),
    (("[device]", "[device"), "not valid TOML"),
])
def test_malformed_profile_names_file_and_key(tmp_path, edit, needle):
    f = tmp_path / "bad.toml"
    f.write_text(GOOD.replace(*edit))
    with pytest.raises(ProfileError) as e:
        load_profile(str(f))
    assert str(f) in str(e.value)
    assert needle in str(e.value)


def test_missing_profile_file():
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("./nope.toml")


def test_parse_profile_rejects_unknown_table():
    with pytest.raises(ProfileError, match="unknown key or table 'devise'"):
        parse_profile(GOOD + "\n[devise]\nx = 1\n", "x.toml")


def test_cli_profiles_list_and_show():
    r = run_cli("profiles")
    assert r.returncode == 0, r.stderr
    for name in REQUIRED:
        assert name in r.stdout
    r = run_cli("profiles", "show", "rpi4")
    assert r.returncode == 0 and "Cortex-A72" in r.stdout and "arm-cpu" in r.stdout
    r = run_cli("profiles", "show", "rpi4", "--json")
    assert json.loads(r.stdout)["device"]["cores"] == 4


def test_cli_bad_profile_exits_with_profile_code_and_no_traceback(tmp_path):
    r = run_cli("profiles", "show", "jetson-orin")
    assert r.returncode == ProfileError.exit_code
    assert "Traceback" not in r.stderr and "jetson-orin-nano" in r.stderr
    f = tmp_path / "bad.toml"
    f.write_text(GOOD.replace("cores = 4", "cores = -1"))
    r = run_cli("profiles", "show", str(f))
    assert r.returncode == ProfileError.exit_code and "key 'cores'" in r.stderr
