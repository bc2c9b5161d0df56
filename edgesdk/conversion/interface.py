"""How an artifact's inputs and outputs stand for its source's: the manifest's `interface`, found by probing.

Converters rename inputs and outputs, reorder them, turn NCHW maps into NHWC, and a cut detector's outputs
are finished by a host tail. The artifact is run on a few samples and its outputs matched to the source's
(validation.match_outputs: by name, shape, then similarity); what was found is written down once, so
`edgesdk.artifacts.runtime.Loaded` (the gate, and a user's `edgesdk.load`) only follows it.
"""

from __future__ import annotations

import numpy as np


def probe(path, source, recipe, layout, x, reference) -> tuple:
    """(the interface record, the host tail graph's path or None) of the artifact at `path`, from the first
    samples of `x` (source layout) and the source's outputs on them."""
    from edgesdk.artifacts.inspection import open_artifact
    from edgesdk.judge.validation import match_outputs
    from edgesdk.sources.inputs import artifact_outputs, match_names, to_artifact_layout
    from .host_tail import PROBE_SAMPLES, Finished, read_as_source
    x = x[:PROBE_SAMPLES]
    reference = [r[:PROBE_SAMPLES] for r in reference]
    art = open_artifact(path, format=recipe.format, exact=recipe.int8_arithmetic == "exact")
    finished = read_as_source(art, source, recipe, x, to_artifact_layout(x, source, layout))
    outs = artifact_outputs(finished, to_artifact_layout(x, source, layout), source, reference)
    _, matched = match_outputs(reference, list(source.output_names), outs, list(finished.output_names))
    art_inputs = [i["name"] for i in art.io()["inputs"]]
    named = {s: a for a, s in match_names(art_inputs, [s.name for s in source.inputs]).items()}
    inputs = []
    for s in source.inputs:
        # a fixed value the converter built into the graph is no input of the artifact: artifact_name None
        rec = {"name": s.name, "artifact_name": named.get(s.name), "shape": [d if d else -1 for d in s.shape],
               "dtype": s.dtype, "batch_axis": s.batch_axis}
        if layout == "NHWC" and s.layout == "NCHW" and len(s.shape) == 4:  # as inputs.to_artifact_layout turns it
            rec["nhwc"] = True
        if s.name in source.fixed:
            rec["value"] = np.asarray(source.fixed[s.name]).tolist()
        if s.name in source.stateful:
            rec["state_from"] = source.stateful[s.name]
        inputs.append(rec)
    tail = finished.tail if isinstance(finished, Finished) else None
    outputs = []
    for name, m in zip(source.output_names, matched):
        rec = {"name": name, "matched_by": m["matched_by"]}
        if tail is not None and m["artifact_name"] in tail.outputs:
            rec.update(artifact_name=m["artifact_name"], from_tail=True)
        elif tail is not None:  # a head output the tail leaves as it is
            j, turned = finished.where[m["artifact_name"]]
            rec["artifact_name"] = art.output_names[j]
            if turned:
                rec["nchw"] = True
        else:
            rec["artifact_name"] = m["artifact_name"]
        if m.get("layout") == "NHWC":
            rec["nchw"] = True
        if source.output_axes.get(name):
            rec["batch_axis"] = source.output_axes[name]
        outputs.append(rec)
    record = {"inputs": inputs, "outputs": outputs}
    if tail is not None:
        record["tail"] = finished.describe()  # the tail graph's outputs and ops, and what feeds it
        return record, finished.tail_path
    return record, None
