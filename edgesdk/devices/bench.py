"""Benchmark an artifact on this machine with the same standalone runner that runs on devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgesdk.errors import BenchmarkError, ModelLoadError, OptionError, RuntimeMissing


@dataclass
class BenchmarkResult:
    artifact: str
    host: str
    runtime: str
    runtime_version: str
    delegate: str
    threads: int
    warmup: int
    runs: int
    init_ms: float
    first_inference_ms: float
    latency_ms: dict
    latencies_ms: list
    peak_rss_mb: float | None
    raw: dict = field(default_factory=dict, repr=False)
    probe: dict | None = field(default=None, repr=False)
    uploaded_bytes: int = 0
    run_id: int | None = None

    @property
    def p50(self) -> float:
        return self.latency_ms["p50"]

    @property
    def p90(self) -> float:
        return self.latency_ms["p90"]

    def to_dict(self, with_latencies: bool = False) -> dict:
        d = {"artifact": self.artifact, "host": self.host, "runtime": self.runtime,
             "runtime_version": self.runtime_version, "delegate": self.delegate, "threads": self.threads,
             "warmup": self.warmup, "runs": self.runs, "init_ms": self.init_ms,
             "first_inference_ms": self.first_inference_ms, "latency_ms": self.latency_ms,
             "peak_rss_mb": self.peak_rss_mb, "inputs": self.raw.get("inputs"),
             "machine": self.raw.get("machine"), "python": self.raw.get("python"),
             "throughput_ips": round(1000.0 / self.latency_ms["mean"], 2) if self.latency_ms["mean"] else None,
             "energy": self.raw.get("energy", {"available": False, "reason": "not measured"}),
             "uploaded_bytes": self.uploaded_bytes, "run_id": self.run_id, "probe": self.probe}
        if with_latencies:
            d["latencies_ms"] = self.latencies_ms
        return d


def result_from_runner(doc: dict, artifact: str, host: str) -> BenchmarkResult:
    return BenchmarkResult(
        artifact=artifact, host=host, runtime=doc["runtime"], runtime_version=doc.get("runtime_version", ""),
        delegate=doc.get("delegate", ""), threads=doc["threads"], warmup=doc["warmup"], runs=doc["runs"],
        init_ms=doc["init_ms"], first_inference_ms=doc["first_inference_ms"], latency_ms=doc["latency_ms"],
        latencies_ms=doc["latencies_ms"], peak_rss_mb=doc.get("peak_rss_mb"), raw=doc)


def input_shape_arg(input_shape) -> str:
    """The runner's --input-shape from one spec or several ('name:1,3,640,640')."""
    return ";".join([input_shape] if isinstance(input_shape, str) else list(input_shape))


def pool_repeats(docs: list) -> dict:
    """Several runner processes of one benchmark as one document: latencies pooled, each process summarized
    in "repeats" (what `results compare` judges run-to-run noise by)."""
    if len(docs) == 1:
        return docs[0]
    from edgesdk.targets.runner import summarize
    doc = dict(docs[-1])
    doc["latencies_ms"] = [v for d in docs for v in d["latencies_ms"]]
    doc["latency_ms"] = summarize(doc["latencies_ms"])  # percentiles from the samples the processes kept
    doc["runs"] = sum(d["runs"] for d in docs)
    stats = [(d["runs"], d["latency_ms"]) for d in docs]  # the rest exact, from each process's own
    mean = sum(n * st["mean"] for n, st in stats) / doc["runs"]
    var = sum(n * (st["std"] ** 2 + (st["mean"] - mean) ** 2) for n, st in stats) / doc["runs"]
    doc["latency_ms"].update({"min": min(st["min"] for _, st in stats), "max": max(st["max"] for _, st in stats),
                              "mean": round(mean, 4), "std": round(var ** 0.5, 4)})
    doc["repeats"] = [{"p50": d["latency_ms"]["p50"], "p90": d["latency_ms"]["p90"], "mean": d["latency_ms"]["mean"],
                       "runs": d["runs"], "init_ms": d["init_ms"]} for d in docs]
    return doc


def parse_runner_output(stdout: str, stderr: str, returncode: int) -> dict:
    """The runner prints one JSON document as its last stdout line; runtimes may print before it."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                break
            if doc.get("ok"):
                return doc
            kind, msg = doc.get("kind"), doc.get("error", "unknown error")
            if kind == "runtime_missing":
                raise RuntimeMissing(msg)
            if kind in ("load_failed", "not_found"):
                raise ModelLoadError(msg)
            if kind == "bad_option":
                raise OptionError(msg)
            raise BenchmarkError(f"The runner failed: {msg}")
    from edgesdk.util import printable
    tail = printable(stderr or stdout).strip().splitlines()[-5:]
    killed = (" It was killed (SIGKILL): most often the kernel's out-of-memory killer, when the model needs more "
              "memory than is free there (`dmesg` says so); free memory or use a smaller model."
              if returncode in (-9, 137) else "")
    raise BenchmarkError(f"The runner exited with status {returncode} without a result.{killed} Last output:\n  "
                         + "\n  ".join(tail or ["(none)"]))


def benchmark(artifact, runs: int = 50, warmup: int = 5, threads: int | None = None,
              duration: float | None = None, delegate: str = "auto", python: str | None = None,
              timeout: float | None = None, repeat: int = 1, input_shape=None) -> BenchmarkResult:
    """Time `artifact` (an Artifact or a path) on this machine in a fresh subprocess.

    input_shape: for inputs with dynamic dims, 'name:1,3,640,640' (a list of them, or one bare shape)."""
    from edgesdk.artifacts.artifact import Artifact
    from edgesdk.targets import runner_path
    path = Path(artifact.path if isinstance(artifact, Artifact) else artifact)
    if not path.is_file():
        raise ModelLoadError(f"Artifact '{path}' does not exist.")
    from edgesdk.artifacts.formats import format_of
    kind = format_of(path)
    if not kind.benchmarks_here:
        raise ModelLoadError(f"'{path}' is not an artifact this machine runs: {kind.where_it_runs}")
    if threads is None:
        threads = 1
        if isinstance(artifact, Artifact):
            # The profile's threads, but no more than this machine has: oversubscribed
            # threads make latencies bimodal and say nothing about the device.
            threads = artifact.manifest.get("profile", {}).get("artifact", {}).get("threads", 1)
            threads = max(1, min(threads, os.cpu_count() or 1))
    if runs < 1 or warmup < 0 or threads < 1 or repeat < 1:
        raise OptionError("--runs, --threads and --repeat must be at least 1 and --warmup at least 0.")
    cmd = [python or sys.executable, str(runner_path()), str(path.resolve()), "--runs", str(runs),
           "--warmup", str(warmup), "--threads", str(threads), "--delegate", delegate]
    if duration:
        cmd += ["--duration", str(duration)]
    if input_shape:
        cmd += ["--input-shape", input_shape_arg(input_shape)]
    docs = []
    for _ in range(repeat):  # a fresh process each time
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"The benchmark did not finish within {timeout:g} s; lower --runs or raise "
                                 f"--timeout.") from None
        docs.append(parse_runner_output(proc.stdout, proc.stderr, proc.returncode))
    return result_from_runner(pool_repeats(docs), str(path), "local")
