"""Describe any artifact (.tflite, .onnx, or a format a family adds), and judge it against device profiles: `edgesdk inspect`."""

from __future__ import annotations

from pathlib import Path

from edgesdk.errors import EdgeSDKError, ModelLoadError
from edgesdk.util import gzip_size
from .formats import format_of


def representatives() -> list:
    """The profile that stands for each family when no --target is given."""
    from edgesdk.targets import families
    return [f.representative for f in families().values() if f.representative]


def open_artifact(path, **kwargs):
    """The reader for an artifact's format (edgesdk.artifacts.formats: .tflite, .onnx, or one a family adds)."""
    return format_of(path, kwargs.pop("format", None)).open(path, **kwargs)


def describe(path, fmt: str | None = None) -> dict:
    """Everything the family checks need: io, coverage, dtypes, sparsity, sizes, and the reader itself."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"'{path}' does not exist.")
    reader = open_artifact(path, format=fmt)
    kind = format_of(path, fmt)
    fmt = kind.name
    try:  # a damaged file can parse and still hold indices or sizes that lead nowhere
        coverage = reader.coverage()
        io = reader.io()
        if not io["inputs"] or not io["outputs"] or kind.lists_ops and not reader.ops():
            raise ModelLoadError(f"'{path}' holds no graph (no inputs, outputs or ops): it is empty, truncated "
                                 f"or not a {fmt} model.")
        if fmt == "tflite":
            quantized = any(t in ("int8", "uint8") for t in reader.tensor_dtypes())
        elif fmt == "onnx":
            quantized = coverage.get("qdq_ops", 0) > 0
        else:
            quantized = coverage["int8_ops"] > 0
        return {"format": fmt, "reader": reader, "io": io, "coverage": coverage,
                "tensor_dtypes": reader.tensor_dtypes(), "weight_sparsity": reader.weight_sparsity(),
                "size_bytes": path.stat().st_size, "quantized": quantized,
                "custom_ops": reader.custom_ops() if hasattr(reader, "custom_ops") else [],
                "subgraphs": reader.subgraph_count() if hasattr(reader, "subgraph_count") else 1}
    except EdgeSDKError:
        raise
    except Exception as exc:
        from edgesdk.util import first_line
        raise ModelLoadError(f"'{path}' is a damaged {fmt} file: {first_line(exc)[:200]}.") from None


def verdicts(info: dict, targets=None) -> list:
    """Compatibility of a described artifact with each target (default: one profile per family)."""
    from edgesdk.profiles import load_profile
    from edgesdk.targets import get_family
    profiles = [load_profile(t) for t in (targets or representatives())]
    out = []
    for profile in profiles:
        report = get_family(profile.family).check(info, profile)
        if info["format"] not in profile.artifact.formats and report["status"] != "unsupported":
            report = {**report, "status": "unsupported",
                      "notes": [f"{profile.name} takes {' or '.join(profile.artifact.formats)}, not "
                                f"{info['format']}"] + report.get("notes", [])}
        out.append(report)
    return out


def inspect(path, targets=None) -> dict:
    info = describe(path)
    path = Path(path)
    cov = info["coverage"]
    return {
        "artifact": str(path), "format": info["format"],
        "size_bytes": info["size_bytes"], "size_gzip_bytes": gzip_size(path),
        "inputs": info["io"]["inputs"], "outputs": info["io"]["outputs"],
        "ops": cov["ops"], "op_histogram": cov["op_histogram"],
        "int8_ops": cov["int8_ops"], "int16_ops": cov.get("int16_ops", 0), "float_ops": len(cov["float_ops"]),
        "io_conversion_ops": len(cov["io_conversion_ops"]), "tensor_dtypes": info["tensor_dtypes"],
        "quantized": info["quantized"], "custom_ops": info["custom_ops"], "subgraphs": info["subgraphs"],
        "sparsity": info["weight_sparsity"]["overall"], "layers": info["weight_sparsity"]["layers"],
        "compatibility": verdicts(info, targets),
    }
