"""Memory and time of `edgesdk convert` against the plain library a user would call instead, same model and data.

    python bench/footprint.py [--models NAME ...]

For each real model: `edgesdk convert MODEL --target rpi4 --format onnx` with default settings (the recovery
ladder on), and ONNX Runtime's quantize_static (QDQ, its defaults) on the same file and calibration data (a
PyTorch program exported to ONNX first, in the measured process, as convert exports it), each in its own
process, measured from outside: wall time and the peak RSS of the process tree (the plain library run three times,
its median taken: its seconds vary by a fifth from run to run here). The ratios are the goals (issue: convert peak RSS <= 2.0x the plain library's, wall time <= 3x); what the
conversion did besides quantizing (the gate, the ladder's rungs) is recorded beside it, so a ratio is read
with what it paid for. Writes bench/results/footprint.json and footprint.md (committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "bench"))
from yield_matrix import _efficientnet, _ppocr_det, _ppocr_rec, _tree_rss_mb, _yolov8n, measured_commit  # noqa: E402

GOAL_RSS, GOAL_WALL = 2.0, 3.0
PLAIN_RUNS = 3
MODELS = {"ppocr_rec": _ppocr_rec, "ppocr_det": _ppocr_det, "yolov8n": _yolov8n, "efficientnet_lite0": _efficientnet}

# The plain library: what a user writes with ONNX Runtime alone, from the same file: a PyTorch program exported
# with the exporter's defaults (in the measured process, as convert's own export is), the float graph fixed to
# the data's size.
PLAIN = """
import sys, numpy as np, onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
model, data, out = sys.argv[1:4]
x = np.load(data)["x"]
if model.endswith(".pt2"):  # a PyTorch program is exported first, as a user of the plain library must
    import torch
    program = torch.export.load(model)
    torch.onnx.export(program, program.example_inputs[0], out + ".float.onnx", input_names=["x"])
    model = out + ".float.onnx"
m = onnx.load(model)
inp = m.graph.input[0]
for d, v in zip(inp.type.tensor_type.shape.dim, (1,) + x.shape[1:]):
    d.ClearField("dim_param"); d.dim_value = v
onnx.save(m, out + ".fixed.onnx")
class Reader(CalibrationDataReader):
    def __init__(self):
        self.rows = iter(x)
    def get_next(self):
        row = next(self.rows, None)
        return None if row is None else {inp.name: row[None]}
quantize_static(out + ".fixed.onnx", out, Reader(), quant_format=QuantFormat.QDQ)
"""


def measured(cmd: list) -> dict:
    started, peak = time.monotonic(), 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.25)
    stdout, stderr = proc.communicate()
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - started, 1), "peak_rss_mb": round(peak),
            "stdout": stdout, "stderr": stderr}


def run_model(name: str, work: Path) -> dict:
    model, args = MODELS[name](work)
    data = Path(args[args.index("--calibration") + 1])
    convert = measured([str(Path(sys.executable).with_name("edgesdk")), "convert", str(model), "--target", "rpi4",
                        "--format", "onnx", *args, "--output", str(work / "out"), "--json"])
    record = {"model": name, "convert": {k: convert[k] for k in ("exit", "seconds", "peak_rss_mb")}}
    if convert["exit"] == 0:
        manifest = json.loads(Path(json.loads(convert["stdout"])["manifest"]).read_text())
        recovery = manifest.get("recovery") or {}
        attempts = manifest.get("timing") or []
        record["convert"].update(passed=manifest["validation"]["passed"], samples=manifest["validation"]["samples"],
                                 rungs=len(recovery.get("rungs", [])),
                                 recovered_by=(recovery.get("applied") or {}).get("step"),
                                 made=manifest["recipe"]["quantization"],
                                 # the ladder counted apart: every attempt's, a failed int8's included
                                 ladder_seconds=round(sum(a["seconds"].get("recover", 0) for a in attempts), 1))
    else:
        record["convert"]["error"] = [ln for ln in convert["stderr"].splitlines() if ln.startswith("error:")][-1:]
    # the plain library's seconds vary by a fifth from run to run here (PP-OCRv4's recognizer: 11.6 to 14.5 s),
    # so it runs PLAIN_RUNS times and the ratios take its median
    runs = [measured([sys.executable, "-c", PLAIN, str(model), str(data), str(work / "plain.onnx")])
            for _ in range(PLAIN_RUNS)]
    plain = {"exit": max(r["exit"] for r in runs), "seconds": float(np.median([r["seconds"] for r in runs])),
             "peak_rss_mb": int(np.median([r["peak_rss_mb"] for r in runs]))}
    record["plain"] = {**plain, "runs_seconds": [r["seconds"] for r in runs]}
    if plain["exit"] == 0 and convert["exit"] == 0:
        record["rss_ratio"] = round(convert["peak_rss_mb"] / max(plain["peak_rss_mb"], 1), 2)
        record["wall_ratio"] = round(convert["seconds"] / max(plain["seconds"], 0.1), 2)
        ladder = record["convert"].get("ladder_seconds", 0)
        record["wall_ratio_ladder_apart"] = round((convert["seconds"] - ladder) / max(plain["seconds"], 0.1), 2)
    record["measured"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record["commit"] = measured_commit()
    return record


def markdown(records: list) -> str:
    lines = ["`edgesdk convert --target rpi4 --format onnx` (defaults: the gate, the recovery ladder) against ONNX "
             "Runtime's quantize_static on the same file and data (a PyTorch program exported to ONNX first, in both); peak RSS of the process tree and wall "
             f"time, measured from outside (the plain library's: the median of its runs, their seconds in the json). Goals: "
             f"RSS ratio <= {GOAL_RSS}, wall ratio <= {GOAL_WALL}. The ladder's "
             "seconds (every attempt's, from the manifest's `timing`) are counted apart in the last ratio.", "",
             "| model | convert s | convert MB | plain s | plain MB | RSS ratio | wall ratio | ladder s | "
             "wall ratio, ladder apart | made | gate | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c, p = r["convert"], r["plain"]
        gate = ("passed" if c.get("passed") else f"exit {c['exit']}")
        gate += f", {c['recovered_by']}" if c.get("recovered_by") else ""
        lines.append(f"| {r['model']} | {c['seconds']} | {c['peak_rss_mb']} | {p['seconds']} | {p['peak_rss_mb']} | "
                     f"{r.get('rss_ratio', '')} | {r.get('wall_ratio', '')} | {c.get('ladder_seconds', '')} | "
                     f"{r.get('wall_ratio_ladder_apart', '')} | {c.get('made', '')} | {gate} | "
                     f"{r.get('commit', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    args = p.parse_args(argv)
    path = OUT / "footprint.json"
    kept = {r["model"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edgesdk-footprint-{name}-") as tmp:
            kept[name] = run_model(name, Path(tmp))
        r = kept[name]
        print(f"[footprint] {name}: convert {r['convert']['seconds']} s / {r['convert']['peak_rss_mb']} MB, plain "
              f"{r['plain']['seconds']} s / {r['plain']['peak_rss_mb']} MB", flush=True)
        records = [kept[m] for m in MODELS if m in kept]
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1) + "\n")
        (OUT / "footprint.md").write_text(markdown(records))
        subprocess.run([sys.executable, str(REPO / "docs" / "generate.py")], check=False)  # the docs' page follows
    return 0


if __name__ == "__main__":
    sys.exit(main())
