"""The local results store (SQLite): every benchmark run, with the conditions it was measured under.

One row per run: artifact sha and manifest, host, profile, the device probe,
the recipe, the statistics and the raw latencies. WAL mode and a busy timeout
let a fleet's parallel writers share the file without corrupting it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from .errors import ResultsError

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
            raise ResultsError(f"The results database {self.path} cannot be used ({exc}). Move it aside or "
                               f"point EDGESDK_RESULTS_DB / --db elsewhere.") from None
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
        with self._lock, self.db:  # one transaction: a row is there whole or not at all
            cur = self.db.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", list(row.values()))
        return int(cur.lastrowid)

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


def mann_whitney(a: list, b: list) -> dict:
    """Two-sided Mann-Whitney U test (normal approximation with tie correction) and the shift in medians."""
    n1, n2 = len(a), len(b)
    if n1 < 5 or n2 < 5:
        return {"u": None, "p_value": None, "note": "too few samples for a test (need 5 or more per run)"}
    combined = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(combined)
    ties = 0.0
    i = 0
    while i < len(combined):
        j = i
        while j + 1 < len(combined) and combined[j + 1][0] == combined[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = rank
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, combined) if g == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return {"u": u1, "p_value": 1.0}
    z = (u1 - mean - math.copysign(0.5, u1 - mean)) / math.sqrt(var) if u1 != mean else 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    return {"u": u1, "z": round(z, 4), "p_value": p}


def compare(first: dict, second: dict, alpha: float = 0.01) -> dict:
    from edgesdk.targets.runner import summarize
    a, b = first["latencies"], second["latencies"]
    sa, sb = summarize(a), summarize(b)
    test = mann_whitney(a, b)
    out = {"runs": [first["id"], second["id"]], "alpha": alpha, "test": "Mann-Whitney U (two-sided)", **test}
    for key in ("p50", "p90", "p99", "mean"):
        out[key] = {"first": sa[key], "second": sb[key], "change_pct": round(100 * (sb[key] - sa[key]) / sa[key], 2)
                    if sa[key] else None}
    out["significant"] = test["p_value"] is not None and test["p_value"] < alpha
    out["verdict"] = ("the latency distributions differ beyond run-to-run noise" if out["significant"] else
                      "no difference beyond run-to-run noise")
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
