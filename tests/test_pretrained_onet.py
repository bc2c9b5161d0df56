"""A real pretrained model: MTCNN's O-Net (mtcnn 1.0.0 weights) on scikit-image's real faces and non-faces."""

import pytest

import edgesdk
from edgesdk import ConvertOptions, Thresholds, TrainingOptions

from test_convert_keras import assert_full_int8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split(lfw_onet_inputs):
    x, y = lfw_onet_inputs
    return (x[0::2], y[0::2]), (x[1::2], y[1::2])  # 50 + 50 of each class on either side


@pytest.mark.parametrize("target, io", [("rpi4", "int8"), ("coral-devboard", "uint8")])
def test_onet_full_int8_keeps_face_accuracy(onet, split, target, io, tmp_path):
    calib, val = split
    # 100 labelled samples with no disagreement bound the drop at about 2.6 points, not 1
    options = ConvertOptions(gate=Thresholds(max_accuracy_drop=3))
    art = edgesdk.convert(onet, target=target, calibration=calib[0], validation=val, output_dir=tmp_path,
                          quiet=True, options=options)
    assert_full_int8(art.path, io_dtype=io)
    v = art.validation
    assert v["class_output"] == 2  # the softmax face/non-face head, found among bbox and landmark heads
    assert v["reference_accuracy"] == 1.0 and v["artifact_accuracy"] >= 0.99
    assert [o["shape"] for o in v["outputs"]] == [[4], [10], [2]]
    # regression heads survive quantization too, not just the argmax
    assert all(o["sqnr_db"] > 15 for o in v["outputs"]), v["outputs"]
    # ... and are gated: the classifier head by its accuracy, the two regression heads by the SQNR floor
    gated = {c["output"]: c for c in v["checks"]}
    assert gated[2]["check"] == "accuracy drop (points)" and gated[2]["verdict"] == "pass"
    assert gated[0]["check"].startswith("SQNR of output") and gated[0]["verdict"] == "pass"
    assert gated[1]["check"].startswith("SQNR of output") and gated[1]["verdict"] == "pass"
    assert sorted(o["shape"] for o in art.manifest["outputs"]) == [[1, 2], [1, 4], [1, 10]]
    assert art.manifest["source"]["param_count"] == onet.count_params()


def test_onet_pruned_one_shot_reports_measured_sparsity(onet, split, tmp_path):
    calib, val = split
    kwargs = dict(target="rpi4", calibration=calib[0], validation=val, output_dir=tmp_path, quiet=True)
    pruned = TrainingOptions(prune=0.3)
    # one-shot pruning keeps face/non-face but costs the box regressor: the floor on that output says so
    with pytest.raises(edgesdk.ValidationFailed) as e:
        edgesdk.convert(onet, **kwargs, options=ConvertOptions(training=pruned, gate=Thresholds(max_accuracy_drop=5)))
    failed = [c for c in e.value.figures["checks"] if c["verdict"] == "fail"]
    assert [c["output"] for c in failed] == [0] and failed[0]["value"] < 12
    assert "SQNR of output 'fc6-1" in str(e.value) and list(tmp_path.iterdir()) == []
    options = ConvertOptions(training=pruned, gate=Thresholds(max_accuracy_drop=5, min_sqnr_db=5))
    art = edgesdk.convert(onet, **kwargs, options=options)
    s = art.manifest["sparsity"]
    assert s["method"] == "one-shot magnitude" and s["fine_tuned"] is False
    assert 0.29 <= s["artifact"] <= 0.35
    assert any("one-shot" in w for w in art.manifest["warnings"])
