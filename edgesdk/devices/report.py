"""`edgesdk report`: stored runs as a self-contained HTML page (or Markdown with PNGs beside it).

Per run: a latency histogram and CDF with p50/p90/p99 marked, and the device's
conditions beside the numbers. Across runs: a table, accuracy vs latency with
its Pareto front (what `edgesdk tune` chooses among), and artifact size vs
accuracy vs latency per target and device. Plots are drawn headless (Agg) and
embedded as data URIs, so the HTML is one file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edgesdk.errors import OptionError, RuntimeMissing


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeMissing("Reports draw with matplotlib: pip install 'edgesdk[report]'") from None
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def latency_figure(run: dict) -> bytes:
    plt = _plt()
    import numpy as np
    lat = np.asarray(run["latencies"], dtype=float)
    stats = run["stats"]["latency_ms"]
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(9, 3.2))
    # a few stalls (scheduler, page faults) would squash the body of the distribution into one bar:
    # show up to a little past p99 and say how many runs lie beyond
    upper = min(float(lat.max()), stats["p99"] + 3 * max(stats["p99"] - stats["p50"], 0.05 * stats["p50"]))
    beyond = int((lat > upper).sum())
    hist.hist(lat[lat <= upper], bins=min(60, max(10, len(lat) // 5)), color="#4c72b0")
    if beyond:
        hist.text(0.98, 0.95, f"{beyond} run(s) above {upper:.3g} ms not shown (max {lat.max():.3g})",
                  transform=hist.transAxes, ha="right", va="top", fontsize=7)
    for ax in (hist, cdf):
        ax.set_xlim(float(lat.min()) * 0.98, upper * 1.02)
    xs = np.sort(lat)
    cdf.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color="#4c72b0")
    for key, colour in (("p50", "#2ca02c"), ("p90", "#ff7f0e"), ("p99", "#d62728")):
        for ax in (hist, cdf):
            ax.axvline(stats[key], color=colour, linestyle="--", linewidth=1, label=f"{key} {stats[key]:.3f} ms")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("runs")
    hist.set_title("histogram")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of runs")
    cdf.set_title("CDF")
    cdf.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"run {run['id']}: {run['artifact']} on {run['host']} ({run['runtime']}, "
                 f"{run['threads']} thr)", y=1.04, fontsize=10)
    return _png(fig)


def tradeoff_figure(runs: list) -> bytes:
    """Artifact size vs latency, coloured by accuracy, one point per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys, cs, labels = [], [], [], []
    for r in runs:
        m = r.get("manifest") or {}
        size = m.get("size", {}).get("bytes")
        if size is None:
            continue
        acc = m.get("validation", {}).get("artifact_accuracy")
        xs.append(size / 1024)
        ys.append(r["stats"]["latency_ms"]["p50"])
        cs.append(100 * acc if acc is not None else float("nan"))
        labels.append(f"{r['profile'] or '?'} @ {r['host']}")
    points = ax.scatter(xs, ys, c=cs, cmap="viridis", s=60)
    for x, y, label in zip(xs, ys, labels):
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.margins(0.25)
    ax.set_xlabel("artifact size (KiB)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title("size vs latency (colour: accuracy %)")
    if any(c == c for c in cs):
        fig.colorbar(points, ax=ax, label="artifact accuracy (%)")
    return _png(fig)


def pareto_points(runs: list) -> tuple:
    """(points, what y is): one (p50, accuracy, label, on the front) per run whose manifest carries the gate's
    figures; accuracy is top-1 agreement with the source where every run has it, else output SQNR."""
    rows = []
    for r in runs:
        m = r.get("manifest") or {}
        v, recipe = m.get("validation", {}), m.get("recipe", {})
        rows.append((r["stats"]["latency_ms"]["p50"], v.get("top1_agreement"), v.get("sqnr_db"),
                     f"{recipe.get('format', '?')} {recipe.get('quantization', '?')} x{r['threads']}"))
    if all(a is not None for _, a, _, _ in rows):
        pts, what = [(p, 100 * a, label) for p, a, _, label in rows], "top-1 agreement with the source (%)"
    else:
        pts, what = [(p, s, label) for p, _, s, label in rows if s is not None], "output SQNR vs the source (dB)"
    front = [not any(q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in pts) for p in pts]
    return [(*p, f) for p, f in zip(pts, front)], what


def pareto_figure(runs: list) -> bytes | None:
    """Accuracy vs p50 latency, one point per run; the front (nothing both faster and more accurate) joined."""
    points, what = pareto_points(runs)
    if len(points) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, y, label, front in points:
        ax.scatter([x], [y], s=60, c="tab:red" if front else "tab:gray", zorder=3)
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    line = sorted((x, y) for x, y, _, front in points if front)
    ax.step([x for x, _ in line], [y for _, y in line], where="post", color="tab:red", alpha=0.5)
    ax.margins(0.2)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel(what)
    ax.set_title("accuracy vs latency (red: the Pareto front)")
    return _png(fig)


def _conditions(probe: dict | None) -> str:
    if not probe:
        return "no probe"
    temps = ", ".join(f"{t['zone']} {t['celsius']:.0f}°C" for t in probe.get("temperatures", [])[:3])
    parts = [f"{probe.get('machine')} {probe.get('cpu_model') or ''} x{probe.get('cores')}",
             f"governor {probe.get('governor') or 'n/a'}",
             f"{probe.get('cur_freq_mhz') or 'n/a'}/{probe.get('max_freq_mhz') or 'n/a'} MHz",
             f"throttled {probe.get('throttled') or 'n/a'}", f"power mode {probe.get('power_mode') or 'n/a'}"]
    if temps:
        parts.append(temps)
    return "; ".join(parts)


def _row(r: dict) -> dict:
    m = r.get("manifest") or {}
    lat = r["stats"]["latency_ms"]
    acc = m.get("validation", {}).get("artifact_accuracy")
    return {"run": r["id"], "when": r["created"], "host": r["host"], "profile": r["profile"] or "",
            "artifact": r["artifact"], "size KiB": f"{m['size']['bytes'] / 1024:.1f}" if m.get("size") else "",
            "accuracy": f"{100 * acc:.2f}%" if acc is not None else "", "runtime": r["runtime"],
            "threads": r["threads"], "runs": r["runs"], "p50 ms": f"{lat['p50']:.3f}", "p90 ms": f"{lat['p90']:.3f}",
            "p99 ms": f"{lat['p99']:.3f}", "conditions": _conditions(r.get("probe"))}


def _md_cell(value) -> str:
    """A table cell of Markdown: HTML escaped (Markdown renders raw HTML), pipes and line breaks kept out."""
    return html.escape(str(value)).replace("|", "\\|").replace("\n", " ")


def build(runs: list, output) -> Path:
    if not runs:
        raise OptionError("No runs to report: run `edgesdk bench` or `edgesdk deploy` first, or check the ids.")
    output = Path(output)
    if output.suffix not in (".html", ".md"):
        raise OptionError(f"--output must end in .html or .md, not '{output.suffix}'.")
    output.parent.mkdir(parents=True, exist_ok=True)
    images = {f"run-{r['id']}": latency_figure(r) for r in runs}
    if len(runs) > 1:
        images["tradeoff"] = tradeoff_figure(runs)
        pareto = pareto_figure(runs)
        if pareto is not None:
            images["pareto"] = pareto
    rows = [_row(r) for r in runs]
    cols = list(rows[0])
    if output.suffix == ".md":
        img_dir = output.with_suffix("")
        img_dir = img_dir.parent / (img_dir.name + "_images")
        img_dir.mkdir(exist_ok=True)
        for name, data in images.items():
            (img_dir / f"{name}.png").write_bytes(data)
        lines = ["# edgesdk results", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_md_cell(r[c]) for c in cols) + " |" for r in rows]
        lines += [""] + [f"![{name}]({img_dir.name}/{name}.png)" for name in images]
        output.write_text("\n".join(lines) + "\n")
        return output
    def img(name):
        return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'
    table = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    table += "</table>"
    body = [f"<h1>edgesdk results</h1><p>{len(runs)} run(s).</p>", table]
    if "pareto" in images:
        body.append(f"<h2>Accuracy and latency</h2>{img('pareto')}")
    if "tradeoff" in images:
        body.append(f"<h2>Size, accuracy and latency</h2>{img('tradeoff')}")
    for r in runs:
        body.append(f"<h2>Run {r['id']}: {html.escape(r['artifact'])} on {html.escape(r['host'])}</h2>"
                    f"<p class=cond>{html.escape(_conditions(r.get('probe')))}</p>{img('run-' + str(r['id']))}")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}img{max-width:100%}.cond{color:#555}")
    output.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>edgesdk results</title>"
                      f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return output
