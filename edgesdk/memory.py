"""How much memory a stage may hold, so that it takes fewer samples instead of meeting the OOM killer.

A stage that holds tensors of several samples at once (a histogram calibrator, a debugger) asks how many
samples of a given size fit; the answer is a share of what the machine (or the container's cgroup) has free
right now, so two conversions side by side each see what is left.
"""

from __future__ import annotations

from pathlib import Path

SHARE = 0.25               # of the memory available now, for one stage's held tensors
CEILING = 512 << 20        # never more than this, however large the machine
FLOOR = 256 << 20          # a machine reporting less than this still gets it (the stage takes one sample)


def available() -> int:
    """Bytes this process could still take: MemAvailable, or the cgroup's limit less its use when lower."""
    free = _meminfo("MemAvailable") or (8 << 30)
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            if cap != "max" and int(cap) < (1 << 60):
                free = min(free, int(cap) - int(Path(used).read_text()))
            break
        except (OSError, ValueError):
            continue
    return max(free, 0)


def budget() -> int:
    """Bytes one stage may hold in tensors."""
    return int(min(CEILING, max(FLOOR, SHARE * available())))


def samples_within(per_sample: int, wanted: int) -> int:
    """How many of `wanted` samples of `per_sample` bytes each fit the stage budget (at least one)."""
    if per_sample <= 0:
        return wanted
    return max(1, min(wanted, budget() // per_sample))


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
