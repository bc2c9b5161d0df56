"""A real YOLOv8n in int8, its stem the part int8 holds worst: for the Jetson, TensorRT's symmetric int8 with
Q/DQ on each layer's inputs and the stem the recovery ladder keeps in fp16; for the Coral, which computes
nothing in float, the stem run on the host. Judged here by detection recall and precision against the float
model, computed apart from the gate on the artifact as edgesdk.load runs it."""

import numpy as np
import pytest

import edgesdk
from edgesdk import ConvertOptions, InputOptions, fixtures
from edgesdk.judge.tasks import Head, detect

pytestmark = pytest.mark.slow


def _matched(ref, out) -> tuple:
    """(float detections matched, float detections, artifact detections): every detection scoring >= 0.25,
    matched at IoU >= 0.5, image by image."""
    head = Head("detect", [0], {"layout": "yolov8", "classes": 18})
    found = made = wanted = 0
    for i in range(len(ref)):
        r = detect.detections(*detect.candidates(head, [ref], i, (320, 320)), 0.25)
        a = detect.detections(*detect.candidates(head, [out], i, (320, 320)), 0.25)
        found, wanted, made = found + detect.match(r, a), wanted + len(r[0]), made + len(a[0])
    return found, wanted, made


def test_yolov8n_for_the_jetson_is_int8_with_its_stem_in_fp16(tmp_path):
    import onnxruntime as ort
    x = fixtures.face_mosaics()
    model = fixtures.fetch("yolov8n_faces")
    art = edgesdk.convert(str(model), target="jetson-orin-nano", calibration=x, output_dir=tmp_path, quiet=True,
                          options=ConvertOptions(inputs=InputOptions(input_shape="1,3,320,320")))
    assert art.manifest["recipe"]["quantization"] == "int8" and art.format == "onnx"
    rungs = art.manifest["recovery"]["rungs"]
    assert rungs[0]["verdict"] == "fail"  # plain int8 misses (measured: recall 0.84, precision 0.89)
    assert "the stem: the first 6 of 64 weight layers" in art.manifest["recovery"]["applied"]["change"]
    # the task's own metric, computed here
    source = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = np.concatenate([source.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    out = next(iter(edgesdk.load(art.path).run(x).values()))
    found, wanted, made = _matched(ref, out)
    assert wanted > 500 and found / wanted >= 0.95 and found / made >= 0.9, (found, wanted, made)
    # TensorRT runs the stem in fp16: no Q/DQ feeds its convolutions
    import onnx
    graph = onnx.load(str(art.path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    stem_convs = [n for n in graph.node if n.op_type == "Conv" and n.name.split("/")[1] in ("model.0", "model.1")]
    assert stem_convs and all(producer.get(n.input[0]) != "DequantizeLinear" for n in stem_convs)


def test_yolov8n_for_the_coral_runs_its_stem_on_the_host(tmp_path):
    """The Edge TPU computes nothing in float, so the ladder's float stem is not for it: int8 made whole misses
    (measured: recall 0.83, precision 0.89, scores 8.4 dB). The stem is cut off instead and run on the host in
    float, the rest full int8 for the Edge TPU, its head's post-processing on the host too; edgesdk.load runs
    the three parts from the source's images."""
    import onnxruntime as ort
    x = fixtures.face_mosaics()
    model = fixtures.fetch("yolov8n_faces")
    out = tmp_path / "out"
    art = edgesdk.convert(str(model), target="coral-usb", calibration=x, output_dir=out, quiet=True,
                          options=ConvertOptions(inputs=InputOptions(input_shape="1,3,320,320")))
    m = art.manifest
    assert m["recipe"]["quantization"] == "int8" and art.format == "tflite" and not m["quantization"]["float_ops"]
    assert [a["quantization"] for a in m["timing"]] == ["int8", "int8"]  # made whole first, then with the stem
    stem = m["host_stem"]
    assert stem["what"].startswith("the stem: the first 6 of 64 weight layers") and len(stem["cut"]) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([art.path.name, art.path.name + ".json", stem["file"],
                                                            m["quantization"]["detector_tail"]["file"]])
    assert m["source"]["path"] == str(model) and m["interface"]["stem"]["inputs"] == ["images"]
    # the task's own metric, computed here on what edgesdk.load runs (the stem, the artifact, the tail)
    source = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = np.concatenate([source.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    loaded = edgesdk.load(art.path)
    assert loaded.inputs == ["images"] and loaded.outputs == ["output0"]
    found, wanted, made = _matched(ref, loaded.run(x)["output0"])
    assert wanted > 500 and found / wanted >= 0.95 and found / made >= 0.93, (found, wanted, made)
