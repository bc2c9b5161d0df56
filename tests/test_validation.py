"""The gate's own parts: output matching, intervals and verdicts, task recognition, data it is fed."""

import numpy as np
import pytest

from edgesdk.errors import DataError, OptionError, ValidationFailed
from edgesdk.judge.tasks import ModelIO, Thresholds, confidence, pick
from edgesdk.judge.validation import gate, judge, match_outputs
from edgesdk.sources.data import Dataset, fit_to_input, representative

rng = np.random.default_rng(0)


def test_outputs_are_matched_by_name_not_by_suffix_order():
    # a source listing ':2, :1, :0' (as tf2onnx writes them), the artifact in another order
    names = ["Call:2", "Call:1", "Call:0"]
    ref = [rng.normal(size=(8, 4, 3)) for _ in names]
    art_names = ["Call:0", "Call:2", "Call:1"]
    art = [ref[2] + 0.01, ref[0] + 0.01, ref[1] + 0.01]
    matched, how = match_outputs(ref, names, art, art_names)
    assert all(np.allclose(m, r + 0.01) for m, r in zip(matched, ref))
    assert [h["artifact_name"] for h in how] == names and {h["matched_by"] for h in how} == {"name"}


def test_renamed_outputs_of_one_shape_are_paired_by_similarity_and_unique_shapes_by_shape():
    ref = [rng.normal(size=(16, 10)), rng.normal(size=(16, 10)), rng.normal(size=(16, 4))]
    art = [ref[2] + 0.1, ref[1] + 0.1, ref[0] + 0.1]
    matched, how = match_outputs(ref, ["a", "b", "box"], art, ["Identity", "Identity_1", "Identity_2"])
    assert all(np.allclose(m, r + 0.1) for m, r in zip(matched, ref))
    assert [h["matched_by"] for h in how] == ["similarity", "similarity", "shape"]
    with pytest.raises(ValidationFailed, match="lost or added outputs"):
        match_outputs(ref, ["a", "b", "box"], art[:2], ["x", "y"])


def test_verdicts_follow_the_interval_not_the_point():
    # 25 of 27 agree (92.6 %): cannot tell against 95 %; the same rate on 300 samples fails for certain
    few = confidence.proportion_check("agreement", 25, 27, 0.95)
    assert few["verdict"] == "inconclusive" and few["interval"][0] < 0.95 < few["interval"][1]
    assert 100 < few["samples_needed"] < 1000
    assert confidence.proportion_check("agreement", 278, 300, 0.95)["verdict"] == "fail"
    # 97.7 % of 300 real photos is shown to be above 95 %
    assert confidence.proportion_check("agreement", 293, 300, 0.95)["verdict"] == "pass"
    # 0 of 5 wrong proves little; 0 of 400 proves the 1 % budget
    lo, hi = confidence.wilson(0, 5)
    assert lo == 0 and hi > 0.3
    assert confidence.wilson(0, 400)[1] < 0.01


def test_paired_accuracy_drop_interval():
    # 1,000 digits: the artifact loses 5 the source got right and gains 3: drop 0.2 points, shown <= 1
    low, high = confidence.paired_difference(925, 5, 3, 67)
    assert low < 0.002 < high < 0.01
    # the same share on 100 samples cannot show it
    low, high = confidence.paired_difference(93, 0, 0, 7)
    assert high > 0.02


def _io(names, hw=None):
    return ModelIO(output_names=names, input_hw=hw)


def test_auto_task_recognises_heads_by_shape_against_the_input():
    hw = (416, 416)  # 3,549 cells at strides 8/16/32
    v8 = np.zeros((2, 5, 3549), np.float32)
    assert pick("auto", [v8], _io(["out"], hw))[0].params["layout"] == "yolov8"
    raw = rng.uniform(-0.5, 1.5, size=(2, 3549, 6)).astype(np.float32)  # YOLOX without decode: cell offsets
    head = pick("auto", [raw], _io(["out"], hw))[0]
    assert head.params == {"layout": "yolov5", "classes": 1, "anchors": 1, "strides": [8, 16, 32], "raw": True}
    v5 = np.zeros((2, 3 * 3549, 85), np.float32)
    assert pick("auto", [v5], _io(["out"], hw))[0].params["anchors"] == 3
    # an audio posteriorgram (1, 172, 88) is not a detector (172 is no cell count of the input): its sigmoid
    # decisions per frame are multi-label
    assert [h.task for h in pick("auto", [np.zeros((2, 172, 88))], _io(["note"], None))] == ["multilabel"]
    seg = np.zeros((2, 1, 416, 416), np.float32)
    assert pick("auto", [seg], _io(["map"], hw))[0].task == "segment"
    logits = rng.normal(0, 3, size=(8, 10)).astype(np.float32)
    assert pick("auto", [logits], _io(["logits"]))[0].task == "classify"
    # a lone output of independent 0..1 decisions is multi-label, not a guessed classifier: CREPE's 360
    # sigmoid pitch bins, a bump of a few bins over 0.5 per frame (top-1 flips between neighbours under int8)
    bins = np.arange(360)
    bump = 0.9 * np.exp(-0.5 * ((bins - rng.integers(40, 320, size=(8, 1))) / 1.5) ** 2)
    assert pick("auto", [bump.astype(np.float32)], _io(["pitch"]))[0].task == "multilabel"
    with pytest.raises(OptionError, match="--task detect: no output of this model looks like a detect output"):
        pick("detect", [np.zeros((2, 10))], _io(["logits"]))


def test_detector_scores_collapse_is_refused_even_when_boxes_are_fine():
    hw = (416, 416)
    cells = 3549
    ref = np.zeros((3, 5, cells), np.float32)
    ref[:, 0:2] = rng.uniform(20, 400, size=(3, 2, cells))
    ref[:, 2:4] = 30
    ref[:, 4] = rng.uniform(0, 0.2, size=(3, cells))
    ref[:, 4, :10] = 0.9  # ten confident objects per image
    art = ref.copy()
    art[:, 4] = 0.0  # int8 with one scale for pixels and scores: every score rounds to 0
    figures = judge([ref], [art], io=_io(["output0"], hw))
    head = figures["heads"][0]
    assert head["source_detections"] > 0 and head["matched"] == 0
    failed = {c["check"] for c in figures["checks"] if c["verdict"] == "fail"}
    assert {"detection recall vs the source", "scores channels SQNR"} <= failed
    assert "boxes channels SQNR" not in failed  # the boxes are untouched; the scores alone fail
    assert gate(figures)["verdict"] == "fail"


def test_outputs_no_task_covers_meet_the_sqnr_floor():
    ref = [rng.normal(size=(30, 172, 88)), rng.normal(size=(30, 172, 264))]
    noisy = [ref[0] + 0.01 * rng.normal(size=ref[0].shape), ref[1] + 0.5 * rng.normal(size=ref[1].shape)]
    figures = judge(ref, noisy, io=_io(["note", "contour"]))
    verdicts = {c["output"]: c["verdict"] for c in figures["checks"]}
    assert figures["task"] == "regress" and verdicts == {0: "pass", 1: "fail"}
    assert "SQNR of output 'contour'" in gate(figures)["reasons"][0]


def test_a_users_metric_judges_too():
    ref = [rng.normal(size=(20, 4))]

    def within(reference, artifact, labels):
        err = float(np.max(np.abs(reference[0] - artifact[0])))
        return {"passed": err < 0.1, "max_error": err}
    ok = judge(ref, [ref[0] + 0.01], io=_io(["y"]), task="regress", metric=within)
    assert gate(ok)["passed"] and ok["checks"][-1]["figures"]["max_error"] == pytest.approx(0.01)
    bad = judge(ref, [ref[0] + 1.0], io=_io(["y"]), task="regress", metric=within)
    assert gate(bad)["verdict"] == "fail"
    with pytest.raises(OptionError, match="must return a dict with a boolean 'passed'"):
        judge(ref, ref, io=_io(["y"]), metric=lambda r, a, y: 0.5)


def test_labels_make_the_drop_the_verdict_and_agreement_a_report():
    n = 2000
    y = rng.integers(0, 10, n)
    ref = np.eye(10)[y] + 0.01
    art = ref.copy()
    art[:40] = np.roll(art[:40], 1, axis=1)  # 2 % of predictions move
    with_labels = judge([ref], [art], y, io=_io(["p"]), thresholds=Thresholds(max_accuracy_drop=5))
    assert [c["check"] for c in with_labels["checks"]] == ["accuracy drop (points)"]
    assert with_labels["top1_agreement"] == 0.98 and gate(with_labels)["passed"]
    without = judge([ref], [art], None, io=_io(["p"]), thresholds=Thresholds(min_agreement=0.99))
    assert [c["check"] for c in without["checks"]] == ["top-1 agreement with the source"]
    assert gate(without)["verdict"] == "fail"


def test_calibration_is_drawn_across_classes():
    # an image folder arrives class by class: a prefix of 300 would be class 0 only
    y = np.repeat(np.arange(10), 100)
    ds = Dataset(np.arange(1000, dtype=np.float32)[:, None], y, "folder")
    sub, how = representative(ds, 300)
    assert len(sub) == 300 and sorted(np.bincount(sub.y).tolist()) == [30] * 10
    assert "stratified by label across 10 classes" in how
    again, _ = representative(ds, 300)
    assert np.array_equal(sub.x, again.x)  # seeded: the same data gives the same calibration set
    unlabelled, how = representative(Dataset(ds.x), 300)
    assert len(unlabelled) == 300 and unlabelled.x.max() > 900 and "seeded shuffle" in how


def test_integer_inputs_stay_integer():
    notes = []
    x = fit_to_input(np.array([[1, 2, 256]], np.int64), (None, 3), "bytes.npz", notes, "int32")
    assert x.dtype == np.int32 and x.tolist() == [[1, 2, 256]]
    with pytest.raises(DataError, match="holds fractional float64 values"):
        fit_to_input(np.array([[0.5, 1, 2]]), (None, 3), "bytes.npz", notes, "int32")
    with pytest.raises(DataError, match="do not fit the model's int8 input"):
        fit_to_input(np.array([[1000, 1, 2]]), (None, 3), "bytes.npz", notes, "int8")


def test_average_precision_at_iou_half():
    from edgesdk.judge.tasks.detect import average_precision
    box = lambda x: np.array([x, 0, x + 10, 10], np.float64)  # noqa: E731
    truth = [(np.stack([box(0), box(20)]), np.array([0, 0])), (np.stack([box(50)]), np.array([0]))]
    dets = [(np.stack([box(0), box(100), box(21)]), np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0])),
            (np.stack([box(50)]), np.array([0.6]), np.array([0]))]
    # ranked: hit, miss, hit, hit of 3 boxes -> precision envelope 1, .75, .75 at recall 1/3, 2/3, 1
    assert average_precision(dets, truth, [0, 1]) == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert average_precision(dets, truth, [1]) == 1.0


def test_detection_labels_from_yolo_files_or_coco_json(tmp_path):
    import json
    from PIL import Image
    from edgesdk.sources.data import load_data
    for name in ("a", "b"):
        Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("2 0.5 0.5 0.25 0.5\n")  # b has no file: no objects
    ds = load_data(tmp_path, input_shape=(None, 3, 16, 16), layout="NCHW")
    assert ds.x.shape == (2, 3, 16, 16) and ds.x[0, 0, 0, 0] == pytest.approx(200 / 255)  # channels first
    assert ds.boxes[0].tolist() == [[2, 0.375, 0.25, 0.625, 0.75]] and ds.boxes[1].shape == (0, 5)
    assert ds.labels is ds.boxes and "1 labelled boxes" in ds.notes[-1]
    (tmp_path / "a.txt").unlink()
    coco = {"images": [{"id": 7, "file_name": "a.png", "width": 64, "height": 32}],
            "categories": [{"id": 1}, {"id": 3}, {"id": 9}],
            "annotations": [{"image_id": 7, "category_id": 9, "bbox": [24, 8, 16, 16]}]}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    ds = load_data(tmp_path, input_shape=(None, 16, 16, 3))
    assert ds.x.shape == (2, 16, 16, 3) and ds.boxes[0].tolist() == [[2, 0.375, 0.25, 0.625, 0.75]]
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DataError, match="not a COCO annotation file"):
        load_data(tmp_path, input_shape=(None, 16, 16, 3))


def test_ssd_style_boxes_and_scores_pair():
    boxes = np.tile(np.array([[10, 10, 50, 50], [60, 60, 90, 90], [0, 0, 5, 5]], np.float32), (4, 1, 1))
    scores = np.zeros((4, 3, 2), np.float32)
    scores[:, 0, 1] = 0.9
    scores[:, 1, 0] = 0.8
    head = pick("auto", [boxes, scores], _io(["boxes", "scores"], (100, 100)))[0]
    assert head.params == {"layout": "boxes+scores", "classes": 2} and head.outputs == [0, 1]
    art_scores = scores.copy()
    art_scores[:, 1, 0] = 0.1  # the artifact loses the second object
    figures = judge([boxes, scores], [boxes, art_scores], io=_io(["boxes", "scores"], (100, 100)))
    assert figures["heads"][0]["recall"] == 0.5 and figures["heads"][0]["precision"] == 1.0


def test_tflite_detection_postprocess_outputs():
    k = 10
    boxes = np.zeros((3, k, 4), np.float32)
    boxes[:, :3] = [[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.4, 0.9]]
    classes = np.zeros((3, k), np.float32)
    classes[:, 1] = 7
    scores = np.zeros((3, k), np.float32)
    scores[:, :3] = [0.9, 0.8, 0.6]
    count = np.full((3,), 3, np.float32)
    ref = [boxes, classes, scores, count]
    head = pick("auto", ref, _io(["boxes", "classes", "scores", "count"]))[0]
    assert head.params == {"layout": "postprocessed", "classes": 8} and head.outputs == [0, 1, 2, 3]
    art_classes = classes.copy()
    art_classes[:, 1] = 3  # the artifact calls the second object something else
    figures = judge(ref, [boxes, art_classes, scores, count], io=_io(["boxes", "classes", "scores", "count"]))
    h = figures["heads"][0]
    assert h["source_detections"] == 9 and h["matched"] == 6 and h["recall"] == pytest.approx(2 / 3)


def test_an_accuracy_budget_without_labels_becomes_the_agreement_it_allows():
    """--max-accuracy-drop 100 on unlabelled data: any loss is fine, so the agreement asked is none (it was
    judged at --min-agreement 0.95 and refused); 3 points allow 97 %; a stricter --min-agreement stays."""
    from edgesdk.conversion.pipeline import _drop_as_agreement
    from edgesdk.conversion.recipe import make_recipe
    from edgesdk.profiles import load_profile
    from edgesdk.progress import Progress
    recipe = make_recipe(load_profile("rpi4"))
    progress = Progress(quiet=True)
    assert _drop_as_agreement(recipe, 100, None, progress).thresholds().min_agreement == 0.0
    assert _drop_as_agreement(recipe, 3, None, progress).gate.min_agreement == pytest.approx(0.97)
    assert _drop_as_agreement(recipe, 3, 0.9, progress).gate.min_agreement == pytest.approx(0.9)
    assert "needs labelled validation data" in progress.warnings[0] and "97.00%" in progress.warnings[1]
    # and the classifier check it feeds judges by that threshold
    ref = np.eye(4)[rng.integers(0, 4, 200)]
    art = ref.copy()
    art[:40] = np.roll(art[:40], 1, axis=1)  # 20 % of the answers changed
    io = ModelIO(output_names=["p"])
    assert not gate(judge([ref], [art], io=io))["passed"]
    assert gate(judge([ref], [art], io=io, thresholds=Thresholds(min_agreement=0.0)))["passed"]
