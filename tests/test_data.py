"""Calibration/validation data: every accepted form, preprocessing, and the errors for data that does not fit."""

import numpy as np
import pytest
from PIL import Image

from edgesdk import DataError
from edgesdk.sources.data import Preprocess, load_data, split_holdout

NHWC = (None, 28, 28, 1)


def test_npz_with_labels_and_channel_axis_added(tmp_path, mnist):
    f = tmp_path / "d.npz"
    np.savez(f, x=mnist["x_test"][:50, ..., 0], y=mnist["y_test"][:50])
    ds = load_data(f, input_shape=NHWC)
    assert ds.x.shape == (50, 28, 28, 1) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.y, mnist["y_test"][:50])
    assert any("channel axis" in n for n in ds.notes)


def test_npy_without_labels(tmp_path, mnist):
    f = tmp_path / "d.npy"
    np.save(f, mnist["x_test"][:20])
    ds = load_data(f, input_shape=NHWC)
    assert ds.y is None and len(ds) == 20


def test_one_hot_labels_become_indices():
    x = np.zeros((3, 28, 28, 1), np.float32)
    ds = load_data((x, np.eye(10)[[3, 1, 4]]), input_shape=NHWC)
    assert ds.y.tolist() == [3, 1, 4]


def test_image_folder_with_class_subfolders_resized_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_data(tmp_path, input_shape=(None, 16, 16, 3), preprocess=Preprocess(mean=(0.5,), std=(0.25,)))
    assert ds.x.shape == (6, 16, 16, 3)
    assert ds.class_names == ["cat", "dog"] and ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    # (pixel/255 - 0.5) / 0.25 lies in [-2, 2]
    assert ds.x.min() >= -2.0 and ds.x.max() <= 2.0 and ds.x.min() < -1.0


def test_bgr_channel_order_reverses_channels(tmp_path):
    Image.fromarray(np.full((8, 8, 3), [255, 0, 0], np.uint8)).save(tmp_path / "red.png")
    rgb = load_data(tmp_path, input_shape=(None, 8, 8, 3))
    bgr = load_data(tmp_path, input_shape=(None, 8, 8, 3), preprocess=Preprocess(channel_order="bgr"))
    assert rgb.x[0, 0, 0].tolist() == [1.0, 0.0, 0.0] and bgr.x[0, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_scale_and_offset_for_arrays():
    x = np.full((2, 28, 28, 1), 255.0, np.float32)
    ds = load_data(x, input_shape=NHWC, preprocess=Preprocess(scale=1 / 128, offset=-127.5 / 128))
    assert np.allclose(ds.x, (255 - 127.5) / 128)


def test_holdout_split_is_disjoint_and_deterministic(mnist):
    ds = load_data((mnist["x_test"], mnist["y_test"]), input_shape=NHWC)
    calib, val = split_holdout(ds)
    assert len(val) == 200 and len(calib) == 800
    calib2, val2 = split_holdout(ds)
    np.testing.assert_array_equal(val.x, val2.x)


@pytest.mark.parametrize("x, needle", [
    (np.zeros((0, 28, 28, 1), np.float32), "holds no samples"),
    (np.zeros((5, 32, 32, 1), np.float32), "samples have shape (5, 32, 32, 1), but the model takes (N, 28, 28, 1)"),
    (np.array([["a"]] * 3, dtype=object), "expected a numeric array"),
    (np.full((2, 28, 28, 1), np.nan, np.float32), "NaN or infinite"),
])
def test_data_that_does_not_fit(x, needle):
    with pytest.raises(DataError) as e:
        load_data(x, input_shape=NHWC)
    assert needle in str(e.value)


def test_nchw_data_for_an_nhwc_model_is_recognised():
    with pytest.raises(DataError, match="looks channels-first"):
        load_data(np.zeros((4, 3, 32, 32), np.float32), input_shape=(None, 32, 32, 3))


def test_labels_of_wrong_length(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=np.zeros((4, 28, 28, 1)), y=np.arange(3))
    with pytest.raises(DataError, match="4 samples in 'x' but 3 labels"):
        load_data(f, input_shape=NHWC)


def test_npz_without_x_and_pickled_data_and_missing_files(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, images=np.zeros((2, 2)))
    with pytest.raises(DataError, match="no array named 'x' \\(found: images\\)"):
        load_data(f)
    g = tmp_path / "p.npy"
    np.save(g, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="does not unpickle"):
        load_data(g)
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "missing.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported calibration data file type '.csv'"):
        load_data(tmp_path / "d.csv", what="calibration data")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_data(empty, input_shape=(None, 8, 8, 3))


def test_mean_and_std_per_channel_fit_the_channel_axis():
    nhwc = np.ones((2, 4, 4, 3), np.float32)
    out = load_data(nhwc, input_shape=(None, 4, 4, 3), preprocess=Preprocess(mean=(0.0, 1.0, 2.0)))
    assert out.x[0, 0, 0].tolist() == [1.0, 0.0, -1.0]
    nchw = np.ones((2, 3, 4, 4), np.float32)
    out = load_data(nchw, input_shape=(None, 3, 4, 4), preprocess=Preprocess(mean=(0.0, 1.0, 2.0)))
    assert out.x[0, :, 0, 0].tolist() == [1.0, 0.0, -1.0]
    with pytest.raises(DataError, match="--mean has 3 values, but the data's channel axis has 1"):
        load_data(np.ones((2, 28, 28, 1), np.float32), input_shape=NHWC, preprocess=Preprocess(mean=(0.5,) * 3))
