"""A real pretrained model: MTCNN's O-Net (mtcnn 1.0.0 weights) on scikit-image's real faces and non-faces."""

import pytest

import edgesdk

from test_convert_keras import assert_full_int8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split(lfw_onet_inputs):
    x, y = lfw_onet_inputs
    return (x[0::2], y[0::2]), (x[1::2], y[1::2])  # 50 + 50 of each class on either side


@pytest.mark.parametrize("target, io", [("rpi4", "int8"), ("coral-devboard", "uint8")])
def test_onet_full_int8_keeps_face_accuracy(onet, split, target, io, tmp_path):
    calib, val = split
    art = edgesdk.convert(onet, target=target, calibration=calib[0], validation=val, output_dir=tmp_path,
                          quiet=True)
    assert_full_int8(art.path, io_dtype=io)
    v = art.validation
    assert v["class_output"] == 2  # the softmax face/non-face head, found among bbox and landmark heads
    assert v["reference_accuracy"] == 1.0 and v["artifact_accuracy"] >= 0.99
    assert [o["shape"] for o in v["outputs"]] == [[4], [10], [2]]
    # regression heads survive quantization too, not just the argmax
    assert all(o["sqnr_db"] > 15 for o in v["outputs"]), v["outputs"]
    assert sorted(o["shape"] for o in art.manifest["outputs"]) == [[1, 2], [1, 4], [1, 10]]
    assert art.manifest["source"]["param_count"] == onet.count_params()


def test_onet_pruned_one_shot_reports_measured_sparsity(onet, split, tmp_path):
    calib, val = split
    art = edgesdk.convert(onet, target="rpi4", calibration=calib[0], validation=val, prune=0.3,
                          output_dir=tmp_path, quiet=True, max_accuracy_drop=5)
    s = art.manifest["sparsity"]
    assert s["method"] == "one-shot magnitude" and s["fine_tuned"] is False
    assert 0.29 <= s["artifact"] <= 0.35
    assert any("one-shot" in w for w in art.manifest["warnings"])
