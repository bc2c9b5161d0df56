"""ONNX Runtime's histogram calibrators (percentile, entropy), each tensor's range found before any binning.

quantize_static feeds a histogram calibrator its samples in chunks (CalibStridedMinMax), which bounds the
tensors it holds, and merges the chunks' histograms: a chunk whose values reach past the bins made so far
re-bins them, so the ranges depend on where the samples were cut, and the cut on the memory free at the time
(Magika's int16 rung: 0.961 top-1 agreement in chunks of a few samples, where chunks of ten passed). Here a
first pass, one sample at a time, records each tensor's extremes, and the collector starts from empty
histograms over those ranges: every chunk then bins into the same edges, and the histograms are the ones one
pass over all the samples at once would make, whatever the chunk.

The percentile calibrator bins |x| into the edges it has by numpy's general path, which sorts the values
(0.4 s a sample on YOLOv8n, 25 s of a 64-sample rung); primed edges are uniform, and numpy's path for uniform
bins finds the same counts without the sort.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import numpy as np


@contextmanager
def ranges_found_first(reader):
    """Within it, a histogram calibrator that quantize_static creates gets its ranges from `reader` (an ONNX
    Runtime CalibrationDataReader with rewind) before it collects; other calibrators are left as they are."""
    from importlib import import_module
    from onnxruntime.quantization.calibrate import HistogramCalibrater
    quantize = import_module("onnxruntime.quantization.quantize")  # the module: the package's `quantize` is a function
    made = quantize.create_calibrator

    def create(*args, **kwargs):
        calibrator = made(*args, **kwargs)
        if isinstance(calibrator, HistogramCalibrater):
            _prime(calibrator, reader)
        return calibrator
    quantize.create_calibrator = create  # quantize_static looks the name up in its own module when called
    try:
        yield
    finally:
        quantize.create_calibrator = made


def _prime(calibrator, reader) -> None:
    """The calibrator's collector, made as its collect_data would make it, with an empty histogram over each
    calibrated tensor's whole range (the extremes of every sample's values, one sample held at a time)."""
    from onnxruntime.quantization.calibrate import HistogramCollector
    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    wanted = [(i, n) for i, n in enumerate(names) if n in calibrator.tensors_to_calibrate]
    extremes = {}  # name -> [min, max, min of |x|, max of |x|]
    reader.rewind()
    while (inputs := reader.get_next()):
        outputs = session.run(None, inputs)
        for i, name in wanted:
            a = outputs[i]
            if a.size == 0:
                continue
            absolute = np.absolute(a)
            seen = [np.nanmin(a), np.nanmax(a), np.nanmin(absolute), np.nanmax(absolute)]
            kept = extremes.get(name)
            extremes[name] = seen if kept is None else [min(kept[0], seen[0]), max(kept[1], seen[1]),
                                                        min(kept[2], seen[2]), max(kept[3], seen[3])]
        del outputs
    reader.rewind()
    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    collector.collect_absolute_value = partial(_collect_absolute_value, collector, collector.collect_absolute_value)
    absolute = calibrator.method == "percentile" and calibrator.symmetric  # HistogramCollector.collect's choice
    bins = calibrator.num_bins
    for name, (low, high, abs_low, abs_high) in extremes.items():
        dtype = np.asarray(high).dtype
        if absolute:  # collect_absolute_value: bins between the least and the greatest |x|, grown past the top
            edges = np.histogram(np.array([abs_low, abs_high], dtype=dtype), bins=bins)[1].astype(dtype)
            collector.histogram_dict[name] = (np.zeros(bins, dtype=np.int64), edges, low, high)
        else:  # collect_value: bins over -t..t, t the greatest |x|, merged only while a chunk stays inside
            threshold = np.array(max(abs(low), abs(high)), dtype=dtype)
            hist, edges = np.histogram(np.array([], dtype=dtype), bins, range=(-threshold, threshold))
            collector.histogram_dict[name] = (hist, edges, low, high, threshold)
    calibrator.collector = collector


def _collect_absolute_value(collector, general, name_to_arr) -> None:
    """HistogramCollector.collect_absolute_value, binning |x| by numpy's path for uniform bins where the primed
    edges are the very ones it makes (it counts against them, so the counts are those of the sorting path, four
    times faster). Values past the top edge (the edges must grow), tensors never primed, and edges numpy would
    make otherwise go to ONNX Runtime's own (`general`)."""
    rest = {}
    for tensor, data in name_to_arr.items():
        signed = np.asarray(data)  # a chunk's list of arrays, stacked once
        values = np.absolute(signed.ravel())
        kept = collector.histogram_dict.get(tensor)
        if kept is None or values.size == 0 or np.nanmax(values) > kept[1][-1]:
            rest[tensor] = data
            continue
        hist, edges, low, high = kept
        counts, made = np.histogram(values, bins=len(hist), range=(edges[0], edges[-1]))  # as _prime made them
        if made.dtype != edges.dtype or not np.array_equal(made, edges):
            rest[tensor] = data
            continue
        collector.histogram_dict[tensor] = (hist + counts, edges, min(low, np.nanmin(signed)),
                                            max(high, np.nanmax(signed)))
    if rest:
        general(rest)
