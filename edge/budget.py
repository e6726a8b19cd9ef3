"""The thread budget of the pipelined predict: threads that read and preprocess, threads that infer.

The model of the pipeline (issue 14). Per image, reading + preprocessing costs ``d``
CPU-ms and a single-threaded forward pass ``f`` CPU-ms (both measured with
``time.thread_time`` on the threads doing the work, so the figures hold on a busy
box too). On ``C`` free cores no schedule beats ``C / (d + f)`` images/s. Three
facts shape the budget:

1. Threads that wait on each other lose when the OS takes one of them away. A
   forward pass with several intra-op threads (OpenCV's or onnxruntime's pool) meets
   a barrier at every layer: when other work holds a core, the pass waits at each
   layer for the thread that was descheduled, and an idle pool spins on cores that
   decoding needs. So in the pipeline every forward pass is single-threaded (OpenCV's
   thread count is 1 while it runs) and inference gets its parallelism from
   *streams*: threads with a net each, one batch at a time, that never wait on each other.
2. The OS shares a core between the threads that want it (Linux CFS: equal shares).
   A stage's share of the CPU is therefore proportional to its number of runnable
   threads, whether the cores are ours alone or shared with other work: with
   threads in proportion to the costs (streams : workers = f : d) the stages stay
   balanced under any load, and back-pressure (a bounded read-ahead) puts the
   threads of the faster stage to sleep rather than letting them run ahead.
3. A sleeping thread costs nothing but memory (a stream holds a net): each stage's
   count is rounded up, over C + 1 threads in all, so that both stages can run on every core.

Hence, with ``s = f / (d + f)``: ``streams = ceil(s (C + 1))`` (at most
``MAX_STREAMS``) and ``workers = ceil((1 - s) (C + 1))``. resnet18 at 224 px on
2048x2048 PNGs (d ~ 43, f ~ 39 core-ms with cv2.dnn; f ~ 15 with onnxruntime):
2 cores -> 2 streams + 2 workers (onnxruntime: 1 + 3); 8 cores -> 5 + 5 (3 + 7);
16 cores -> 8 (the cap) + 9 (5 + 13). The split is re-planned during a run from the
costs measured so far; a run starts from the previous run's costs (else s = 1/2).

What load changes is how many cores are idle. A run with no inference to overlap
with reading (it fits in one batch: a few files in ``medge predict`` or a hot
folder) reads its inputs side by side on the idle cores, then runs its one forward
pass with as many intra-op threads as there are idle cores (cores minus those busy
with other work, measured from /proc/stat): all of them on a quiet box, fewer
(down to one) when other work holds them.

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

import cv2

from medge.edge.system import opencv_build, usable_cores

MAX_STREAMS = 8  # each stream holds a net (weights + activations): a cap on memory
DEFAULT_SHARE = 0.5  # inference's share of the CPU per image before anything is measured


@dataclass(frozen=True)
class StageCosts:
    """CPU time per image of each stage, in core-ms."""

    decode_ms: float  # read + preprocess, on a worker thread
    forward_ms: float  # one image's part of a single-threaded batched forward pass

    @property
    def inference_share(self) -> float:
        total = self.decode_ms + self.forward_ms
        return self.forward_ms / total if total > 0 else DEFAULT_SHARE


@dataclass(frozen=True)
class ThreadBudget:
    """How a pipelined run uses the cores, and why."""

    cores: int  # cores planned for
    workers: int  # threads reading and preprocessing
    streams: int  # inference threads, each with its own net, one single-threaded batch at a time
    costs: StageCosts | None  # what the split was based on (None: nothing measured yet)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def plan_budget(cores: int, costs: StageCosts | None = None, workers: int | None = None, streams: int | None = None,
                max_streams: int = MAX_STREAMS) -> ThreadBudget:
    """Split ``cores`` between reading and inference in proportion to the stages' costs (see the module docstring).

    Args:
        cores: cores the run may use (>= 1).
        costs: measured costs per image; None = assume inference takes half the CPU.
        workers, streams: fixed by the caller (``--workers``); the other one is planned.
        max_streams: at most this many streams (each holds a net).
    """
    cores = max(1, int(cores))
    share = costs.inference_share if costs else DEFAULT_SHARE
    threads = cores + 1
    planned_streams = min(max(1, max_streams), max(1, math.ceil(share * threads - 1e-9)))
    planned_workers = max(1, math.ceil((1 - share) * threads - 1e-9))
    basis = (f"measured {costs.decode_ms:.0f} core-ms reading+preprocessing and {costs.forward_ms:.0f} core-ms "
             f"inference per image" if costs else "nothing measured yet: inference assumed half the work")
    fixed = [f"{name} {n} as asked" for name, n in (("workers", workers), ("streams", streams)) if n is not None]
    reason = (f"{cores} core(s), {basis}: threads in proportion to the costs over {threads}"
              + (f"; {', '.join(fixed)}" if fixed else ""))
    return ThreadBudget(cores, workers if workers is not None else planned_workers,
                        streams if streams is not None else planned_streams, costs, reason)


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


class Gate:
    """A semaphore whose limit can change while threads wait on it (the budget is re-planned during a run)."""

    def __init__(self, limit: int):
        self._cond = threading.Condition()
        self._limit, self._active = max(1, limit), 0

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = max(1, int(limit))
            self._cond.notify_all()

    def __enter__(self):
        with self._cond:
            self._cond.wait_for(lambda: self._active < self._limit)
            self._active += 1
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._active -= 1
            self._cond.notify_all()


def _proc_stat_busy_s() -> float | None:
    """Seconds of CPU time all processes have used since boot (everything but idle and iowait), from /proc/stat."""
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

    def __init__(self):
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None  # (wall, all busy s, this process's CPU s)

    def busy_cores(self) -> float | None:
        now, busy, mine = time.monotonic(), _proc_stat_busy_s(), time.process_time()
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
        runnable = _runnable_now()
        return None if runnable is None else share * float(max(0, runnable - 1))


LOAD = LoadMeter()
