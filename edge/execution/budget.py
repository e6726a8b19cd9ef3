"""The thread budget of the pipelined predict, and the model of the pipeline behind it.

Per image, reading + preprocessing costs ``d`` CPU-ms and a single-threaded
forward pass ``f`` CPU-ms (measured with ``time.thread_time`` on the threads doing
the work, so the figures hold on a busy box too). On ``C`` free cores no schedule
beats ``C / (d + f)`` images/s. What the pipeline does about it:

1. **Every forward pass is single-threaded** (OpenCV's thread count is 1 while the
   pipeline runs; onnxruntime's sessions follow it). A pass with several intra-op
   threads meets a barrier at every layer: when other work holds a core, the pass
   waits at each layer for the thread that was descheduled, and an idle pool spins
   on cores that decoding needs. Inference gets its parallelism from batches run
   side by side instead, on nets of their own, that never wait on each other.
2. **C threads, each doing whichever job is next** (``edge.execution.pipeline``): infer a batch
   whose inputs are ready, else read and preprocess the next input. No thread is
   tied to a stage, so the stages are balanced whatever ``d : f`` is (a big 16-bit
   PNG, a small JPEG, cv2.dnn or onnxruntime, a heatmap bundle), the cores never hold
   more of the pipeline's threads than there are cores (no time-slicing between our
   own threads, no cache thrash from it), and on one core the pipeline *is* the
   sequential loop with single-threaded passes.
3. **Under load nothing needs re-planning.** Other work on the box takes its share of
   the cores (Linux CFS: equal shares per runnable thread); single-threaded passes
   have no barrier to stall on, and each of the pipeline's threads keeps taking the
   next job. The pipeline's throughput is its share of the CPU over ``d + f``.
4. **A short run gets smaller batches.** The run's last forward pass has nothing
   to overlap with: while it runs on one thread, the others have no input left to
   read and wait, up to ``batch x f`` ms. Where the number of inputs ``n`` is known
   (a list), a pass takes at most ``ceil(n / (4 C))`` images (``pass_size``), so
   the drain is a small part of the run; a long run or an iterator keeps the
   batch size asked. Single-threaded passes cost about the same per image at any
   batch size, so smaller passes lose little.
5. **At most ``forwards`` passes at once** (``min(threads, MAX_STREAMS)``): each
   holds a net (weights + activations), a cap on memory on big boxes; threads over
   the cap read ahead.

So on C cores the model is ``images/s = 1000 x min(C / (d + f), forwards / f)``:
with the 8-forward cap, inference binds only when ``f / (d + f) > 8 / C``, that is
past ``8 (d + f) / f`` cores: about 16 where reading and inference cost the same.
``benchmarks.scaling`` measures ``d`` and ``f`` on a box and applies this model.

What load changes is how many cores are idle for a run with no inference to
overlap with reading (it fits in one batch: a few files in ``medge predict`` or a
hot folder): it reads its inputs side by side on the idle cores, then runs its one
forward pass with as many intra-op threads as there are idle cores (cores minus
those busy with other work, measured from /proc/stat): all of them on a quiet box,
fewer (down to one) when other work holds them.

The cores planned for are OpenCV's thread setting (``cv2.setNumThreads``,
``--threads``; by default the cores this process may use).
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable

import cv2

from medge.edge.system import opencv_build, usable_cores

MAX_STREAMS = 8  # forward passes at once in a pipeline: each holds a net (weights + activations), a cap on memory
BATCHES_PER_THREAD = 4  # a run of known length gets at least this many batches per thread (pass_size)


@dataclass(frozen=True)
class StageCosts:
    """CPU time per image of each stage, in core-ms."""

    decode_ms: float  # read + preprocess, on a worker thread
    forward_ms: float  # one image's part of a single-threaded batched forward pass


@dataclass(frozen=True)
class ThreadBudget:
    """How a pipelined run uses the cores, and why."""

    cores: int  # cores planned for
    threads: int  # threads of the pipeline, each reading, preprocessing or inferring, whichever is next
    forwards: int  # at most this many single-threaded forward passes at once, each on a net of its own
    batch_size: int | None  # images per forward pass (pass_size; None: not planned)
    costs: StageCosts | None  # CPU per image of each stage, measured by the run (None: not yet)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def pass_size(batch_size: int, inputs: int | None, threads: int) -> int:
    """Images per forward pass in the pipeline: ``batch_size``, smaller for a run of ``inputs`` known inputs so
    that each of the ``threads`` threads gets at least ``BATCHES_PER_THREAD`` batches (see the module docstring)."""
    batch_size = max(1, batch_size)
    if inputs is None:
        return batch_size
    return max(1, min(batch_size, math.ceil(inputs / (BATCHES_PER_THREAD * max(1, threads)))))


def plan_budget(cores: int, costs: StageCosts | None = None, threads: int | None = None, forwards: int | None = None,
                max_forwards: int = MAX_STREAMS, batch_size: int | None = None, inputs: int | None = None) -> ThreadBudget:
    """The pipeline's threads on ``cores`` cores (see the module docstring).

    Args:
        cores: cores the run may use (>= 1).
        costs: the stage costs measured, kept in the budget for the record.
        threads, forwards: fixed by the caller (``--workers``, ``--streams``); else one thread per core and
            at most ``min(threads, max_forwards)`` passes at once.
        max_forwards: the cap on passes at once (each holds a net).
        batch_size, inputs: the batch size asked and the number of inputs when known: the images per pass
            (``pass_size``) are planned when ``batch_size`` is given.
    """
    cores = max(1, int(cores))
    n = max(1, threads) if threads is not None else cores
    planned = forwards if forwards is not None else min(n, max(1, max_forwards))
    fixed = [f"{name} {v} as asked" for name, v in (("threads", threads), ("forwards", forwards)) if v is not None]
    per_pass = pass_size(batch_size, inputs, n) if batch_size is not None else None
    batch = ""
    if per_pass is not None:
        batch = f", {per_pass} image(s) per pass"
        if per_pass < batch_size:
            batch += f" (not {batch_size}: a run of {inputs} inputs ends sooner with smaller passes)"
    measured = (f"; measured {costs.decode_ms:.0f} core-ms reading+preprocessing and {costs.forward_ms:.0f} core-ms "
                f"inference per image" if costs else "")
    reason = (f"{cores} core(s): {n} thread(s), each reading or inferring whichever is next, at most {planned} "
              f"forward pass(es) at once" + (f" ({', '.join(fixed)})" if fixed else "") + batch + measured)
    return ThreadBudget(cores, n, planned, per_pass, costs, reason)


def lone_threads(cores: int, busy_cores: float | None) -> int:
    """Intra-op threads for work with nothing to overlap: the idle cores (at least 1)."""
    return max(1, min(int(cores), int(math.floor(int(cores) - (busy_cores or 0.0) + 0.5))))


def _has_parallel_framework() -> bool:
    framework = opencv_build().get("Parallel framework", "").strip().lower()
    return bool(framework) and not framework.startswith(("none", "no"))


_HAS_PARALLEL = None


def budget_cores() -> int:
    """The cores a pipelined run plans for: OpenCV's thread setting outside any run (``cv2.setNumThreads``,
    ``--threads``; by default the usable cores), or the usable cores where OpenCV has no parallel framework."""
    global _HAS_PARALLEL
    if _HAS_PARALLEL is None:
        _HAS_PARALLEL = _has_parallel_framework()
    if not _HAS_PARALLEL:
        return usable_cores()
    with _cv_lock:
        setting = _cv_saved if _cv_users else cv2.getNumThreads()
    return max(1, setting)


# OpenCV's thread count is one setting for the whole process: runs that change it count themselves here, and
# the last one to finish puts back what was set before the first began.
_cv_lock = threading.Lock()
_cv_users = 0
_cv_saved = 1


@contextmanager
def opencv_threads(n: int):
    """Run a block with ``cv2.setNumThreads(n)``, then restore the setting (shared by overlapping runs)."""
    global _cv_users, _cv_saved
    with _cv_lock:
        if _cv_users == 0:
            _cv_saved = cv2.getNumThreads()
        _cv_users += 1
        cv2.setNumThreads(max(1, int(n)))
    try:
        yield
    finally:
        with _cv_lock:
            _cv_users -= 1
            if _cv_users == 0:
                cv2.setNumThreads(_cv_saved)


def busy_cpu_s() -> float | None:
    """Seconds of CPU time all processes on the machine have used since boot (everything but idle and iowait),
    from /proc/stat; None off Linux. ``LoadMeter`` and ``medge bench``'s load readings use it."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _runnable_now() -> int | None:
    """Threads runnable on the whole box right now (the 4th field of /proc/loadavg), this one included."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


class LoadMeter:
    """Cores busy with other work than this process's: (all CPU time - this process's) / wall time between two
    readings of /proc/stat (0.2 to 5 s apart); else, from the threads runnable right now. None off Linux.

    /proc/stat and /proc/loadavg count the whole machine: in a container pinned to a few of a host's
    cores, the other work is taken as spread evenly, so only this process's share of the cores counts.
    """

    MIN_S, MAX_S = 0.2, 5.0

    def __init__(self, read_busy_s: Callable[[], float | None] = busy_cpu_s,
                 read_runnable: Callable[[], int | None] = _runnable_now):
        """``read_busy_s``: the machine's busy CPU seconds so far (/proc/stat); ``read_runnable``: threads runnable
        now (/proc/loadavg). Tests give their own readings."""
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None  # (wall, all busy s, this process's CPU s)
        self._read_busy_s, self._read_runnable = read_busy_s, read_runnable

    def busy_cores(self) -> float | None:
        now, busy, mine = time.monotonic(), self._read_busy_s(), time.process_time()
        if busy is None:
            return None
        with self._lock:
            last = self._last
            age = None if last is None else now - last[0]
            if age is None or age >= self.MIN_S:
                self._last = (now, busy, mine)
        share = min(1.0, usable_cores() / max(1, os.cpu_count() or 1))  # our cores of those /proc counts
        if age is not None and self.MIN_S <= age <= self.MAX_S:
            return share * max(0.0, ((busy - last[1]) - (mine - last[2])) / age)
        runnable = self._read_runnable()
        return None if runnable is None else share * float(max(0, runnable - 1))


LOAD = LoadMeter()
