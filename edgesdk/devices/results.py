"""The local results store (SQLite): every benchmark run, with the conditions it was measured under.

One row per run: artifact sha and manifest, host, profile, the device probe,
the recipe, the statistics and the raw latencies. WAL mode and a busy timeout
let a fleet's parallel writers share the file without corrupting it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sqlite3
import statistics
import threading
import time
from pathlib import Path

from edgesdk.errors import ResultsError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    host TEXT NOT NULL,
    profile TEXT,
    artifact TEXT NOT NULL,
    artifact_sha256 TEXT,
    format TEXT,
    runtime TEXT,
    runtime_version TEXT,
    delegate TEXT,
    threads INTEGER,
    warmup INTEGER,
    runs INTEGER,
    p50_ms REAL, p90_ms REAL, p99_ms REAL, mean_ms REAL,
    stats TEXT NOT NULL,
    latencies TEXT NOT NULL,
    probe TEXT,
    manifest TEXT,
    extra TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_artifact ON runs (artifact_sha256);
"""


def default_path() -> Path:
    if os.environ.get("EDGESDK_RESULTS_DB"):
        return Path(os.environ["EDGESDK_RESULTS_DB"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "edgesdk" / "results.db"


class ResultStore:
    def __init__(self, path=None):
        self.path = Path(path).expanduser() if path else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=30000")
            self._setup()
        except sqlite3.DatabaseError as exc:
            if self._disk_full():  # SQLite says "disk I/O error" when it cannot make its journal
                raise self._full_error(exc) from None
            raise ResultsError(f"The results database {self.path} cannot be used ({exc}). Move it aside or "
                               f"point EDGESDK_RESULTS_DB / --db elsewhere.") from None
        except OSError as exc:  # its folder is a file, or cannot be made
            raise ResultsError(f"The results database {self.path} cannot be made there ({exc.strerror or exc}: "
                               f"{exc.filename or self.path.parent}). Point EDGESDK_RESULTS_DB / --db "
                               f"elsewhere.") from None
        self.db.row_factory = sqlite3.Row
        self._lock = threading.Lock()  # a fleet's threads share this connection

    def _setup(self, attempts: int = 60) -> None:
        """WAL mode and the schema. Switching the journal mode takes the database exclusively, and SQLite
        answers "locked" at once (no busy wait) while another process opens it too: retry for a while."""
        for attempt in range(attempts):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 + 0.01 * attempt)

    def add(self, result, *, probe=None, manifest=None, profile=None, extra=None) -> int:
        lat = result.latency_ms
        row = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "host": result.host,
            "profile": profile or (manifest or {}).get("profile", {}).get("name"),
            "artifact": Path(result.artifact).name, "artifact_sha256": (extra or {}).get("artifact_sha256"),
            "format": result.raw.get("format"), "runtime": result.runtime, "runtime_version": result.runtime_version,
            "delegate": result.delegate, "threads": result.threads, "warmup": result.warmup, "runs": result.runs,
            "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "mean_ms": lat["mean"],
            "stats": json.dumps({**result.to_dict(), "latency_ms": lat}),
            "latencies": json.dumps(result.latencies_ms), "probe": json.dumps(probe) if probe else None,
            "manifest": json.dumps(manifest) if manifest else None, "extra": json.dumps(extra or {}),
        }
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            with self._lock, self.db:  # one transaction: a row is there whole or not at all
                cur = self.db.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", list(row.values()))
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc) and not self._disk_full():
                raise
            raise self._full_error(exc) from None
        return int(cur.lastrowid)

    def _disk_full(self) -> bool:
        """Whether the database's disk has no room left (under 1 MB: SQLite's journal needs pages)."""
        try:
            return shutil.disk_usage(self.path.parent).free < 1 << 20
        except OSError:
            return False

    def _full_error(self, exc) -> ResultsError:
        free = shutil.disk_usage(self.path.parent).free
        return ResultsError(f"The results database {self.path} cannot be written: its disk is full "
                            f"({free / 1e6:.1f} MB free under {self.path.parent}; SQLite: {exc}). The run was not "
                            f"stored and the database is as it was. Free some space, or point EDGESDK_RESULTS_DB / "
                            f"--db elsewhere.")

    def list(self, limit=20) -> list:
        rows = self.db.execute("SELECT id, created, host, profile, artifact, runtime, runs, p50_ms, p90_ms, p99_ms "
                               "FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def get(self, run_id: int) -> dict:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ResultsError(f"No run {run_id} in {self.path}; `edgesdk results list` shows the ids.")
        out = dict(row)
        for key in ("stats", "latencies", "probe", "manifest", "extra"):
            out[key] = json.loads(out[key]) if out[key] else None
        return out

    def close(self):
        self.db.close()


MIN_EFFECT_PCT = 5.0  # a change smaller than this is not worth acting on, whatever its confidence
MIN_REPEATS = 3  # fewer fresh processes per side and the run-to-run noise is not measured


def run_medians(row: dict) -> list:
    """The p50 of each fresh runner process a stored run holds (`--repeat`), else its one p50."""
    reps = (row.get("extra") or {}).get("repeats")
    return [r["p50"] for r in reps] if reps else [statistics.median(row["latencies"])]


def _block_medians(latencies, rng, n_resamples: int):
    """Medians of circular block-bootstrap resamples: latencies within a run are autocorrelated (clock
    ramps, thermal drift, caches), so single samples are not independent; blocks of sqrt(n) keep runs of them."""
    import numpy as np
    x = np.asarray(latencies, float)
    n = len(x)
    b = max(1, int(round(n ** 0.5)))
    starts = rng.integers(0, n, size=(n_resamples, -(-n // b)))
    idx = (starts[..., None] + np.arange(b)).reshape(n_resamples, -1)[:, :n] % n
    return np.median(x[idx], axis=1)


def change_interval(first: dict, second: dict, confidence: float = 0.95, seed: int = 0) -> dict:
    """Confidence interval of the change in median latency, second vs first, in percent."""
    import numpy as np
    from scipy import stats
    rng = np.random.default_rng(seed)
    ra, rb = np.asarray(run_medians(first)), np.asarray(run_medians(second))
    point = 100 * (np.median(rb) / np.median(ra) - 1)
    if len(ra) >= MIN_REPEATS and len(rb) >= MIN_REPEATS:
        # Welch's t interval on log medians: a ratio, and honest with few processes (a percentile
        # bootstrap of three values is far too narrow)
        la, lb = np.log(ra), np.log(rb)
        point = 100 * (np.exp(lb.mean() - la.mean()) - 1)  # the ratio of geometric means, as the interval
        if la.std() == lb.std() == 0:  # every process gave the same median: no spread to speak of
            lo = hi = point
        else:
            res = stats.ttest_ind(lb, la, equal_var=False)
            lo, hi = (100 * (np.exp(v) - 1) for v in res.confidence_interval(confidence))
        basis = f"the medians of {len(ra)} and {len(rb)} fresh runner processes (Welch's t on their logs)"
    else:
        ma = _block_medians(first["latencies"], rng, 4000)
        mb = _block_medians(second["latencies"], rng, 4000)
        lo, hi = np.percentile(100 * (mb / ma - 1), [50 * (1 - confidence), 50 * (1 + confidence)])
        basis = ("one process per run: blocks of each run's own latencies; the run-to-run noise is not "
                 f"measured (store runs with --repeat {MIN_REPEATS} or more)")
    return {"change_pct": round(float(point), 2), "low_pct": round(float(lo), 2), "high_pct": round(float(hi), 2),
            "confidence": confidence, "basis": basis}


def compare(first: dict, second: dict, min_effect_pct: float = MIN_EFFECT_PCT, confidence: float = 0.95) -> dict:
    """Is second's median latency different from first's beyond run-to-run noise, by enough to matter?"""
    from edgesdk.targets.runner import summarize
    sa, sb = summarize(first["latencies"]), summarize(second["latencies"])
    ci = change_interval(first, second, confidence)
    out = {"runs": [first["id"], second["id"]], "median_change": ci, "min_effect_pct": min_effect_pct}
    for key in ("p50", "p90", "p99", "mean"):
        out[key] = {"first": sa[key], "second": sb[key], "change_pct": round(100 * (sb[key] - sa[key]) / sa[key], 2)
                    if sa[key] else None}
    beyond_noise = ci["low_pct"] > 0 or ci["high_pct"] < 0
    out["differs"] = bool(beyond_noise and abs(ci["change_pct"]) >= min_effect_pct)
    span = f"{ci['change_pct']:+.1f}% ({100 * confidence:.0f}% CI {ci['low_pct']:+.1f} to {ci['high_pct']:+.1f}%)"
    if out["differs"]:
        out["verdict"] = f"{'slower' if ci['change_pct'] > 0 else 'faster'} by {span}: beyond run-to-run noise"
    elif beyond_noise:
        out["verdict"] = f"{span}: measurable, but under the {min_effect_pct:g}% that counts as a difference"
    else:
        out["verdict"] = f"{span}: within run-to-run noise"
    same = [k for k in ("host", "profile", "runtime", "threads") if first.get(k) != second.get(k)]
    if same:
        out["differences"] = {k: [first.get(k), second.get(k)] for k in same}
    probes = (first.get("probe") or {}), (second.get("probe") or {})
    conditions = {k: [probes[0].get(k), probes[1].get(k)] for k in ("governor", "cur_freq_mhz", "throttled",
                                                                       "power_mode", "machine")
                  if probes[0].get(k) != probes[1].get(k)}
    if conditions:
        out["conditions_differ"] = conditions
    return out
