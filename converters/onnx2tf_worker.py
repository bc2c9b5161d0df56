"""ONNX -> TensorFlow SavedModel with onnx2tf, run inside its private environment (edgesdk.toolchains).

Standalone: it imports nothing of edgesdk. Request on stdin (JSON):
  onnx     the float model, input shapes fixed
  out      the SavedModel directory to write
  keep     input names to keep in their ONNX layout (only 4-D image inputs become NHWC)
  simplified  true when the graph was simplified already: onnx2tf's own onnxsim pass is skipped
  samples  {input name: .npy of real samples in the layout the TF model takes}, for onnx2tf's own
           ONNX-vs-TF comparisons while it picks transposes
  int8     optional: also onnx2tf's own integer quantization, calibrated on the samples (the plain tool's
           result, for the benchmark suite's baseline); the reply names the .tflite
  reply    where to write the reply (JSON); work: the working directory
"""

import json
import re
import sys
from pathlib import Path

# onnx2tf reads its sample images from this file in the working directory, and downloads them when the
# file is absent; real samples of the user's data go there instead (it resizes them to the input)
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
TF_SCOPE = re.compile(r"[^A-Za-z0-9_.\\/>-]")  # what TensorFlow accepts in a name scope


def clean_names(src: str, dst: str) -> int:
    """Node names TensorFlow accepts as scopes (Paddle exports name nodes 'Softmax@0'); tensors keep theirs."""
    import onnx
    model = onnx.load(src)
    seen, changed = set(), 0
    for i, node in enumerate(model.graph.node):
        name = TF_SCOPE.sub("_", node.name) or f"node_{i}"
        while name in seen:
            name += "_"
        seen.add(name)
        changed += name != node.name
        node.name = name
    onnx.save(model, dst)
    return changed


def reason(exc: BaseException) -> str:
    """The line of an error that says what went wrong: TensorFlow wraps it in a traceback of the generated
    model ("in user code: File ..."), after "Exception encountered when calling layer ..."."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    layer = next((k for k, line in enumerate(lines) if line.startswith("Exception encountered when calling")), None)
    if layer is not None and layer + 1 < len(lines):
        where = lines[layer].split("calling layer ", 1)[-1].split(" (type")[0]
        what = lines[layer + 1].split(" for '{{node")[0]
        return f"{type(exc).__name__} at layer {where}: {what}"
    text = next((line for line in reversed(lines) if not line.startswith(("File ", "raise ", "return "))), "")
    return f"{type(exc).__name__}: {text or exc}"


def main() -> None:
    request = json.loads(sys.stdin.read())
    reply = Path(request["reply"])
    try:
        import numpy as np
        import onnx2tf
        work = Path(request["work"])
        clean = str(work / "model.onnx")
        renamed = clean_names(request["onnx"], clean)
        custom = []
        for name, path in (request.get("samples") or {}).items():
            custom.append([name, path, 0.0, 1.0])  # the samples are already what the model takes
            x = np.load(path)
            if x.ndim == 4 and x.shape[-1] == 3 and not (work / SAMPLE_FILE).exists():
                np.save(work / SAMPLE_FILE, x[:20].astype(np.float32))
        onnx2tf.convert(input_onnx_file_path=clean, output_folder_path=request["out"], output_signaturedefs=True,
                        non_verbose=True, keep_ncw_or_nchw_or_ncdhw_input_names=request.get("keep") or None,
                        custom_input_op_name_np_data_path=custom or None,
                        output_integer_quantized_tflite=bool(request.get("int8")),
                        not_use_onnxsim=bool(request.get("simplified")))
        done = {"saved_model": request["out"], "renamed_nodes": renamed, "onnx2tf": onnx2tf.__version__}
        if request.get("int8"):  # int8 inside, float input and output: compared on the same float data
            done["int8_tflite"] = str(next(Path(request["out"]).glob("*_integer_quant.tflite")))
        reply.write_text(json.dumps(done))
    except BaseException as exc:  # the caller reads the reply; the log keeps the traceback
        import traceback
        traceback.print_exc()
        reply.write_text(json.dumps({"error": reason(exc)}))
        sys.exit(1)


if __name__ == "__main__":
    main()
