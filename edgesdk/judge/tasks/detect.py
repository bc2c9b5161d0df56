"""Detectors: decode the head, keep confident boxes, NMS, and match the artifact's detections to the source's.

Heads recognised by their shapes against the input size (strides 8/16/32, and 64):
  yolov8  (N, 4 + classes, cells)          Ultralytics YOLOv8/v11: cx, cy, w, h in pixels, class scores
  yolov5  (N, anchors * cells, 5 + classes) YOLOv5/v7 (3 anchors) and YOLOX (1): boxes, objectness, class
          scores; YOLOX exported without its decode (grid offsets, log sizes) is decoded here
  boxes + scores  (N, B, 4) and (N, B, classes): SSD-style pairs, corner boxes in any unit
  postprocessed   TFLite_Detection_PostProcess's boxes, classes, scores and count (decoded, suppressed)
Recall and precision at IoU 0.5 (same class) against the source's detections,
pooled over the validation images; the head's box and score channels are also
judged apart by SQNR, so a score channel that collapsed fails even when the
boxes are fine.
"""

from __future__ import annotations

import math

import numpy as np

from . import Head, confidence, regress

EXPECTED = ("Recognised detector heads: YOLOv8/v11 (N, 4+classes, cells), YOLOv5/YOLOX (N, cells, "
            "5+classes), a (N, boxes, 4) + (N, boxes, classes) pair, or TFLite_Detection_PostProcess's four "
            "outputs; YOLO heads need an image input of known size.")
STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64))
IOU_MATCH = 0.5
IOU_NMS = 0.45
MAX_DETECTIONS = 300


def _cells(hw, strides) -> int:
    return sum(math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides)


def _cell_counts(hw) -> dict:
    """cells -> (strides, anchors per cell)"""
    counts = {}
    for strides in STRIDE_SETS:
        for anchors in (1, 3):
            counts.setdefault(anchors * _cells(hw, strides), (strides, anchors))
    return counts


def claim(reference: list, io, class_output=None, asked: bool = False) -> list:
    known_size = io.input_hw is not None and None not in io.input_hw
    counts = _cell_counts(io.input_hw) if known_size else {}
    heads = []
    for i, y in enumerate(reference if known_size else []):
        if y.ndim != 3:
            continue
        a, b = y.shape[1:]
        if b in counts and 5 <= a < b and counts[b][1] == 1:
            heads.append(Head("detect", [i], {"layout": "yolov8", "classes": a - 4}))
        elif a in counts and 6 <= b < a:
            strides, anchors = counts[a]
            heads.append(Head("detect", [i], {"layout": "yolov5", "classes": b - 5, "anchors": anchors,
                                              "strides": list(strides), "raw": anchors == 1 and _looks_raw(y)}))
    if heads:
        return heads
    post = _postprocessed(reference)
    if post:
        return [post]
    # SSD-style: one (N, B, 4) box tensor and one (N, B, C) score tensor with the same B
    boxes = [i for i, y in enumerate(reference) if y.ndim == 3 and y.shape[2] == 4]
    for i in boxes:
        scores = [j for j, y in enumerate(reference) if j != i and y.ndim == 3 and y.shape[1] == reference[i].shape[1]
                  and y.shape[2] >= 1]
        if len(scores) == 1:
            return [Head("detect", [i, scores[0]], {"layout": "boxes+scores", "classes": reference[scores[0]].shape[2]})]
    return []


def _postprocessed(reference: list):
    """TFLite_Detection_PostProcess's four outputs: boxes (N, K, 4), classes (N, K), scores (N, K), count (N,)."""
    if len(reference) != 4:
        return None
    boxes = [i for i, y in enumerate(reference) if y.ndim == 3 and y.shape[2] == 4]
    counts = [i for i, y in enumerate(reference) if y.reshape(len(y), -1).shape[1] == 1]
    pairs = [i for i, y in enumerate(reference) if y.ndim == 2 and i not in counts]
    if len(boxes) != 1 or len(counts) != 1 or len(pairs) != 2:
        return None
    # classes are whole numbers, scores are not
    a, b = pairs
    classes, scores = (a, b) if np.all(reference[a] == np.round(reference[a])) else (b, a)
    return Head("detect", [boxes[0], classes, scores, counts[0]],
                {"layout": "postprocessed", "classes": int(reference[classes].max()) + 1})


def _looks_raw(y: np.ndarray) -> bool:
    """YOLOX without decode: centres are offsets within a cell (about -1..2), not pixels."""
    return float(np.median(np.abs(y[..., :2]))) < 2.0


def _grid(hw, strides):
    xs, ss = [], []
    for s in strides:
        gh, gw = math.ceil(hw[0] / s), math.ceil(hw[1] / s)
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        xs.append(np.stack([xv, yv], -1).reshape(-1, 2))
        ss.append(np.full((gh * gw, 1), s))
    return np.concatenate(xs).astype(np.float64), np.concatenate(ss).astype(np.float64)


def candidates(head: Head, outputs: list, i: int, hw) -> tuple:
    """Image i's raw predictions -> (boxes xyxy, scores, classes) before thresholding."""
    p = head.params
    if p["layout"] == "postprocessed":  # already decoded and suppressed: corner boxes (y, x order), best first
        b, c, sc, k = (outputs[j][i] for j in head.outputs)
        k = int(np.asarray(k).reshape(-1)[0])
        return b[:k].astype(np.float64), sc[:k].astype(np.float64), np.round(c[:k]).astype(np.int64)
    if p["layout"] == "boxes+scores":
        boxes = outputs[head.outputs[0]][i].astype(np.float64)
        scores = outputs[head.outputs[1]][i].astype(np.float64)
        cls = scores.argmax(axis=1)
        return boxes, scores.max(axis=1), cls
    y = outputs[head.outputs[0]][i].astype(np.float64)
    if p["layout"] == "yolov8":
        y = y.T
        box, cls_scores = y[:, :4], y[:, 4:]
    else:
        box, cls_scores = y[:, :4].copy(), y[:, 5:] * y[:, 4:5]
        if p.get("raw"):
            grid, stride = _grid(hw, p["strides"])
            box[:, :2] = (box[:, :2] + grid) * stride
            box[:, 2:4] = np.exp(np.clip(box[:, 2:4], -20, 20)) * stride
    xyxy = np.concatenate([box[:, :2] - box[:, 2:4] / 2, box[:, :2] + box[:, 2:4] / 2], axis=1)
    return xyxy, cls_scores.max(axis=1), cls_scores.argmax(axis=1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = _area(box) + _area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _area(b: np.ndarray):
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def detections(boxes, scores, classes, threshold: float) -> tuple:
    """Confident boxes after class-aware greedy NMS, best first."""
    keep = scores >= threshold
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    order = np.argsort(-scores)
    chosen = []
    while len(order) and len(chosen) < MAX_DETECTIONS:
        k = order[0]
        chosen.append(k)
        rest = order[1:]
        overlap = iou(boxes[k], boxes[rest])
        order = rest[(overlap <= IOU_NMS) | (classes[rest] != classes[k])]
    chosen = np.asarray(chosen, dtype=np.int64)
    return boxes[chosen], scores[chosen], classes[chosen]


def match(ref: tuple, art: tuple) -> int:
    """How many artifact detections find an unmatched source detection of the same class at IoU >= 0.5."""
    rb, _, rc = ref
    ab, _, ac = art
    used = np.zeros(len(rb), bool)
    hits = 0
    for box, cls in zip(ab, ac):
        if not len(rb):
            break
        overlap = np.where((rc == cls) & ~used, iou(box, rb), 0.0)
        j = int(overlap.argmax())
        if overlap[j] >= IOU_MATCH:
            used[j] = True
            hits += 1
    return hits


def channel_slices(head: Head, outputs: list) -> dict:
    """The head's box and score channels, apart."""
    if head.params["layout"] in ("boxes+scores", "postprocessed"):
        scores = head.outputs[2] if head.params["layout"] == "postprocessed" else head.outputs[1]
        return {"boxes": outputs[head.outputs[0]], "scores": outputs[scores]}
    y = outputs[head.outputs[0]]
    if head.params["layout"] == "yolov8":
        return {"boxes": y[:, :4, :], "scores": y[:, 4:, :]}
    return {"boxes": y[..., :4], "scores": y[..., 4:]}


def judge(head: Head, reference: list, artifact: list, labels, t, io) -> tuple:
    hw = io.input_hw
    n = len(reference[head.outputs[0]])
    found = per_ref = per_art = 0
    ref_all, art_all = [], []
    for i in range(n):
        ref = detections(*candidates(head, reference, i, hw), t.score_threshold)
        art = detections(*candidates(head, artifact, i, hw), t.score_threshold)
        ref_all.append(ref)
        art_all.append(art)
        hits = match(ref, art)
        found += hits
        per_ref += len(ref[0])
        per_art += len(art[0])
    out = head.outputs[0]
    figures = {"layout": head.params["layout"], "classes": head.params["classes"], "images": n,
               "score_threshold": t.score_threshold, "iou": IOU_MATCH,
               "source_detections": per_ref, "artifact_detections": per_art, "matched": found,
               "recall": round(found / per_ref, 6) if per_ref else None,
               "precision": round(found / per_art, 6) if per_art else None}
    checks = []
    if per_ref:
        checks.append(confidence.proportion_check("detection recall vs the source", found, per_ref, t.min_recall,
                                                  output=out))
    else:
        checks.append({**confidence.check("detection recall vs the source", float("nan"), (0.0, 1.0),
                                          t.min_recall, True, 0, output=out),
                       "note": f"the source detected nothing at score >= {t.score_threshold:g} on these {n} images: "
                               f"validate on images that contain objects"})
    if per_art:
        checks.append(confidence.proportion_check("detection precision vs the source", found, per_art,
                                                  t.min_precision, output=out))
    if labels is not None:
        figures_map, map_check = _against_ground_truth(ref_all, art_all, labels, hw, t, out)
        figures.update(figures_map)
        checks.append(map_check)
    ref_ch, art_ch = channel_slices(head, reference), channel_slices(head, artifact)
    figures["channels"] = {}
    for part in ("boxes", "scores"):
        figures["channels"][part] = regress.figures(ref_ch[part], art_ch[part])
        checks.append(regress.sqnr_check(f"{part} channels SQNR", ref_ch[part], art_ch[part], t.min_sqnr_db,
                                         output=out))
    return figures, checks


def _ground_truth(labels, hw) -> list:
    """Normalised (class, x1, y1, x2, y2) per image -> (boxes in input pixels, classes)."""
    scale = np.array([hw[1], hw[0], hw[1], hw[0]], np.float64)
    return [(np.asarray(b)[:, 1:5] * scale, np.asarray(b)[:, 0].astype(np.int64)) for b in labels]


def average_precision(dets: list, truth: list, images) -> float:
    """mAP at IoU 0.5 over the classes present in `truth`, for the given images (all-point interpolation)."""
    classes = sorted({int(c) for i in images for c in truth[i][1]})
    if not classes:
        return float("nan")
    aps = []
    for c in classes:
        scored = []  # (score, image slot, box)
        gt = {}
        for slot, i in enumerate(images):
            boxes, cls = truth[i]
            gt[slot] = (boxes[cls == c], np.zeros(int(np.sum(cls == c)), bool))
            db, ds, dc = dets[i]
            scored += [(float(sc), slot, box) for box, sc, k in zip(db, ds, dc) if int(k) == c]
        total = sum(len(g[0]) for g in gt.values())
        scored.sort(key=lambda r: -r[0])
        tp = np.zeros(len(scored))
        for k, (_, slot, box) in enumerate(scored):
            boxes, used = gt[slot]
            if len(boxes):
                overlap = np.where(used, 0.0, iou(box, boxes))
                j = int(overlap.argmax())
                if overlap[j] >= IOU_MATCH:
                    used[j] = True
                    tp[k] = 1
        if not len(scored):
            aps.append(0.0)
            continue
        hits = np.cumsum(tp)
        recall = hits / total
        precision = hits / np.arange(1, len(scored) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
        steps = np.diff(np.r_[0.0, recall])
        aps.append(float(np.sum(steps * precision)))
    return float(np.mean(aps))


def _against_ground_truth(ref_all, art_all, labels, hw, t, out) -> tuple:
    """mAP50 of the source and of the artifact against the labels; the drop gated in points."""
    truth = _ground_truth(labels, hw)
    everyone = list(range(len(truth)))
    ref_map, art_map = average_precision(ref_all, truth, everyone), average_precision(art_all, truth, everyone)
    drop = 100 * (ref_map - art_map)

    def resampled(idx):
        images = list(idx)
        return 100 * (average_precision(ref_all, truth, images) - average_precision(art_all, truth, images))
    interval = confidence.bootstrap(resampled, len(truth))
    figures = {"labelled_boxes": int(sum(len(b) for b, _ in truth)), "reference_map50": round(ref_map, 6),
               "artifact_map50": round(art_map, 6)}
    check = confidence.check("mAP50 drop vs labels (points)", drop, interval, t.max_accuracy_drop, False,
                             len(truth), output=out, unit="points")
    return figures, check
