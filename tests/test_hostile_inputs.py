"""Bad and hostile inputs other than model code: each a clean, documented exit, never a traceback or a hang."""

import os
import random

import numpy as np
import pytest

from conftest import run_cli
from edgesdk import ConvertOptions, QuantizeOptions, Thresholds
from edgesdk.errors import DataError, ModelLoadError, ResultsError


def _clean_exit(r, code):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr


def test_npz_holding_an_object_array(keras3_mnist, tmp_path):
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object))
    r = run_cli("convert", keras3_mnist, "-c", tmp_path / "objects.npz", "-o", tmp_path / "o")
    _clean_exit(r, DataError.exit_code)
    assert "does not unpickle" in r.stderr


def test_fifo_in_an_image_folder_is_not_read(tmp_path):
    from PIL import Image
    from edgesdk.sources.data import load_data
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(folder / f"{k}.png")
    os.mkfifo(folder / "f.png")  # opening it would block until a writer comes: it never does
    ds = load_data(str(folder), input_shape=(None, 8, 8, 3))
    assert len(ds) == 3


def test_results_db_whose_folder_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_cli("results", "list", "--db", tmp_path / "afile" / "results.db")
    _clean_exit(r, ResultsError.exit_code)
    assert "cannot be made there" in r.stderr


def test_inspect_of_empty_and_damaged_files(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    r = run_cli("inspect", tmp_path / "empty.onnx")
    _clean_exit(r, ModelLoadError.exit_code)
    assert "holds no graph" in r.stderr
    # an ONNX that declares a 2 GB tensor and holds no data for it
    import onnx
    from onnx import TensorProto, helper
    big = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 29])  # no data at all
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 29])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 29])], [big])
    onnx.save(helper.make_model(graph), str(tmp_path / "hollow.onnx"))
    r = run_cli("inspect", tmp_path / "hollow.onnx")
    _clean_exit(r, ModelLoadError.exit_code)
    assert "declares 536,870,912 values" in r.stderr


def test_inspect_and_bench_fuzz_never_end_in_a_traceback(keras3_mnist, tmp_path):
    """Mutated artifacts (bytes flipped, cut short): inspect and bench exit cleanly, within their time, every time
    (a runtime that crashes on a damaged file crashes the runner's process, not the command)."""
    import edgesdk
    from edgesdk.errors import BenchmarkError
    made = []
    for fmt in ("onnx", "tflite"):
        options = ConvertOptions(quantize=QuantizeOptions(format=fmt, quantization="float"),
                                 gate=Thresholds(max_accuracy_drop=100))
        made.append(edgesdk.convert(str(keras3_mnist), target="rpi4", options=options, output_dir=tmp_path / "o",
                                    calibration=np.random.default_rng(0).random((8, 28, 28, 1), np.float32),
                                    quiet=True).path)
    rng = random.Random(0)
    for source in made:
        data = source.read_bytes()
        for k in range(6):
            mutated = bytearray(data)
            if k % 3 == 0:
                mutated = mutated[:rng.randrange(16, len(mutated))]
            else:
                for _ in range(20):
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            path = tmp_path / f"m{k}{source.suffix}"
            path.write_bytes(bytes(mutated))
            r = run_cli("inspect", path)
            assert r.returncode in (0, ModelLoadError.exit_code), (path, r.returncode, r.stderr)
            assert "Traceback" not in r.stderr, r.stderr
            if k % 2 == 0:
                r = run_cli("bench", path, "--runs", "2", "--warmup", "0", "--db", tmp_path / "results.db")
                assert r.returncode in (0, ModelLoadError.exit_code, BenchmarkError.exit_code), (path, r.stderr)
                assert "Traceback" not in r.stderr, r.stderr


def test_device_text_is_printed_without_escape_sequences():
    from edgesdk.util import printable
    said = "ok\x1b[2J\x1b]0;owned\x07 done\r\x07\n"
    assert printable(said) == "ok done\n"


def test_markdown_report_escapes_names(tmp_path):
    from edgesdk.devices.report import _md_cell
    assert _md_cell("<img src=x onerror=alert(1)>|a") == "&lt;img src=x onerror=alert(1)&gt;\\|a"


@pytest.mark.parametrize("workdir", ["-rf", "--help"])
def test_a_workdir_that_reads_as_an_option_is_refused(workdir):
    from edgesdk.devices.deploy import Device
    from edgesdk.errors import OptionError
    with pytest.raises(OptionError, match="begins with '-'"):
        Device(None, "python3", 10, None).prepare(workdir)


def test_a_refusal_says_an_earlier_artifact_of_the_same_name_stays(keras3_mnist, mnist_files, tmp_path):
    out = tmp_path / "o"
    common = ("convert", keras3_mnist, "-t", "rpi4", "--format", "onnx", "-c", mnist_files["train"], "-o", out)
    r = run_cli(*common, "--quantization", "float")
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli(*common, "--quantization", "int8", "--task", "regress", "--min-sqnr", "200")  # int8 cannot meet this
    assert r.returncode == 7 and "Traceback" not in r.stderr
    assert "Nothing new was written: the artifact already at" in r.stderr and "stays as it was" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs of its own: a disk this test can fill without touching the machine's."""
    import subprocess
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk) -> None:
    """Write until the disk refuses: not a byte left."""
    with open(disk / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush on close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_is_said_once_and_leaves_nothing(keras3_mnist, mnist_files, tmp_path, small_disk):
    """Under --output and under --db: exit 8 (output) and 14 (results), one line naming the full disk and what is
    free there, no partial artifact or temporary file, and the results database as it was."""
    import sqlite3
    from edgesdk.errors import OutputError
    made = tmp_path / "made"
    r = run_cli("convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", made)
    assert r.returncode == 0, r.stderr
    art = next(made.glob("*.tflite"))
    db = small_disk / "results.db"
    assert run_cli("bench", art, "--runs", "3", "--warmup", "0", "--db", db).returncode == 0
    _fill(small_disk)
    before = sorted(p.name for p in small_disk.iterdir())

    r = run_cli("convert", keras3_mnist, "-t", "rpi4", "-c", mnist_files["train"], "-o", small_disk / "out")
    _clean_exit(r, OutputError.exit_code)
    assert "No space left on the disk" in r.stderr and f"free under {small_disk}" in r.stderr, r.stderr
    assert list((small_disk / "out").iterdir()) == []  # no artifact, manifest or temporary file

    r = run_cli("bench", art, "--runs", "3", "--warmup", "0", "--db", db)
    _clean_exit(r, ResultsError.exit_code)
    assert "its disk is full (0.0 MB free under" in r.stderr and "as it was" in r.stderr, r.stderr
    # nothing new but SQLite's own sidecars of the database (its write-ahead log and shared memory)
    assert {p.name for p in small_disk.iterdir()} - {"results.db-wal", "results.db-shm"} == {*before, "out"}
    (small_disk / "filler").unlink()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
