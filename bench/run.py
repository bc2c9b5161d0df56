"""The performance suite: every claim a figure measured beside its baseline in the same run.

    python bench/run.py [--quick] [--only NAME ...]

Writes bench/results/latest.json and latest.md. Each line is a ratio or a
figure against its baseline, the median of several repetitions with the
spread (min..max). Goals are goals, not assertions: a miss is reported, the
suite still exits 0. --quick (used by the test suite so this cannot rot) runs
fewer repetitions and smaller inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesdk import ConvertOptions, InputOptions, QuantizeOptions, Thresholds, TrainingOptions

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"


def median_spread(values):
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


_PEAK = ("import resource,subprocess,sys,time\nt=time.perf_counter()\n"
         "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)\n"
         "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)")


def timed(cmd, env=None):
    """(wall seconds, peak RSS MB) of a command, measured by a fresh parent so the peak is its own."""
    out = subprocess.run([sys.executable, "-c", _PEAK, *map(str, cmd)], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout.split()
    return float(out[0]), float(out[1])


def mobilenet_like(tmp: Path):
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    import keras
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    path = tmp / "mobilenet_v2_035_96.keras"
    model.save(path)
    x = np.random.default_rng(0).random((120, 96, 96, 3), np.float32) * 2 - 1
    np.save(tmp / "mobilenet_calib.npy", x)
    return path, tmp / "mobilenet_calib.npy", model.count_params()


# --- the measurements --------------------------------------------------------------

def bench_size(tmp, quick, mnist):
    import edgesdk
    path, calib, params = mobilenet_like(tmp)
    model, data = mnist
    rows = []
    for label, src, cal in (("MobileNetV2-0.35 shaped", path, str(calib)), ("MNIST CNN", model, data["train"])):
        options = ConvertOptions(gate=Thresholds(max_accuracy_drop=100))
        art = edgesdk.convert(str(src), "rpi4", calibration=cal, output_dir=tmp / f"size-{label[:5]}", quiet=True,
                              options=options)
        n = art.manifest["size"]["source_params"]
        ratio = art.manifest["size"]["bytes"] / n
        rows.append({"name": f"int8 TFLite bytes / parameters ({label})", "value": round(ratio, 4),
                     "goal": "<= 1.05", "met": ratio <= 1.05, "baseline": f"{n:,} parameters x 1 byte"})
    return rows


def bench_pruned_size(tmp, quick, mnist):
    import edgesdk
    model, data = mnist
    options = ConvertOptions(quantize=QuantizeOptions(quantization="float"))
    flt = edgesdk.convert(str(model), "rpi4", calibration=data["train"],
                          output_dir=tmp / "f32", quiet=True, options=options)
    options = ConvertOptions(training=TrainingOptions(prune=0.75), gate=Thresholds(max_accuracy_drop=100))
    pruned = edgesdk.convert(str(model), "rpi4", calibration=data["train"], fine_tune=data["train"],
                             output_dir=tmp / "p75", quiet=True, options=options)
    ratio = flt.manifest["size"]["gzip_bytes"] / pruned.manifest["size"]["gzip_bytes"]
    return [{"name": "fp32 TFLite gzip / (75% pruned + int8) gzip (MNIST CNN)", "value": round(ratio, 2),
             "goal": ">= 12", "met": ratio >= 12, "baseline": f"fp32 {flt.manifest['size']['gzip_bytes']:,} B gzip"}]


TEACHER_EPOCHS = 12  # the MNIST CNN at its plateau on 4,000 digits (95.2 %; the shared fixture's 3 epochs: 93.6 %)


def bench_accuracy(tmp, quick):
    """What int8, pruning, distillation and QAT cost a trained CNN. Its own fixture, trained to its plateau: on the
    shared 3-epoch one, fine-tuning the pruned model goes on training it, and the drop shows that, not the pruning."""
    import edgesdk
    from edgesdk import fixtures
    example = fixtures.mnist_example(tmp / "accuracy", epochs=TEACHER_EPOCHS)
    model, data = example["model"], {"train": str(example["train"]), "test": str(example["heldout"])}
    rows = []
    for label, training in (("int8", None), ("75% pruned + int8", TrainingOptions(prune=0.75)),
                            ("75% pruned + int8, distilled", TrainingOptions(prune=0.75, distill=True)),
                            # two more epochs, with int8 rounding in the loop
                            ("75% pruned + int8, distilled, quantization-aware trained",
                             TrainingOptions(prune=0.75, distill=True, qat=True))):
        options = ConvertOptions(training=training or TrainingOptions(), gate=Thresholds(max_accuracy_drop=100))
        art = edgesdk.convert(str(model), "rpi4", calibration=data["train"], validation=data["test"],
                              fine_tune=data["train"] if training else None, output_dir=tmp / f"acc-{len(rows)}",
                              quiet=True, options=options)
        v = art.validation
        drop = 100 * (v["reference_accuracy"] - v["artifact_accuracy"])
        rows.append({"name": f"accuracy drop, fp32 -> {label} (MNIST CNN, 1,000 held-out digits)",
                     "value": round(drop, 2), "unit": "points", "goal": "<= 0.5", "met": drop <= 0.5,
                     "baseline": f"fp32 {100 * v['reference_accuracy']:.2f}%"})
    return rows


def bench_recovery(tmp, quick):
    """Real models whose plain int8 collapses: what recovery gives back and costs. Magika (int32 bytes in) and
    Silero VAD (recorded speech, its state fed back).

    The baseline is the plain library on the same data: the ladder's first rung is ONNX Runtime's
    quantize_static with the route's settings, before anything is recovered."""
    import edgesdk
    from edgesdk import fixtures
    files = fixtures.file_byte_features(limit=160 if quick else 400)
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx"))
    magika = edgesdk.convert(str(fixtures.fetch("magika")), "rpi4", calibration=files,
                             output_dir=tmp / "magika", quiet=True, options=options)
    chunks, _ = fixtures.speech_chunks()
    np.savez(tmp / "speech.npz", input=chunks)
    options = ConvertOptions(quantize=QuantizeOptions(format="onnx"),
                             inputs=InputOptions(input_shape="input:1,576", input_values={"sr": 16000}),
                             gate=Thresholds(class_output=0))
    vad = edgesdk.convert(str(fixtures.fetch("silero_vad_op15")), "rpi4",
                          calibration=str(tmp / "speech.npz"),
                          output_dir=tmp / "vad", quiet=True, options=options)
    return (_recovery_rows("Magika", "real files", magika, 0.98)
            + _recovery_rows("Silero VAD", "speech chunks", vad, 0.95))


def _recovery_rows(model: str, samples: str, art, goal: float) -> list:
    rungs = art.manifest["recovery"]["rungs"]
    plain, kept = rungs[0], next(r for r in rungs if r.get("applied"))
    agree, base = art.validation["top1_agreement"], next(iter(plain["figures"].values()))
    n = art.validation["samples"]
    floats = ",".join(kept["float_op_types"]) or ",".join(kept["float_nodes"])
    rows = [{"name": f"top-1 agreement with float, {model} int8 ({n} {samples}), recovered by default",
             "value": round(agree, 4), "goal": f">= {goal}", "met": agree >= goal,
             "baseline": f"plain library {base:.4f}; recovered by {art.manifest['recovery']['applied']['step']}, "
                         f"{len(rungs) - 1} rung(s), activations {kept['activations']}, kept float: {floats[:80]}"},
            {"name": f"recovered / plain int8 artifact size ({model})",
             "value": round(kept["size_bytes"] / plain["size_bytes"], 4), "goal": "report", "met": None,
             "baseline": f"plain {plain['size_bytes']:,} B"}]
    if plain.get("p50_ms") and kept.get("p50_ms"):
        rows.append({"name": f"recovered / plain int8 p50 here ({model})",
                     "value": round(kept["p50_ms"] / plain["p50_ms"], 4), "goal": "report", "met": None,
                     "baseline": f"plain p50 {plain['p50_ms']:.3f} ms"})
    return rows


def imagenet_photos(quick):
    """EfficientNet-Lite0 and real-photo crops: calibration from 7 photos, validation from the other 18."""
    from edgesdk import fixtures
    x, photo = fixtures.photo_crops(per_photo=4 if quick else 20)
    x = ((x.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()
    return fixtures.efficientnet_lite0(), x[photo < 7], x[photo >= 7]


def _plain_tflite(model, cal, val):
    """What a user gets from the plain libraries: litert-torch's float graph, ai-edge-quantizer's static
    int8 recipe with its own calibration (Quantizer.calibrate), on the same data."""
    import litert_torch
    import torch
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    from edgesdk.converters import tflite_int8, torch_tflite
    wrapped = torch_tflite._channels_last(model, torch, {0})
    flat = bytes(litert_torch.convert(wrapped, (torch.zeros(1, 224, 224, 3),)).model_content())
    nhwc = lambda a: a.transpose(0, 2, 3, 1).copy()  # noqa: E731
    q, data = tflite_int8.quantizer_for(flat, nhwc(cal))
    result = q.quantize(q.calibrate(data)).quantized_model
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "plain.tflite"
        path.write_bytes(bytes(result))
        return TFLiteArtifact(path).predict(nhwc(val))[0]


def _plain_onnx(model, cal, val):
    """ONNX Runtime's quantize_static (per-channel QDQ, min/max) on torch.onnx.export's graph, run as written."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    with tempfile.TemporaryDirectory() as d:
        f, q = Path(d) / "float.onnx", Path(d) / "int8.onnx"
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(f), dynamo=True, input_names=["input"])

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter({"input": cal[i:i + 1]} for i in range(len(cal)))

            def get_next(self):
                return next(self.it, None)
        quantize_static(str(f), str(q), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(q), opts, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"input": val[i:i + 1]})[0] for i in range(len(val))])


def bench_imagenet(tmp, quick):
    """A pretrained ImageNet CNN from PyTorch, int8 for rpi4 as TFLite and ONNX, against the plain libraries."""
    import torch

    import edgesdk
    from edgesdk.judge.tasks.regress import sqnr_db
    model, cal, val = imagenet_photos(quick)
    with torch.no_grad():
        ref = model(torch.from_numpy(val)).numpy()
    rows = []
    for fmt, plain in (("tflite", _plain_tflite), ("onnx", _plain_onnx)):
        options = ConvertOptions(quantize=QuantizeOptions(format=fmt),
                                 gate=Thresholds(min_agreement=0.0),
                                 task="classify",
                                 recover=False)
        art = edgesdk.convert(model, "rpi4", example_input=torch.zeros(1, 3, 224, 224),
                              calibration=cal, validation=val, output_dir=tmp / f"imagenet-{fmt}", quiet=True,
                              options=options)  # the default rounding (auto)
        v, base = art.validation, plain(model, cal, val)
        base_sqnr, base_agree = sqnr_db(ref, base), float((base.argmax(1) == ref.argmax(1)).mean())
        rounded = art.manifest["quantization"]["weight_rounding"]
        rows += [{"name": f"top-1 agreement with float, EfficientNet-Lite0 int8 {fmt}, default settings "
                          f"({v['samples']} photo crops)",
                  "value": round(v["top1_agreement"], 4), "goal": ">= 0.98", "met": v["top1_agreement"] >= 0.98,
                  "baseline": f"plain library {base_agree:.4f}"},
                 {"name": f"output SQNR gain over the plain library, EfficientNet-Lite0 int8 {fmt}",
                  "value": round(v["sqnr_db"] - base_sqnr, 2), "unit": "dB", "goal": ">= 3",
                  "met": v["sqnr_db"] - base_sqnr >= 3,
                  "baseline": f"plain {base_sqnr:.1f} dB, edgesdk {v['sqnr_db']:.1f} dB "
                              f"({rounded['mode']} rounding chosen, {rounded.get('layers', 0)} layers; "
                              f"{art.manifest['quantization']['calibration_method']} calibration)"}]
    return rows


def bench_onnx_tflite(tmp, quick):
    """An ONNX source to int8 TFLite for the Pi: the SDK's route against onnx2tf's own integer quantization
    (what a user runs instead: `onnx2tf -oiqt` with the same calibration data), judged on real crops."""
    import edgesdk
    from edgesdk import fixtures, toolchains
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    from edgesdk.converters import onnx_tflite
    from edgesdk.judge.tasks.regress import sqnr_db
    from edgesdk.sources.source import load_source
    x, _ = fixtures.text_direction_crops()
    order = np.random.default_rng(0).permutation(len(x))
    cal, val = x[order[:132]], x[order[132:]]
    model = fixtures.fetch("ppocr_cls")
    source = load_source(str(model), input_shape="1,3,48,192")
    ref = source.predict(val)[0]
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    np.save(tmp / "cal.npy", nhwc(cal))
    reply = toolchains.run(onnx_tflite.ONNX2TF, onnx_tflite.WORKER,
                           {"onnx": source.float_onnx, "out": str(tmp / "onnx2tf"), "int8": True,
                            "samples": {"x": str(tmp / "cal.npy")}})
    plain = TFLiteArtifact(reply["int8_tflite"]).predict(nhwc(val))[0]
    options = ConvertOptions(inputs=InputOptions(input_shape="1,3,48,192"),
                             gate=Thresholds(min_agreement=0.0),
                             task="classify",
                             recover=False)
    art = edgesdk.convert(str(model), "rpi4", calibration=cal, validation=val,
                          output_dir=tmp / "onnx-tflite", quiet=True,
                          options=options)
    v = art.validation
    base_sqnr, base_agree = sqnr_db(ref, plain), float((plain.argmax(1) == ref.argmax(1)).mean())
    return [{"name": f"top-1 agreement with float, PP-OCR direction classifier ONNX -> int8 TFLite ({v['samples']} "
                     f"real crops)", "value": round(v["top1_agreement"], 4), "goal": ">= 0.98",
             "met": v["top1_agreement"] >= 0.98, "baseline": f"onnx2tf -oiqt {base_agree:.4f}"},
            {"name": "output SQNR gain over onnx2tf's own int8, PP-OCR direction classifier",
             "value": round(v["sqnr_db"] - base_sqnr, 2), "unit": "dB", "goal": ">= 3",
             "met": v["sqnr_db"] - base_sqnr >= 3,
             "baseline": f"onnx2tf {base_sqnr:.1f} dB, edgesdk {v['sqnr_db']:.1f} dB "
                         f"({art.manifest['quantization']['calibration_method']} calibration chosen)"}]


def bench_detector(tmp, quick):
    """A YOLOv8-style detector (ddddocr's YOLOX with the head Ultralytics exports) to int8 TFLite for the Coral,
    against onnx2tf's own integer quantization of the same ONNX: detections against float's on real scans."""
    import edgesdk
    from edgesdk import fixtures, toolchains
    from edgesdk.artifacts.tflite_artifact import TFLiteArtifact
    from edgesdk.converters import onnx_tflite
    from edgesdk.judge.tasks import ModelIO
    from edgesdk.judge.validation import judge
    from edgesdk.sources.data import Preprocess, load_for
    from edgesdk.sources.source import load_source
    sys.path.insert(0, str(REPO / "tests"))
    from detector_heads import yolov8_branches
    model = yolov8_branches(fixtures.fetch("captcha_detector"), tmp / "det_v8.onnx")
    cal = fixtures.character_images()
    labelled = fixtures.labelled_character_folder(tmp / "labelled")
    preprocess = Preprocess(scale=1.0, channel_order="bgr")
    source = load_source(str(model))
    val = load_for(source, str(labelled), preprocess=preprocess)
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    np.save(tmp / "det_cal.npy", nhwc(cal).astype(np.float32))
    reply = toolchains.run(onnx_tflite.ONNX2TF, onnx_tflite.WORKER,
                           {"onnx": source.float_onnx, "out": str(tmp / "det-onnx2tf"), "int8": True,
                            "samples": {"images": str(tmp / "det_cal.npy")}})
    ref = source.predict(val.x)
    plain = judge(ref, TFLiteArtifact(reply["int8_tflite"]).predict(nhwc(val.x)),
                  io=ModelIO(output_names=["output0"], input_hw=(416, 416)))["heads"][0]
    options = ConvertOptions(inputs=InputOptions(preprocess=preprocess),
                             gate=Thresholds(max_accuracy_drop=2),
                             recover=False,
                             keep_failed=True)
    art = edgesdk.convert(str(model), "coral-usb", calibration=cal, validation=str(labelled),
                          output_dir=tmp / "det-coral", quiet=True,
                          options=options)
    head = art.validation["heads"][0]
    what = f"YOLOv8-style detector int8 TFLite, coral-usb ({head['images']} real scans, " \
           f"{head['source_detections']} float detections)"
    return [{"name": f"detection {k} vs float, {what}", "value": round(head[k], 4), "goal": ">= 0.9",
             "met": head[k] >= 0.9, "baseline": f"onnx2tf -oiqt {plain[k]:.4f}"} for k in ("recall", "precision")]


def bench_speed(tmp, quick):
    import edgesdk
    path, calib, _ = mobilenet_like(tmp)
    options = ConvertOptions(quantize=QuantizeOptions(quantization="float"))
    f32 = edgesdk.convert(str(path), "local", calibration=str(calib),
                          output_dir=tmp / "s32", quiet=True, options=options)
    options = ConvertOptions(gate=Thresholds(max_accuracy_drop=100))
    i8 = edgesdk.convert(str(path), "local", calibration=str(calib), output_dir=tmp / "s8", quiet=True,
                         options=options)
    runs, reps = (50, 3) if quick else (300, 5)
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        ratios = []
        for _ in range(reps):
            a = edgesdk.benchmark(f32, runs=runs, warmup=10, threads=threads).p50
            b = edgesdk.benchmark(i8, runs=runs, warmup=10, threads=threads).p50
            ratios.append(a / b)
        m = median_spread(ratios)
        rows.append({"name": f"fp32 p50 / int8 p50, {threads} thread(s) (MobileNetV2-0.35 shaped, XNNPACK)",
                     "value": m["median"], "spread": m, "goal": ">= 2", "met": m["median"] >= 2,
                     "baseline": "the fp32 TFLite of the same model, same runner"})
    return rows


def bench_startup(tmp, quick):
    exe = str(Path(sys.executable).with_name("edgesdk"))
    reps = 3 if quick else 7
    cli = [timed([exe, "--help"])[0] for _ in range(reps)]
    tf = [timed([sys.executable, "-c", "import tensorflow"], env={"TF_CPP_MIN_LOG_LEVEL": "3"})[0]
          for _ in range(max(2, reps // 2))]
    c, t = median_spread(cli), median_spread(tf)
    return [{"name": "`edgesdk --help` wall time", "value": c["median"], "unit": "s", "spread": c, "goal": "< 0.3",
             "met": c["median"] < 0.3, "baseline": "-"},
            {"name": "`import tensorflow` / `edgesdk --help`", "value": round(t["median"] / c["median"], 1),
             "goal": ">= 10", "met": t["median"] / c["median"] >= 10, "baseline": f"import tensorflow {t['median']:.2f} s"}]


PLAIN_CONVERTER = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
m = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])[:300]
inp = keras.Input(m.input_shape[1:], batch_size=1); w = keras.Model(inp, m(inp))
c = tf.lite.TFLiteConverter.from_keras_model(w)
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = lambda: ([x[i:i+1]] for i in range(len(x)))
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
c.inference_input_type = c.inference_output_type = tf.int8
open(sys.argv[3], "wb").write(c.convert())
"""


def bench_overhead(tmp, quick):
    path, calib, _ = mobilenet_like(tmp)
    if quick:  # quick mode only keeps the measurement from rotting: a shorter calibration is enough (64: the
        # fewest on which the gate can tell 100 % agreement from the 95 % floor)
        np.save(tmp / "overhead_calib.npy", np.load(calib)[:64])
        calib = tmp / "overhead_calib.npy"
    script = tmp / "plain.py"
    script.write_text(PLAIN_CONVERTER)
    exe = str(Path(sys.executable).with_name("edgesdk"))
    reps = 1 if quick else 5  # quick mode only keeps the measurement from rotting
    sdk, plain = [], []
    for i in range(reps):
        plain.append(timed([sys.executable, str(script), str(path), str(calib), str(tmp / "plain.tflite")]))
        sdk.append(timed([exe, "convert", str(path), "-t", "rpi4", "-c", str(calib), "-o", str(tmp / f"o{i}"),
                          "-q", "--max-accuracy-drop", "100", "--force"]))
    t = median_spread([s[0] / p[0] for s, p in zip(sdk, plain)])
    mem = median_spread([s[1] / p[1] for s, p in zip(sdk, plain)])
    return [{"name": "`edgesdk convert` wall time / plain TFLiteConverter script (same model and options)",
             "value": t["median"], "spread": t, "goal": "<= 1.10", "met": t["median"] <= 1.10,
             "baseline": f"plain script {statistics.median(p[0] for p in plain):.2f} s; edgesdk also validates "
                         f"and inspects"},
            {"name": "`edgesdk convert` peak RSS / plain script peak RSS", "value": mem["median"], "spread": mem,
             "goal": "<= 1.2", "met": mem["median"] <= 1.2,
             "baseline": f"plain script {statistics.median(p[1] for p in plain):.0f} MB"}]


def bench_fidelity(tmp, quick, mnist):
    import edgesdk
    from edgesdk.artifacts.tflite_artifact import interpreter_module
    model, data = mnist
    art = edgesdk.convert(str(model), "local", calibration=data["train"], output_dir=tmp / "fid", quiet=True)
    runs = 200 if quick else 2000
    runner = [edgesdk.benchmark(art, runs=runs, warmup=20, threads=1).p50 for _ in range(3 if quick else 7)]
    interp = interpreter_module().Interpreter(model_path=str(art.path), num_threads=1)
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(20):
        interp.invoke()
    loop = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        loop.append((time.perf_counter() - t0) * 1000)
    ratio = statistics.median(runner) / statistics.median(loop)
    cv = statistics.pstdev(runner) / statistics.mean(runner)
    return [{"name": "runner p50 / minimal in-process loop p50 (MNIST CNN int8, 1 thread)", "value": round(ratio, 3),
             "goal": "0.95 .. 1.05", "met": 0.95 <= ratio <= 1.05, "baseline": f"loop p50 {statistics.median(loop):.4f} ms"},
            {"name": "coefficient of variation of p50 across repeated runner runs", "value": round(cv, 4),
             "goal": "report", "met": None, "baseline": f"{len(runner)} runs of {runs}"}]


def bench_noise(tmp, quick, mnist):
    """A/A: the same artifact benchmarked twice on this quiet host must compare as 'no difference'."""
    import edgesdk
    from scipy.stats import mannwhitneyu
    from edgesdk.devices.results import compare
    model, data = mnist
    art = edgesdk.convert(str(model), "local", calibration=data["train"], output_dir=tmp / "aa", quiet=True)
    pairs, repeat = (8, 3) if quick else (40, 3)

    def row(i, res, first_only=False):
        reps = res.raw["repeats"]
        lat = res.latencies_ms[:reps[0]["runs"]] if first_only else res.latencies_ms
        return {"id": i, "latencies": lat, "extra": {} if first_only else {"repeats": reps}, "probe": {}}
    same_repeat = same_single = mw_same = 0
    for i in range(pairs):
        a, b = (edgesdk.benchmark(art, runs=100, warmup=10, threads=1, repeat=repeat) for _ in range(2))
        same_repeat += not compare(row(1, a), row(2, b))["differs"]
        same_single += not compare(row(1, a, True), row(2, b, True))["differs"]
        first = a.raw["repeats"][0]["runs"]
        mw_same += mannwhitneyu(a.latencies_ms[:first], b.latencies_ms[:first]).pvalue >= 0.01
    share = same_repeat / pairs
    return [{"name": f"A/A comparisons judged 'no difference' ({pairs} pairs, --repeat {repeat}, MNIST int8, "
                     f"this host)", "value": round(share, 3), "goal": ">= 0.95", "met": share >= 0.95,
             "baseline": f"one process per run: {same_single / pairs:.3f}; a Mann-Whitney test on one pair of "
                         f"runs' raw samples (p >= 0.01, what `results compare` did before): {mw_same / pairs:.3f}"}]


def _ssh_setup(tmp):
    sys.path.insert(0, str(REPO / "tests"))
    from sshd import keygen
    key = tmp / "bench_key"
    if not key.exists():  # shared by the deploy and fleet groups
        keygen(key)
    os.environ["EDGESDK_SSH_CONFIG"] = str(tmp / "ssh_config")
    os.environ["EDGESDK_KNOWN_HOSTS"] = str(tmp / "known_hosts")
    os.environ["EDGESDK_RESULTS_DB"] = str(tmp / "results.db")
    return key


def _alias(config: Path, alias, address, port, key):
    import getpass
    with open(config, "a") as f:
        f.write(f"Host {alias}\n  HostName {address}\n  Port {port}\n  User {getpass.getuser()}\n"
                f"  IdentityFile {key}\n  HostKeyAlias {alias}\n\n")


def bench_deploy(tmp, quick, mnist):
    import edgesdk
    from edgesdk.devices.deploy import Device, deploy_one
    from edgesdk.devices.ssh import Session, resolve
    from edgesdk.progress import Progress
    from edgesdk.util import sha256_file
    key = _ssh_setup(tmp)
    from sshd import SSHServer
    server = SSHServer(tmp / "sshd", "bench.local", key).start()
    try:
        _alias(tmp / "ssh_config", "bench.local", "127.0.0.1", server.port, key)
        size_mb = 10 if quick else 50
        blob = tmp / "blob.bin"
        blob.write_bytes(os.urandom(size_mb * 2**20))
        sha = sha256_file(blob)
        remote = tmp / "remote"
        remote.mkdir()
        ours, scp = [], []
        with Session(resolve("bench.local"), accept_new_host_key=True) as session:
            dev = Device(session, sys.executable, 600, Progress(quiet=True))
            for i in range(2 if quick else 5):
                t0 = time.perf_counter()
                dev.push(blob, str(remote / f"ours{i}.bin"), sha)
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                subprocess.run(["scp", "-q", "-P", str(server.port), "-i", str(key), "-o",
                                f"UserKnownHostsFile={tmp / 'known_hosts'}", "-o", "StrictHostKeyChecking=no",
                                str(blob), f"127.0.0.1:{remote / f'scp{i}.bin'}"], check=True, capture_output=True)
                scp.append(time.perf_counter() - t0)
        ratio = median_spread([s_ / o for s_, o in zip(scp, ours)])
        model, data = mnist
        art = edgesdk.convert(str(model), "local", calibration=data["train"], output_dir=tmp / "dep", quiet=True)
        from edgesdk.progress import Progress
        kwargs = dict(remote_python=sys.executable, workdir=str(tmp / "work"), runs=1, warmup=0, threads=1,
                      progress=Progress(quiet=True))
        deploy_one(art, "bench.local", accept_new_host_key=True, **kwargs)
        walls, sent = [], []
        for _ in range(3 if quick else 7):
            t0 = time.perf_counter()
            r = deploy_one(art, "bench.local", **kwargs)
            walls.append(time.perf_counter() - t0)
            sent.append(r.uploaded_bytes)
        runner_alone = []
        from edgesdk.targets import runner_path
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(runner_path()), str(art.path), "--runs", "1", "--warmup", "0"],
                           check=True, capture_output=True)
            runner_alone.append(time.perf_counter() - t0)
        overhead = statistics.median(walls) - statistics.median(runner_alone)
    finally:
        server.stop()
    return [{"name": f"deploy upload throughput / scp throughput ({size_mb} MB to a loopback sshd)",
             "value": ratio["median"], "spread": ratio, "goal": ">= 0.8", "met": ratio["median"] >= 0.8,
             "baseline": f"scp {size_mb / statistics.median(scp):.0f} MB/s"},
            {"name": "bytes sent by a repeated deploy of the same artifact", "value": max(sent), "unit": "B",
             "goal": "0", "met": max(sent) == 0, "baseline": "-"},
            {"name": "repeated deploy wall time beyond the runner's own", "value": round(overhead, 3), "unit": "s",
             "goal": "< 1", "met": overhead < 1,
             "baseline": f"runner alone {statistics.median(runner_alone):.2f} s"}]


def bench_fleet(tmp, quick, mnist):
    import edgesdk
    from edgesdk.devices.deploy import deploy
    key = _ssh_setup(tmp)
    import netns
    why = netns.available()
    if why:
        return [{"name": "fleet scaling", "value": None, "error": f"skipped: {why}", "met": None}]
    n = 4 if quick else 8
    devices = []
    try:
        for i in range(n):
            dev = netns.NamespacedDevice(tmp / f"fleet{i}", f"fleet{i}.local", key)
            devices.append(dev)
            _alias(tmp / "ssh_config", dev.alias, dev.ip, dev.server.port, key)
        model, data = mnist
        art = edgesdk.convert(str(model), "local", calibration=data["train"], output_dir=tmp / "fleet", quiet=True)
        from edgesdk.progress import Progress
        kwargs = dict(remote_python=sys.executable, runs=200, warmup=5, threads=1, progress=Progress(quiet=True))
        for dev in devices:  # keys and uploads first: the figure is about running, not first contact
            deploy(str(art.path), dev.alias, workdir=str(tmp / f"w-{dev.alias}"), accept_new_host_key=True,
                   **kwargs)
        t0 = time.perf_counter()
        deploy(str(art.path), devices[0].alias, workdir=str(tmp / f"w-{devices[0].alias}"), **kwargs)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = deploy(str(art.path), [d.alias for d in devices], parallel=n, **kwargs)
        many = time.perf_counter() - t0
        failed = [r for r in results if isinstance(r, dict)]
    finally:
        for d in devices:
            d.close()
    ratio = many / one
    return [{"name": f"deploy+bench to {n} namespace hosts / to 1 host (wall time)", "value": round(ratio, 3),
             "goal": "<= 1.5", "met": ratio <= 1.5 and not failed,
             "baseline": f"1 host {one:.2f} s; {len(failed)} host(s) failed; all share this machine's {os.cpu_count()} CPUs"}]


def mnist_fixture(tmp):
    from edgesdk import fixtures
    example = fixtures.mnist_example(tmp)
    return example["model"], {"train": str(example["train"]), "test": str(example["heldout"])}


def bench_tune(tmp, quick, mnist):
    """A default `edgesdk tune` of the MNIST CNN on `local`: how many candidates it evaluates, its wall time,
    and what it found, beside what the plain way costs: converting and benchmarking each candidate by hand."""
    import edgesdk
    model, data = mnist
    runs = 20 if quick else 100
    t0 = time.time()
    doc = edgesdk.tune(str(model), "local", calibration=data["train"], output_dir=tmp / "tune", runs=runs, quiet=True)
    wall = time.time() - t0
    evaluated = [r for r in doc["candidates"] if r["status"] not in ("skipped",)]
    measured = [r for r in doc["candidates"] if r.get("p50_ms") is not None]
    t0 = time.time()  # the second run: every passing conversion from the cache
    edgesdk.tune(str(model), "local", calibration=data["train"], output_dir=tmp / "tune", runs=runs, quiet=True)
    again = time.time() - t0
    return [{"name": "candidates a default tune evaluates (MNIST CNN, local)", "value": len(evaluated),
             "goal": "report", "met": None,
             "baseline": f"{len(measured)} measured at {len(doc['threads'])} thread counts, winner {doc['winner']}"},
            {"name": "default tune wall time (MNIST CNN, local)", "value": round(wall, 1), "unit": "s",
             "goal": "report", "met": None, "baseline": f"second run, conversions cached: {again:.1f} s"},
            {"name": "tune: winner p50 / int8 TFLite p50 (MNIST CNN, local)",
             "value": round(min(r["p50_ms"] for r in measured)
                            / next((r["p50_ms"] for r in measured if r["candidate"] == "tflite int8"),
                                   float("nan")), 4),
             "goal": "report", "met": None, "baseline": "the profile's default recipe, measured in the same run"}]


SUITE = {
    "size": (bench_size, True), "pruned_size": (bench_pruned_size, True), "accuracy": (bench_accuracy, False),
    "recovery": (bench_recovery, False), "imagenet": (bench_imagenet, False), "onnx_tflite": (bench_onnx_tflite, False),
    "detector": (bench_detector, False),
    "speed": (bench_speed, False), "overhead": (bench_overhead, False), "startup": (bench_startup, False),
    "fidelity": (bench_fidelity, True), "noise": (bench_noise, True), "deploy": (bench_deploy, True),
    "fleet": (bench_fleet, True), "tune": (bench_tune, True),
}
NOT_YET = []


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", choices=list(SUITE))
    p.add_argument("--output", default=str(OUT))
    a = p.parse_args(argv)
    rows, started = [], time.time()
    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-") as tmp:
        tmp = Path(tmp)
        mnist = None
        for name in a.only or list(SUITE):
            fn, needs_mnist = SUITE[name]
            if needs_mnist and mnist is None:
                mnist = mnist_fixture(tmp)
            t0 = time.time()
            try:
                out = fn(tmp, a.quick, mnist) if needs_mnist else fn(tmp, a.quick)
            except Exception as exc:  # a broken measurement is reported, not hidden
                out = [{"name": name, "error": f"{type(exc).__name__}: {exc}", "met": False}]
            for r in out:
                r["group"], r["seconds"] = name, round(time.time() - t0, 1)
            rows += out
            print(f"[bench] {name}: " + "; ".join(f"{r['name']} = {r.get('value', r.get('error'))}" for r in out),
                  flush=True)
    doc = {"mode": "quick" if a.quick else "full", "machine": {"arch": platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "processor": _cpu_model()}, "seconds": round(time.time() - started, 1),
           "date": time.strftime("%Y-%m-%d", time.gmtime(started)), "commit": _commit(),
           "results": rows, "not_yet_measured": NOT_YET}
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(doc))
    if out.resolve() == OUT.resolve():  # the committed results: the docs' page follows them
        subprocess.run([sys.executable, str(REPO / "docs" / "generate.py")], check=False)
    print(markdown(doc))
    return 0


def _commit() -> str:
    """The commit measured ("+changes" when the tree differs from it): results are committed with the code."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(doc) -> str:
    m = doc["machine"]
    lines = [f"Measured {doc['mode']} on {m['processor']} ({m['arch']}, {m['cpus']} CPUs), Python {m['python']}, "
             f"in {doc['seconds']} s" + (f", {doc['date']} at commit {doc['commit']}." if doc.get("date") else "."), "", "| measure | value | goal | met | baseline |", "|---|---|---|---|---|"]
    for r in doc["results"]:
        value = r.get("value", r.get("error"))
        if "spread" in r:
            value = f"{value} ({r['spread']['min']}..{r['spread']['max']}, n={r['spread']['n']})"
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        lines.append(f"| {r['name']} | {value}{' ' + r['unit'] if r.get('unit') else ''} | {r.get('goal', '')} | "
                     f"{met} | {r.get('baseline', '')} |")
    if doc["not_yet_measured"]:
        lines += ["", "Not measured yet: " + "; ".join(doc["not_yet_measured"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
