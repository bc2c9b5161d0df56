"""The yield matrix: real pretrained models from public wheels through `edgesdk convert`, default settings.

    python bench/yield_matrix.py [--models NAME ...] [--targets rpi4 ...] [--timeout SECONDS]

Each cell is one `edgesdk convert MODEL --target T --calibration DATA` in its own process, with only what the
model needs to be read at all (its input size, an input that takes one value) and the data a user of that model
has. Measured from outside: wall time and the peak RSS of the whole process tree (onnx2tf's worker included),
with a ceiling (a cell over it is killed and counted as a kill). Each cell is one of:

    working   exit 0: an artifact that passed the gate
    refused   a documented exit code (2-15) with its one-line reason, no traceback
    crashed   a traceback, exit 1, a signal (the ceiling's kill included) or the timeout

Writes bench/results/yield.json (one record per cell: model, target, outcome, exit, format, seconds,
peak_rss_mb, reason) and bench/results/yield.md. Cells already in yield.json are kept unless run again, so the
matrix can be filled in several sittings on a 2-core machine; each record says when it was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
TARGETS = ("rpi4", "coral-usb", "jetson-orin-nano", "rock5b")
CPU_TARGETS = ("rpi4", "jetson-orin-nano")  # the goal: >= 90 % working on these
DOCUMENTED_EXITS = set(range(2, 16))


def _npz(path: Path, **arrays) -> list:
    np.savez(path, **arrays)
    return ["--calibration", str(path)]


# Each model: (what it is, a function (work dir) -> (model path, extra convert arguments)). The arguments are
# what the model's own documentation says it takes, never a tuning flag.
def _yolov8n(work):
    from edgesdk import fixtures
    return fixtures.fetch("yolov8n_faces"), ["--input-shape", "1,3,320,320",
                                              *_npz(work / "faces.npz", x=fixtures.face_mosaics())]


def _ppocr_rec(work):
    from edgesdk import fixtures
    return fixtures.fetch("ppocr_rec"), ["--input-shape", "1,3,48,320",
                                          *_npz(work / "lines.npz", x=fixtures.text_line_crops())]


def _ppocr_det(work):
    from edgesdk import fixtures
    return fixtures.fetch("ppocr_det"), ["--input-shape", "1,3,192,384",
                                          *_npz(work / "pages.npz", x=fixtures.text_page_images())]


def _ppocr_cls(work):
    from edgesdk import fixtures
    x, _ = fixtures.text_direction_crops()
    return fixtures.fetch("ppocr_cls"), ["--input-shape", "1,3,48,192", *_npz(work / "crops.npz", x=x)]


def _magika(work):
    from edgesdk import fixtures
    return fixtures.fetch("magika"), _npz(work / "bytes.npz", x=fixtures.file_byte_features())


def _yolox(work):
    from edgesdk import fixtures
    return fixtures.fetch("captcha_detector"), ["--scale", "1", "--channel-order", "bgr",
                                                 *_npz(work / "chars.npz", x=fixtures.character_images())]


def _silero_vad(work):
    from edgesdk import fixtures
    x, _ = fixtures.speech_chunks()
    return fixtures.fetch("silero_vad_op15"), ["--input-value", "sr=16000", "--input-shape",
                                                "input:1,576;state:2,1,128", *_npz(work / "speech.npz", input=x)]


def _basic_pitch(work):
    from edgesdk import fixtures
    return fixtures.fetch("basic_pitch"), _npz(work / "clips.npz", x=fixtures.piano_clips())


def _efficientnet(work):
    import torch
    from edgesdk import fixtures
    model = fixtures.efficientnet_lite0().eval()
    x, _ = fixtures.photo_crops(per_photo=8)
    x = ((x.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()
    path = work / "efficientnet_lite0.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(x[:1]),)), str(path))
    return path, _npz(work / "photos.npz", x=x)


def _speaker_encoder(work):
    import torch
    sys.path.insert(0, str(REPO / "tests"))
    from speaker_encoder import speech_partials, voice_encoder
    x = speech_partials()
    path = work / "voice_encoder.pt2"
    torch.export.save(torch.export.export(voice_encoder(), (torch.from_numpy(x[:1]),)), str(path))
    return path, _npz(work / "mels.npz", x=x)


def _mtcnn_onet(work):
    from edgesdk import fixtures
    path = work / "onet.keras"
    fixtures.mtcnn_onet().save(path)
    x, _ = fixtures.onet_face_crops()
    return path, _npz(work / "faces.npz", x=x)


def _facenet_onet(work):
    import torch
    sys.path.insert(0, str(REPO / "tests"))
    from torch_models import onet
    from edgesdk import fixtures
    model = onet().eval()
    model.load_state_dict(torch.load(fixtures.fetch("facenet_onet"), weights_only=True))
    x, _ = fixtures.onet_face_crops()
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    path = work / "facenet_onet.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(x[:1]),)), str(path))
    return path, _npz(work / "faces.npz", x=x)


def _crepe_tiny(work):
    import torch
    sys.path.insert(0, str(REPO / "tests"))
    from torch_models import crepe_tiny, tone_frames
    from edgesdk import fixtures
    model = crepe_tiny().eval()
    model.load_state_dict(torch.load(fixtures.fetch("crepe_tiny"), weights_only=True))
    x, _ = tone_frames()
    path = work / "crepe_tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(x[:1]),)), str(path))
    return path, _npz(work / "frames.npz", x=x)


def _ddddocr_rec(work):
    from edgesdk import fixtures
    return fixtures.fetch("captcha_recognizer"), ["--input-shape", "1,1,64,160",
                                                   *_npz(work / "captchas.npz", x=fixtures.captcha_crops(128))]


def _basic_pitch_saved_model(work):
    from edgesdk import fixtures
    return fixtures.fetch_dir("basic_pitch_saved_model"), _npz(work / "clips.npz", x=fixtures.piano_clips())


MODELS = {
    "yolov8n": ("Ultralytics YOLOv8n face/body detector (NudeNet 320n, ONNX)", _yolov8n),
    "ppocr_rec": ("PP-OCRv4 text recognizer, CTC (ONNX)", _ppocr_rec),
    "ppocr_det": ("PP-OCRv4 text detector, DBNet segmenter (ONNX)", _ppocr_det),
    "ppocr_cls": ("PP-OCR text-direction classifier (ONNX)", _ppocr_cls),
    "magika": ("Magika byte classifier, attention over bytes (ONNX)", _magika),
    "yolox": ("YOLOX character detector (ddddocr, ONNX)", _yolox),
    "silero_vad": ("Silero VAD, recurrent (ONNX)", _silero_vad),
    "basic_pitch": ("Basic Pitch audio-to-MIDI (ONNX)", _basic_pitch),
    "efficientnet_lite0": ("EfficientNet-Lite0 ImageNet classifier (PyTorch ExportedProgram)", _efficientnet),
    "speaker_encoder": ("resemblyzer speaker encoder, LSTM embedder (PyTorch ExportedProgram)", _speaker_encoder),
    "mtcnn_onet": ("MTCNN O-Net face/landmark network, three heads (Keras, mtcnn's weights)", _mtcnn_onet),
    "facenet_onet": ("MTCNN O-Net, facenet-pytorch's weights (PyTorch ExportedProgram)", _facenet_onet),
    "crepe_tiny": ("CREPE tiny pitch tracker, 1-D audio CNN (PyTorch ExportedProgram)", _crepe_tiny),
    "ddddocr_rec": ("ddddocr captcha recognizer, CRNN with CTC (ONNX)", _ddddocr_rec),
    "basic_pitch_saved_model": ("Basic Pitch audio-to-MIDI (TensorFlow SavedModel)", _basic_pitch_saved_model),
}


def run_cell(model: Path, args: list, target: str, work: Path, timeout: float, ceiling_mb: float) -> dict:
    """One `edgesdk convert`, measured from outside; its outcome as defined above."""
    out = work / f"out-{target}"
    cmd = [str(Path(sys.executable).with_name("edgesdk")), "convert", str(model), "--target", target, *args,
           "--output", str(out), "--json"]
    log = work / f"{target}.log"
    started, peak, killed = time.monotonic(), 0.0, None
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        while proc.poll() is None:
            peak = max(peak, _tree_rss_mb(proc.pid))
            if peak > ceiling_mb:
                killed = f"killed at {peak:.0f} MB (ceiling {ceiling_mb:.0f} MB)"
            elif time.monotonic() - started > timeout:
                killed = f"timed out after {timeout:.0f} s"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        stdout = proc.communicate()[0]
    seconds = round(time.monotonic() - started, 1)
    stderr = log.read_text(errors="replace")
    record = {"exit": proc.returncode, "seconds": seconds, "peak_rss_mb": round(peak), "format": None, "reason": None}
    if proc.returncode == 0:
        doc = json.loads(stdout)
        manifest = json.loads(Path(doc["manifest"]).read_text())
        made = [f"{f['wanted']} failed, {f['made']} made: {f['reason']}"
                for f in (manifest.get("format_fallback"), manifest.get("precision_fallback")) if f]
        return {**record, "outcome": "working", "format": manifest["format"], "reason": "; ".join(made) or None,
                "validation": _figures(manifest)}
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if killed or "Traceback" in stderr or proc.returncode not in DOCUMENTED_EXITS or not errors:
        tail = [line for line in stderr.splitlines() if line.strip()][-1:] or [""]
        return {**record, "outcome": "crashed", "reason": killed or tail[0][:300]}
    return {**record, "outcome": "refused", "reason": errors[-1].removeprefix("error: ")[:300]}


def _figures(manifest: dict) -> dict:
    """What the gate measured, by the model's task, and what the recovery ladder applied."""
    v = manifest["validation"]
    out = {k: v.get(k) for k in ("task", "verdict", "sqnr_db", "top1_agreement", "samples") if v.get(k) is not None}
    for head in v.get("heads", []):
        out.update({k: head[k] for k in ("recall", "precision", "mean_iou") if head.get(k) is not None})
    applied = ((manifest.get("recovery") or {}).get("applied") or {}).get("step")
    if applied:
        out["recovered_by"] = applied
    out["precision_kept"] = manifest["quantization"]["scheme"]
    return out


def measured_commit() -> str:
    """The commit the SDK's code is at; a figure measured on code not yet committed says so ("+changes"):
    it is not that commit's."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "edgesdk", "converters", "targets",
                       "device_profiles"], capture_output=True, text=True).stdout.strip():
        commit += "+changes"
    return commit


def _tree_rss_mb(pgid: int) -> float:
    out = subprocess.run(["ps", "-o", "rss=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return sum(int(v) for v in out.split()) / 1024


def markdown(records: list) -> str:
    lines = ["Each cell: `edgesdk convert` with default settings (the model's input size and data only), measured "
             "from outside (wall time, peak RSS of the process tree).", "",
             "| model | target | outcome | exit | format | seconds | peak RSS MB | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        reason = (r.get("reason") or "").replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['target']} | {r['outcome']} | {r['exit']} | {r.get('format') or ''} | "
                     f"{r['seconds']} | {r['peak_rss_mb']} | {reason} |")
    cpu = [r for r in records if r["target"] in CPU_TARGETS]
    working = sum(r["outcome"] == "working" for r in cpu)
    crashed = sum(r["outcome"] == "crashed" for r in records)
    lines += ["", f"Cells: {len(records)}; crashed or killed: {crashed} (goal 0); working on the CPU targets "
                  f"({', '.join(CPU_TARGETS)}): {working} of {len(cpu)}"
                  + (f" ({100 * working / len(cpu):.0f} %, goal >= 90 %)" if cpu else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", choices=list(MODELS))
    p.add_argument("--targets", nargs="*", default=list(TARGETS))
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--ceiling-mb", type=float, default=12000)
    p.add_argument("--output", default=str(OUT))
    a = p.parse_args(argv)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "yield.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    commit = measured_commit()
    for name in a.models or list(MODELS):
        about, prepare = MODELS[name]
        with tempfile.TemporaryDirectory(prefix=f"edgesdk-yield-{name}-") as tmp:
            work = Path(tmp)
            model, args = prepare(work)
            for target in a.targets:
                cell = run_cell(Path(model), args, target, work, a.timeout, a.ceiling_mb)
                cell = {"model": name, "about": about, "target": target, **cell, "commit": commit,
                        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
                print(f"[yield] {name} {target}: {cell['outcome']} (exit {cell['exit']}, {cell['seconds']} s, "
                      f"{cell['peak_rss_mb']} MB) {cell.get('reason') or ''}", flush=True)
                records = [r for r in records if (r["model"], r["target"]) != (name, target)] + [cell]
                records.sort(key=lambda r: (list(MODELS).index(r["model"]) if r["model"] in MODELS else 99,
                                            TARGETS.index(r["target"]) if r["target"] in TARGETS else 99))
                path.write_text(json.dumps(records, indent=2) + "\n")
                (out / "yield.md").write_text(markdown(records))
                if out.resolve() == OUT.resolve():  # the committed results: the docs' page follows them
                    subprocess.run([sys.executable, str(REPO / "docs" / "generate.py")], check=False)
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
