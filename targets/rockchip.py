"""Rockchip NPUs (RK3588 / RK3566 boards): .rknn artifacts built by rknn-toolkit2, run by RKNNLite.

The toolkit builds for one SoC (the profile's `platform`) and decides op by op what the NPU runs and
what falls back to the board's CPU; its layer table (kept in the manifest) is what this family judges.
The NPU computes int8, with some ops in fp16 (softmax, the type conversions at the edges); a model built
without quantization runs in fp16. On the board the runner uses RKNNLite, and --threads picks how many
of the NPU's cores run the model (the RK3588 has three).
"""

from __future__ import annotations

from edgesdk.errors import ConversionError

from edgesdk.artifacts.formats import ArtifactFormat

from . import DevicePlan, TargetFamily

NAME = "rockchip"
PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1103", "rv1106", "rv1103b", "rv1106b", "rk2118")
SETUP_NOTE = ("RKNNLite also needs Rockchip's NPU driver (rknpu, in the board vendor's kernel) and librknnrt.so in "
              "/usr/lib (from the board vendor's image, or rknn-toolkit2's rknpu2/runtime folder), which no wheel "
              "carries.")
EDGE_OPS = {"InputOperator", "OutputOperator"}  # rows of the layer table that are not ops
GLUE_OPS = {"exDataConvert", "Reshape", "Transpose"}  # type conversion and layout, not compute


def check(info: dict, profile, recipe=None) -> dict:
    report = {"family": NAME, "profile": profile.name, "status": "supported", "fallbacks": [], "notes": []}
    if info["format"] == "onnx":  # the board's CPU cores, with ONNX Runtime, as any ARM board runs it
        from .arm_cpu import check as cpu_check
        cpu = cpu_check(info, profile, recipe)
        return {**cpu, "family": NAME, "notes": cpu["notes"] + [
            f"runs on the board's CPU ({profile.device.cpu}) with ONNX Runtime, not on the NPU"]}
    if info["format"] != "rknn":
        message = (f"Rockchip NPU profiles ({profile.name}) take .rknn artifacts built by rknn-toolkit2, not "
                   f"{info['format']}.")
        if recipe is not None:
            raise ConversionError(message)
        return {**report, "status": "unsupported", "notes": [message]}
    reader = info["reader"]
    layers = [r for r in reader.layers if r["op"] not in EDGE_OPS | GLUE_OPS]  # the ops that compute
    on_cpu = info["coverage"].get("on_cpu", [])
    fp16 = sorted({r["op"] for r in layers if r["dtype"].upper() == "FLOAT16" and r["target"] == "NPU"})
    acc = profile.accelerator
    report["layers"] = reader.layers
    if getattr(reader, "build", None) is not None:
        report["toolkit"] = f"rknn-toolkit2 {reader.build.toolkit}"
    report["npu"] = {"platform": acc.platform, "cores": acc.npu_cores,
                     "ops_on_npu": sum(r["target"] == "NPU" for r in layers), "ops_on_cpu": len(on_cpu)}
    report["notes"].append(f"{acc.platform.upper()} NPU ({acc.npu_cores} core{'s' if acc.npu_cores > 1 else ''}): "
                           f"{report['npu']['ops_on_npu']} of {len(layers)} compute ops")
    if fp16 and info.get("quantized"):
        report["notes"].append(f"{', '.join(fp16)} run in fp16 on the NPU")
    if on_cpu:
        names = sorted({o["op"] for o in on_cpu})
        report["fallbacks"] = names
        report["status"] = "supported with fallbacks"
        report["notes"].append(f"{', '.join(names)} fall back to the board's CPU ({len(on_cpu)} op(s)): each "
                               f"costs a round trip between NPU and CPU memory")
    return report


def device_plan(artifact, probe: dict, profile) -> DevicePlan:
    """The .rknn on the NPU, with the manifest's input shapes (the runner cannot read them from the file); an
    ONNX artifact on the board's CPU."""
    if artifact.path.suffix == ".onnx":
        return DevicePlan(artifact.path)
    if artifact.path.suffix != ".rknn":
        return DevicePlan(artifact.path, problem=f"a {artifact.path.suffix} artifact does not run on the NPU; "
                          f"convert with --target {profile.name}")
    if not probe.get("rknpu_driver"):
        return DevicePlan(artifact.path, problem="the device has no rknpu driver (a Rockchip vendor kernel "
                          "provides it): the NPU cannot be used")
    if not probe.get("rknn_library"):
        return DevicePlan(artifact.path, problem="librknnrt.so is not in /usr/lib: install Rockchip's NPU runtime "
                          "library there")
    shapes = ";".join(f"{t['name']}:{','.join(str(d) for d in t['shape'])}"
                      for t in artifact.manifest.get("inputs", []))
    return DevicePlan(artifact.path, ["--input-shape", shapes] if shapes else [], accelerator="npu")


class Rockchip(TargetFamily):
    name = NAME
    description = "Rockchip NPUs (RK3588, RK3566): .rknn built by rknn-toolkit2, run by RKNNLite"
    formats = ("rknn", "onnx")  # ONNX on the board's CPU: what a graph the toolkit cannot build falls back to
    # the compiled .rknn: nothing outside rknn-toolkit2 parses it; read from the toolkit's build or the manifest
    artifact_formats = (ArtifactFormat("rknn", "edgesdk.targets.rockchip_artifact:RKNNArtifact", benchmarks_here=False,
                                       where_it_runs="an .rknn runs only on a Rockchip NPU; measure it there with "
                                                     "`edgesdk deploy ARTIFACT --host BOARD`.", lists_ops=False),)
    # the NPU computes in int8 or fp16; ONNX runs on the board's CPU cores, float included
    quantizations = {"rknn": ("int8", "fp16"), "onnx": ("int8", "fp16", "float")}
    # in an .rknn, what runs in fp16 or on the CPU is the toolkit's decision, reported, not a recipe's; the NPU's
    # int16 is the toolkit's own quantization, not a QDQ graph's. ONNX runs on the board's CPU, as on any ARM board.
    float_ops = ("onnx",)
    int16_activations = ("onnx",)
    accelerator_kinds = ("npu",)
    accelerator_keys = {"platform": (str, "rk3588"), "npu_cores": (int, 1)}
    representative = "rock5b"
    runtimes = {"rknn": "rknn-toolkit-lite2", "onnx": "onnxruntime"}
    setup_note = SETUP_NOTE
    # the NPU's kernel driver, and the runtime library RKNNLite loads
    probe_files = {"rknpu_driver": ("/sys/module/rknpu", "/dev/rknpu", "/sys/kernel/debug/rknpu"),
                   "rknn_library": ("/usr/lib/librknnrt.so", "/usr/lib/aarch64-linux-gnu/librknnrt.so",
                                    "/usr/local/lib/librknnrt.so")}
    check = staticmethod(check)

    def validate_profile(self, artifact, accelerator):
        if accelerator.platform not in PLATFORMS:
            return (f"[accelerator] platform '{accelerator.platform}' is not a Rockchip SoC rknn-toolkit2 builds "
                    f"for; expected one of {list(PLATFORMS)}.")
        if artifact.input_dtype != "float32" or artifact.output_dtype != "float32":
            return "[artifact] an .rknn takes and returns float32 (its int8 lives inside): set both dtypes float32."
        return None

    def runtime_missing(self, fmt, probe):
        if fmt == "rknn" and not probe.get("runtimes", {}).get("rknnlite"):
            return "No RKNN runtime (rknn-toolkit-lite2)"
        return super().runtime_missing(fmt, probe)

    def device_plan(self, artifact, probe, profile, **options):
        return device_plan(artifact, probe, profile)


FAMILY = Rockchip()
