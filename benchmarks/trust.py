"""When a latency figure cannot be trusted: the box's load around a run, each row's spread, and the rule that
flags the rows another process distorted.

Usage: python -m medge.benchmarks.trust            # the box's load now (/proc/loadavg, busy cores over 0.5 s)

The hazard: on a box whose cores another process holds, a runtime whose intra-op threads meet at a barrier
after every layer (PyTorch's OpenMP pool, most of all) waits at each one for its descheduled thread. A run
on 2 cores beside a busy process gave PyTorch batch 1 a p50 of 386.9 ms against a min of 14.8 ms, a batch-8
p50 below the batch-1 one, and "cv2.dnn / PyTorch = 0.04"; minutes later the same comparison gave 30.8 ms
against 26.9 ms. Interleaving spreads drift over the runtimes alike; it cannot undo a stall that hits one
runtime's threads and not another's.

The rule (``busy_reasons``): a latency row of R threads on a box of C cores is flagged busy when

1. its p50 > ``P50_OVER_MIN`` x its min (the typical call took far longer than the same call could), or
2. its p90 > ``P90_OVER_P50`` x its p50 (a tenth of the calls were kept waiting), or
3. other processes kept more cores busy, on average over the row's measurement, than the C - R cores the
   row leaves idle plus ``OTHERS_SLACK`` (the machine's busy CPU time from /proc/stat less this process's,
   over the wall time; scaled to this process's share of the machine's cores, as ``edge.execution.budget``'s
   ``LoadMeter`` does). Not applied where /proc/stat cannot be read.

The constants come from runs on a 2-core "Intel(R) Xeon(R) Processor" VM (family 6, model 167; AVX-512 and
AMX flags, 2.6 GHz): a resnet18 at 128 px, batch 1 and 8, 1 and 2 threads, cv2.dnn, PyTorch, onnxruntime,
medge's onnxruntime and OpenVINO engines, quiet, beside a CPU hog (``python -c "while True: pass"``) and
beside other people's test runs (the figures: docs/benchmarks.md). Rules 1 and 2 alone missed rows the hog
had slowed evenly (cv2.dnn at 2 threads, batch 8: 122 ms against 77 ms quiet, p50 / min 1.27): rule 3
catches those.

Cases (one thread count and batch size, every runtime interleaved) with a flagged row are measured again,
all runtimes interleaved as before, after the other cases, at most ``MAX_REPEATS`` times
(``measure_until_quiet``). Every attempt's figures, spreads, load and flags stay in the record; a run whose
last attempt still has a flagged row states no ratio in its headline (``benchmarks.bench.headline``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

P50_OVER_MIN = 1.5  # rule 1: quiet rows here at most 1.29; 2-thread rows beside a busy core up to 19
P90_OVER_P50 = 1.5  # rule 2: quiet rows here at most 1.29 (the project's records on this kind of box: 1.39)
OTHERS_SLACK = 0.5  # rule 3: cores other processes may keep busy beyond the idle ones (quiet box: 0.01-0.13)
MAX_REPEATS = 2  # measurements again of a case with a flagged row, after the first
LOAD_WINDOW_S = 0.5  # the box's load before and after a run is read over this long


@dataclass(frozen=True)
class CpuReading:
    """The clock, the machine's busy CPU seconds (/proc/stat; None off Linux) and this process's CPU seconds."""

    wall_s: float
    busy_s: float | None
    own_s: float

    @classmethod
    def now(cls) -> CpuReading:
        from medge.edge.execution.budget import busy_cpu_s

        return cls(time.monotonic(), busy_cpu_s(), time.process_time())


def others_cores(start: CpuReading, end: CpuReading) -> float | None:
    """Cores other processes kept busy on average between two readings, in this process's share of the machine
    (a container pinned to 2 of a host's 8 cores counts a quarter of the host's other work); None off Linux."""
    from medge.edge.system import usable_cores

    wall = end.wall_s - start.wall_s
    if start.busy_s is None or end.busy_s is None or wall <= 0:
        return None
    share = min(1.0, usable_cores() / max(1, os.cpu_count() or 1))
    return share * max(0.0, ((end.busy_s - start.busy_s) - (end.own_s - start.own_s)) / wall)


def _loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def box_load(window_s: float = LOAD_WINDOW_S, sleep: Callable[[float], None] = time.sleep) -> dict:
    """The box's load now: /proc/loadavg (1, 5, 15 min) and the cores other processes kept busy over
    ``window_s`` seconds while this one slept (None where /proc cannot be read)."""
    start = CpuReading.now()
    sleep(window_s)
    others = others_cores(start, CpuReading.now())
    return {"loadavg": _loadavg(), "others_cores": None if others is None else round(others, 3), "window_s": window_s}


def spread(row: dict) -> dict:
    """A latency row's spread: p50 / min and p90 / p50 (NaN where a figure is missing or zero)."""
    def ratio(a, b):
        return a / b if a == a and b == b and b > 0 else float("nan")

    return {"p50_over_min": ratio(row["p50_ms"], row["min_ms"]), "p90_over_p50": ratio(row["p90_ms"], row["p50_ms"])}


def busy_reasons(row: dict, cores: int) -> list[str]:
    """The rule of the module docstring for one latency row (its p50_ms, p90_ms, min_ms, threads and, where
    measured, others_cores) on a box of ``cores`` cores: why it is flagged busy, or [] when it is not."""
    s, reasons = spread(row), []
    if s["p50_over_min"] > P50_OVER_MIN:
        reasons.append(f"p50 {row['p50_ms']:.1f} ms is {s['p50_over_min']:.1f}x its min {row['min_ms']:.1f} ms "
                       f"(> {P50_OVER_MIN:g}x)")
    if s["p90_over_p50"] > P90_OVER_P50:
        reasons.append(f"p90 is {s['p90_over_p50']:.1f}x p50 (> {P90_OVER_P50:g}x)")
    others, idle = row.get("others_cores"), max(0, cores - int(row["threads"]))
    if others is not None and others > idle + OTHERS_SLACK:
        reasons.append(f"other processes kept {others:.2f} core(s) busy, {idle} idle beside its "
                       f"{row['threads']} thread(s) (> {idle + OTHERS_SLACK:g})")
    return reasons


def judge(rows: list[dict], cores: int, others: float | None) -> list[dict]:
    """The rows of one measured case with its load, their spread and their flags (``busy``: reasons, [] if none)."""
    out = []
    for row in rows:
        row = {**row, "others_cores": None if others is None else round(others, 3)}
        out.append({**row, "spread": spread(row), "busy": busy_reasons(row, cores)})
    return out


def measure_until_quiet(cases: list, measure: Callable[[object], list[dict]], cores: int,
                        max_repeats: int = MAX_REPEATS, log: Callable[[str], None] = print) -> list[dict]:
    """Every case measured once, then the cases with a flagged row again, round after round, at most
    ``max_repeats`` more times each; the rows of each case's last attempt, in case order.

    ``measure(case)`` returns the case's rows, already judged (``judge``). A row measured more than once
    keeps its earlier attempts, whole, under ``earlier`` (oldest first) and says how many there were
    (``attempts``).
    """
    results = {i: [measure(case)] for i, case in enumerate(cases)}
    for round_ in range(1, max_repeats + 1):
        again = [i for i, attempts in results.items() if any(r["busy"] for r in attempts[-1])]
        if not again:
            break
        log(f"latency: {len(again)} case(s) flagged busy (a spread or other processes' load past the rule): "
            f"measuring them again ({round_} of at most {max_repeats})")
        for i in again:
            results[i].append(measure(cases[i]))
    rows = []
    for attempts in results.values():
        for k, row in enumerate(attempts[-1]):
            rows.append({**row, "attempts": len(attempts), "earlier": [a[k] for a in attempts[:-1]]})
    return rows


def reasons_of(row: dict, cores: int) -> list[str]:
    """A row's flags as its run recorded them; judged now by the rule for a record from before the rule."""
    return row["busy"] if "busy" in row else busy_reasons(row, cores)


def record_cores(record: dict) -> int:
    """The cores a bench record's run could use (older records name the machine's only)."""
    env = record.get("env") or {}
    return int(env.get("usable_cores") or env.get("cores") or 1)


def flagged(rows: list[dict], cores: int) -> list[dict]:
    """The rows (a run's last attempts) that are flagged busy, on a box of ``cores`` cores."""
    return [r for r in rows if reasons_of(r, cores)]


def main(argv=None) -> int:
    from medge.benchmarks.common import research_parser

    research_parser(__doc__, "python -m medge.benchmarks.trust").parse_args(argv)
    load = box_load()
    print(f"loadavg {load['loadavg']}; other processes kept {load['others_cores']} core(s) busy over "
          f"{load['window_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
