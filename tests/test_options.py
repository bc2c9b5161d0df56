"""ConvertOptions: one declaration for the Python API, the CLI's flags, --config files, manifests and the docs."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import edgesdk
from edgesdk import ConvertOptions, InputOptions, Preprocess, QuantizeOptions, Thresholds, TrainingOptions
from edgesdk.conversion.options import LEGACY, leaves, with_legacy
from edgesdk.conversion.recipe import make_recipe
from edgesdk.errors import OptionError
from edgesdk.profiles import load_profile

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _echo_command():
    """A command with the flags convert has, printing the options they make: the mechanism, without a model."""
    from edgesdk.cli import option_flags, options_from

    @click.command()
    @option_flags()
    @click.pass_context
    def echo(ctx, **flags):
        click.echo(json.dumps(options_from(ctx, flags).to_dict()))
    return echo


def test_every_field_is_a_flag_a_toml_key_and_a_manifest_key(tmp_path):
    """Adding an option is one field: its flag, its TOML key and its manifest key come from it."""
    echo = _echo_command()
    flags = {p.name: p for p in echo.params}
    settable = [(path, f) for path, f in leaves() if "help" in f.metadata]
    assert len(settable) >= 40
    for path, f in settable:
        assert "o__" + "__".join(path) in flags, path
    # a threshold of every task is there, with its default in the help
    help_text = CliRunner().invoke(echo, ["--help"], terminal_width=200).output
    for flag in ("--min-iou", "--max-cer", "--min-cosine", "--min-f1", "--score-threshold", "--no-recover",
                 "--mean", "--input-shape", "--activations"):
        assert flag in help_text, flag
    assert "[default: 0.02]" in help_text  # max_cer's, from Thresholds


def test_flags_override_the_config_file_and_unset_ones_stay_unset(tmp_path):
    config = tmp_path / "convert.toml"
    config.write_text('task = "sequence"\nrecover = false\n\n[quantize]\nactivations = "int16"\n'
                      'exclude_nodes = ["a", "b"]\n\n[gate]\nmax_cer = 0.01\nmin_iou = 0.7\n\n'
                      '[inputs]\ninput_shape = ["x:1,3,48,320"]\n\n[inputs.preprocess]\nmean = [0.5, 0.5, 0.5]\n')
    r = CliRunner().invoke(_echo_command(), ["--config", str(config), "--min-iou", "0.6", "--std", "0.25",
                                             "--exclude-op-types", "Softmax,Mul"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc == {"quantize": {"calibration_method": "auto", "weight_rounding": "auto", "activations": "int16",
                                "allow_float_fallback": False, "exclude_nodes": ["a", "b"],
                                "exclude_op_types": ["Softmax", "Mul"]},
                   "training": {"prune": 0.0, "epochs": 2, "distill": False, "qat": False, "batch_size": 32,
                                "learning_rate": 0.001},
                   "gate": {"min_iou": 0.6, "max_cer": 0.01},
                   "inputs": {"input_shape": ["x:1,3,48,320"],
                              "preprocess": {"offset": 0.0, "mean": [0.5, 0.5, 0.5], "std": [0.25],
                                             "channel_order": "rgb"}},
                   "task": "sequence", "recover": False, "keep_failed": False}
    # the same document builds the same options from Python, and round-trips
    options = ConvertOptions.from_dict(doc)
    assert options.to_dict() == doc and ConvertOptions.load(config).gate.max_cer == 0.01
    assert options == ConvertOptions(
        quantize=QuantizeOptions(activations="int16", exclude_nodes=("a", "b"), exclude_op_types=("Softmax", "Mul")),
        gate=Thresholds(min_iou=0.6, max_cer=0.01), task="sequence", recover=False,
        inputs=InputOptions(input_shape=("x:1,3,48,320",),
                            preprocess=Preprocess(mean=(0.5, 0.5, 0.5), std=0.25)))
    # --no-recover given on the command line is recover = false
    assert json.loads(CliRunner().invoke(_echo_command(), ["--no-recover"]).output)["recover"] is False


def test_a_bad_config_file_says_which_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\nmin_iuo = 0.7\n")
    with pytest.raises(OptionError, match=r"unknown option 'gate.min_iuo'.*min_iou"):
        ConvertOptions.load(bad)
    bad.write_text('[training]\nepochs = "2"\nqat = 1\n')
    with pytest.raises(OptionError, match="training.epochs takes a whole number"):
        ConvertOptions.load(bad)
    bad.write_text('[quantize]\nactivations = "int4"\n')
    with pytest.raises(OptionError, match="quantize.activations is one of int8, int16"):
        ConvertOptions.load(bad)
    bad.write_text("[gate\n")
    with pytest.raises(OptionError, match="not a valid TOML options file"):
        ConvertOptions.load(bad)
    r = run_cli("convert", "model.onnx", "--config", tmp_path / "missing.toml")
    assert r.returncode == OptionError.exit_code and "Cannot read the options file" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_options_built_in_python_are_checked_as_a_files_are():
    import numpy as np
    with pytest.raises(OptionError, match="TrainingOptions.epochs takes a whole number, got '2'"):
        TrainingOptions(epochs="2")
    with pytest.raises(OptionError, match="QuantizeOptions.activations is one of int8, int16"):
        QuantizeOptions(activations="int4")
    # a group given as a dict of its fields is that group, checked as a file's table is
    assert ConvertOptions(gate={"min_iou": 0.7}).gate == Thresholds(min_iou=0.7)
    with pytest.raises(OptionError, match=r"ConvertOptions.gate: unknown option in \['iou'\]; Thresholds takes"):
        ConvertOptions(gate={"iou": 0.7})
    with pytest.raises(OptionError, match="TrainingOptions.epochs takes a whole number"):
        ConvertOptions(training={"epochs": "2"})
    with pytest.raises(OptionError, match="ConvertOptions.gate takes a Thresholds .or a dict of its fields., got list"):
        ConvertOptions(gate=[0.7])
    with pytest.raises(OptionError, match="ConvertOptions.recover is a switch"):
        ConvertOptions(recover=1)
    assert TrainingOptions(prune=np.float32(0.5), epochs=np.int64(3)).epochs == 3  # numpy numbers are numbers


def test_thresholds_resolve_to_their_defaults_and_refuse_what_is_not_a_share():
    t = Thresholds(min_iou=0.7, blank="none").resolved()
    assert (t.min_iou, t.min_agreement, t.max_accuracy_drop, t.max_cer, t.decode_blank) == (0.7, 0.95, 1.0, 0.02,
                                                                                              None)
    assert Thresholds(blank="3").resolved().decode_blank == 3 and t.resolved() == t
    with pytest.raises(OptionError, match="--min-recall is a share in"):
        Thresholds(min_recall=90).resolved()
    with pytest.raises(OptionError, match="--blank"):
        Thresholds(blank=-1).resolved()
    recipe = make_recipe(load_profile("rpi4"), ConvertOptions(gate=Thresholds(max_cer=0.05), task="sequence"))
    assert recipe.thresholds().max_cer == 0.05 and recipe.thresholds().min_iou == 0.8 and recipe.task == "sequence"


def test_the_old_keywords_still_work_with_a_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = with_legacy(None, {"prune": 0.5, "max_accuracy_drop": 3, "format": "onnx", "epochs": 1,
                                 "preprocess": {"scale": 0.5, "mean": 0.1}, "recover": False}, "edgesdk.convert")
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "prune=" in str(caught[0].message) and "training.prune" in str(caught[0].message)
    assert old == ConvertOptions(quantize=QuantizeOptions(format="onnx"), training=TrainingOptions(prune=0.5, epochs=1),
                                 gate=Thresholds(max_accuracy_drop=3), recover=False,
                                 inputs=InputOptions(preprocess=Preprocess(scale=0.5, mean=(0.1,))))
    # every keyword convert took before keeps its place
    assert {"prune", "epochs", "distill", "batch_size", "learning_rate", "format", "quantization", "input_dtype",
            "output_dtype", "calibration_samples", "max_accuracy_drop", "min_sqnr_db", "class_output", "task",
            "min_agreement", "min_recall", "min_precision", "min_iou", "max_cer", "min_cosine", "min_f1",
            "threshold", "blank", "metric", "preprocess", "allow_float_fallback", "calibration_method",
            "weight_rounding", "qat", "activations", "exclude_nodes", "exclude_op_types", "input_shape",
            "input_values", "stateful", "keep_failed", "recover"} <= set(LEGACY)
    with pytest.raises(TypeError, match="unexpected keyword argument 'min_iuo'"):
        edgesdk.convert("m.onnx", "rpi4", min_iuo=0.5)


def test_the_generated_options_page_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    page = (ROOT / "docs" / "convert-options.md").read_text()
    for path, f in leaves():
        if "help" in f.metadata:
            assert f"`{'.'.join(path[1:]) if len(path) > 1 else path[0]}`" in page, path


@pytest.mark.slow
def test_a_manifest_records_its_options_and_replays_the_conversion(keras3_mnist, mnist_files, tmp_path):
    """A release pipeline keeps its recipe: the manifest's options, given back as --config, make the same
    artifact (the cache answers: same source, data and recipe)."""
    out = tmp_path / "out"
    r = run_cli("convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", out, "--json",
                "--calibration-samples", "200", "--min-agreement", "0.9", "--weight-rounding", "nearest")
    assert r.returncode == 0, r.stderr
    manifest = out / "mnist.rpi4.tflite.json"
    m = json.loads(manifest.read_text())
    assert m["options"]["quantize"]["calibration_samples"] == 200 and m["options"]["gate"] == {"min_agreement": 0.9}
    assert m["recipe"]["gate"]["min_agreement"] == 0.9 and m["recipe"]["calibration_samples"] == 200
    again = run_cli("convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", out,
                    "--config", manifest)
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr
    # the same conversion from Python, with the options typed
    art = edgesdk.convert(str(keras3_mnist), "rpi4", calibration=mnist_files["train"], output_dir=out, quiet=True,
                          options=ConvertOptions(quantize=QuantizeOptions(calibration_samples=200,
                                                                          weight_rounding="nearest"),
                                                 gate=Thresholds(min_agreement=0.9)))
    assert art.cached and art.manifest["cache_key"] == m["cache_key"]
