"""Dense maps (segmentation, text and mask detectors): per-pixel agreement and IoU with the source's map.

An output is a map when it is 4-D and its spatial size is the input's divided
by 1, 2, 4 or 8. Several channels: the argmax per pixel, mean IoU over the
classes the source uses. One channel: thresholded at 0.5 (probabilities) or 0
(logits), IoU of the foreground. The gate is on the mean over images of each
image's IoU, with a bootstrap interval over images.
"""

from __future__ import annotations

import numpy as np

from . import Head, confidence

EXPECTED = ("A segmentation or text/mask-detection map is 4-D, (N, C, H, W) or (N, H, W, C), with H and W "
            "the input's divided by 1, 2, 4 or 8.")
FACTORS = (1, 2, 4, 8)


def _channel_axis(shape, hw) -> int | None:
    for f in FACTORS:
        want = (round(hw[0] / f), round(hw[1] / f))
        if tuple(shape[2:4]) == want:
            return 1
        if tuple(shape[1:3]) == want:
            return 3
    return None


def claim(reference: list, io, class_output=None, asked: bool = False) -> list:
    if io.input_hw is None or None in io.input_hw:
        return []
    heads = []
    for i, y in enumerate(reference):
        if y.ndim == 4 and min(io.input_hw) >= 8:
            axis = _channel_axis(y.shape, io.input_hw)
            if axis is not None:
                heads.append(Head("segment", [i], {"channel_axis": axis}))
    return heads


def labels_of(y: np.ndarray, axis: int, threshold: float | None) -> np.ndarray:
    y = np.moveaxis(y, axis, -1)
    if y.shape[-1] > 1:
        return y.argmax(axis=-1)
    return (y[..., 0] >= threshold).astype(np.int64)


def judge(head: Head, reference: list, artifact: list, labels, t, io=None) -> tuple:
    k, axis = head.outputs[0], head.params["channel_axis"]
    ref_y = reference[k]
    single = ref_y.shape[axis] == 1
    threshold = None
    if single:
        threshold = 0.5 if float(ref_y.min()) >= 0 and float(ref_y.max()) <= 1 else 0.0
    ref_l, art_l = labels_of(ref_y, axis, threshold), labels_of(artifact[k], axis, threshold)
    n = len(ref_l)
    classes = [1] if single else sorted(int(c) for c in np.unique(ref_l))
    ious = np.empty(n)
    for i in range(n):
        per_class = []
        for c in classes:
            r, a = ref_l[i] == c, art_l[i] == c
            union = np.sum(r | a)
            if union:
                per_class.append(np.sum(r & a) / union)
        ious[i] = np.mean(per_class) if per_class else 1.0  # nothing anywhere on both: they agree
    agreement = float(np.mean(ref_l == art_l))
    figures = {"output": k, "channels": int(ref_y.shape[axis]), "threshold": threshold,
               "pixel_agreement": round(agreement, 6), "mean_iou": round(float(ious.mean()), 6),
               "images": n, "foreground_share": round(float(np.mean(ref_l > 0)), 6)}
    check = confidence.check("mean IoU with the source's map", float(ious.mean()),
                             confidence.bootstrap(lambda idx: float(ious[idx].mean()), n), t.min_iou, True, n,
                             output=k)
    return figures, [check]
