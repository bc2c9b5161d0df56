"""A target family from outside the package plugs in through the entry point alone.

tests/toy_family is written as a third party would write one (a TargetFamily,
its profiles beside it); a dist-info in a temporary folder registers it. No core
file names it, yet it is listed, its profiles validated with the keys it adds,
checked for, converted for (its compile step's files land beside the artifact),
and deployed with the options it takes.
"""

import hashlib
import json
import os

import pytest

import edgesdk
from edgesdk import ConvertOptions, QuantizeOptions
from edgesdk.errors import ConversionError, OptionError, ProfileError

from conftest import REPO, run_cli


@pytest.fixture
def toy_site(tmp_path, monkeypatch):
    """A folder holding the toy family's dist-info, on sys.path here and on PYTHONPATH for the CLI."""
    import edgesdk.targets as targets
    site = tmp_path / "site"
    info = site / "edgesdk_toy_family-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgesdk-toy-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgesdk.targets]\ntoy = toy_family:FAMILY\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(targets, "_FAMILIES", None)  # discovered afresh, as a new process would
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO / "tests")])}
    return site, env


def _profile(tmp_path, **changes):
    text = (REPO / "tests" / "toy_family" / "profiles" / "toy-board.toml").read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    path = tmp_path / "my-toy.toml"
    path.write_text(text.replace('name = "toy-board"', 'name = "my-toy"'))
    return path


def test_a_plugged_in_family_is_listed_and_its_profiles_validated(toy_site, tmp_path):
    site, env = toy_site
    r = run_cli("families", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = {row["family"]: row for row in json.loads(r.stdout)}
    assert list(rows)[:4] == ["arm-cpu", "edgetpu", "jetson", "rockchip"] and rows["arm-cpu"]["from"] == "built-in"
    assert rows["toy-npu"]["from"] == "edgesdk-toy-family 0.1" and rows["toy-npu"]["formats"] == "tflite"
    r = run_cli("profiles", "--json", env=env)
    toy = {row["name"]: row for row in json.loads(r.stdout)}["toy-board"]
    assert toy["family"] == "toy-npu" and toy["origin"].endswith("toy-board.toml")
    r = run_cli("profiles", "show", "toy-board", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["accelerator"]["sram_kb"] == 512
    # without the plug-in the profile is unknown, with a clear error and its exit code
    r = run_cli("profiles", "show", "toy-board")
    assert r.returncode == ProfileError.exit_code and "Unknown device profile 'toy-board'" in r.stderr
    # the keys the family adds are validated like the built-in ones; its own rules are asked
    p = edgesdk.load_profile(str(_profile(tmp_path, **{"sram_kb = 512": "sram_kb = 64"})))
    assert p.accelerator.sram_kb == 64 and p.to_dict()["accelerator"]["sram_kb"] == 64
    for change, needle in (({"sram_kb = 512": 'sram_kb = "big"'}, "key 'sram_kb' must be an integer"),
                           ({"sram_kb = 512": "sram_kb = 1\ndla_cores = 1"}, "unknown key 'dla_cores'"),
                           ({'kind = "npu"': 'kind = "gpu"'}, "key 'kind' is 'gpu'; expected one of ['none', 'npu']"),
                           ({'input_dtype = "int8"': 'input_dtype = "uint8"'}, "takes int8 inputs, not uint8"),
                           ({'quantization = "int8"': 'quantization = "fp16"'}, "must be int8 for family 'toy-npu'")):
        with pytest.raises(ProfileError, match="my-toy.toml") as e:
            edgesdk.load_profile(str(_profile(tmp_path, **change)))
        assert needle in str(e.value), str(e.value)
    # and a built-in family's key is not a plug-in's: dla_cores stays Jetson's
    with pytest.raises(ProfileError, match="unknown key 'sram_kb'"):
        edgesdk.load_profile(str(_profile(tmp_path, **{'family = "toy-npu"': 'family = "arm-cpu"',
                                                       'kind = "npu"': 'kind = "none"'})))


def test_a_broken_plug_in_leaves_the_built_in_families(tmp_path):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgesdk.targets]\nbroken = no_such_module:FAMILY\n")
    r = run_cli("families", env={"PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert "target family 'broken' (no_such_module:FAMILY) could not be loaded" in r.stderr
    assert "arm-cpu" in r.stdout and "jetson" in r.stdout


@pytest.mark.slow
def test_a_plugged_in_family_is_checked_converted_for_and_deployed(toy_site, keras3_mnist, mnist_files, tmp_path):
    site, env = toy_site
    # check: the representative of every family, the plug-in's included, with its own report
    fams = {t["family"]: t for t in edgesdk.check(str(keras3_mnist))["targets"]}
    assert set(fams) == {"arm-cpu", "edgetpu", "jetson", "rockchip", "toy-npu"}
    assert fams["toy-npu"]["status"] == "supported" and fams["toy-npu"]["sram"]["sram_kb"] == 512
    # convert, from a fresh process that finds the family by its entry point only
    out = tmp_path / "out"
    r = run_cli("convert", keras3_mnist, "-t", "toy-board", "-c", mnist_files["train"], "-o", out, "--json", env=env)
    assert r.returncode == 0, r.stderr
    art = edgesdk.Artifact.open(json.loads(r.stdout)["artifact"])
    m = art.manifest
    assert m["profile"]["family"] == "toy-npu" and m["recipe"]["input_dtype"] == "int8"
    assert m["compatibility"]["sram"]["parameters_kb"] < 512 and m["validation"]["passed"]
    # the compile step ran on the validated artifact and its files sit beside it
    stem = art.path.stem
    assert m["toy_compiler"]["input_sha256"] == hashlib.sha256(art.path.read_bytes()).hexdigest()
    assert (out / f"{stem}.toy.bin").read_bytes() == art.path.read_bytes()[::-1]
    assert sorted(p.name for p in out.iterdir()) == sorted([art.path.name, f"{art.path.name}.json",
                                                            f"{stem}.toy.bin", f"{stem}.toy.log"])
    # the family's rules hold at conversion: nothing float, and parameters that do not fit are refused
    options = ConvertOptions(quantize=QuantizeOptions(quantization="fp16"))
    with pytest.raises(OptionError, match="computes tflite only in int8"):
        edgesdk.convert(str(keras3_mnist), "toy-board", output_dir=tmp_path / "f", options=options)
    options = ConvertOptions(quantize=QuantizeOptions(allow_float_fallback=True))
    with pytest.raises(OptionError, match="does not apply"):
        edgesdk.convert(str(keras3_mnist), "toy-board", output_dir=tmp_path / "f", options=options)
    small = _profile(tmp_path, **{"sram_kb = 512": "sram_kb = 4"})
    with pytest.raises(ConversionError, match="do not fit the NPU's 4 KB SRAM"):
        edgesdk.convert(str(keras3_mnist), str(small), calibration=mnist_files["train"], output_dir=tmp_path / "s",
                        quiet=True)
    assert list((tmp_path / "s").iterdir()) == []
    # deploy: the family's plan and its own option; a Jetson option is refused naming whose it is
    res = edgesdk.deploy(art, "local", runs=3, warmup=1, device_options={"npu_core": 1})
    assert res.raw["accelerator"] == "toy-npu1" and res.p50 > 0
    with pytest.raises(OptionError, match="--dla-core is for Jetson modules with a DLA; toy-board is toy-npu"):
        edgesdk.deploy(art, "local", runs=3, dla_core=0)


def test_a_plugged_in_family_brings_its_own_artifact_format(toy_site, tmp_path):
    """The family declares its format (suffix, reader, where it runs); inspect reads it and bench says where to
    measure it, with no core module naming it (as Rockchip's .rknn, declared by the Rockchip family)."""
    from edgesdk import fixtures
    from edgesdk.errors import ModelLoadError
    site, env = toy_site
    plain = fixtures.fetch("blazeface")
    blob = tmp_path / "face.toyblob"
    blob.write_bytes(plain.read_bytes()[::-1])
    r = run_cli("inspect", blob, "--json", "--target", "rpi4", env=env)
    assert r.returncode == 0, r.stderr
    doc, ref = json.loads(r.stdout), json.loads(run_cli("inspect", plain, "--json", "--target", "rpi4").stdout)
    assert doc["format"] == "toyblob" and doc["inputs"] == ref["inputs"] and doc["outputs"] == ref["outputs"]
    r = run_cli("bench", blob, env=env)
    assert r.returncode == ModelLoadError.exit_code and "runs only on the toy NPU's board" in r.stderr, r.stderr
    # without the plug-in, the suffix is unknown, and the error lists what is read
    r = run_cli("inspect", blob)
    assert r.returncode == ModelLoadError.exit_code and ".tflite, .onnx or .rknn" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
