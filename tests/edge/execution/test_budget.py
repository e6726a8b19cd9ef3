import cv2
import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.execution import budget
from medge.edge.execution.budget import MAX_STREAMS, LoadMeter, StageCosts, lone_threads, opencv_threads, pass_size, plan_budget
from medge.edge.model import Model
from tests.conftest import xray_like


@pytest.mark.parametrize("cores, threads, forwards", [(1, 1, 1), (2, 2, 2), (8, 8, 8), (16, 16, MAX_STREAMS)])
def test_one_thread_per_core_and_a_cap_on_passes_at_once(cores, threads, forwards):
    b = plan_budget(cores, StageCosts(43, 39))
    assert (b.cores, b.threads, b.forwards) == (cores, threads, forwards)
    assert f"{cores} core(s): {threads} thread(s)" in b.reason and "measured 43 core-ms" in b.reason
    assert b.to_dict()["costs"]["forward_ms"] == 39


def test_budget_before_anything_is_measured_and_as_asked():
    b = plan_budget(2)
    assert (b.threads, b.forwards, b.costs) == (2, 2, None) and "measured" not in b.reason
    b = plan_budget(4, threads=1)
    assert (b.threads, b.forwards) == (1, 1) and "threads 1 as asked" in b.reason
    b = plan_budget(4, threads=6, forwards=3)
    assert (b.threads, b.forwards) == (6, 3) and "forwards 3 as asked" in b.reason
    assert plan_budget(0).cores == 1  # never zero cores


@pytest.mark.parametrize("batch, inputs, threads, per_pass", [
    (8, None, 2, 8),  # an iterator: the batch asked
    (8, 1000, 16, 8),  # a long run: the batch asked
    (8, 24, 2, 3), (8, 20, 2, 3), (8, 40, 2, 5), (8, 64, 2, 8),  # short runs: at least 4 batches per thread
    (8, 9, 16, 1), (1, 24, 2, 1), (0, 5, 2, 1)])
def test_a_short_run_gets_smaller_passes(batch, inputs, threads, per_pass):
    assert pass_size(batch, inputs, threads) == per_pass
    b = plan_budget(threads, batch_size=batch, inputs=inputs)
    assert b.batch_size == per_pass and f"{per_pass} image(s) per pass" in b.reason
    assert (f"not {batch}: a run of {inputs} inputs" in b.reason) == (per_pass < batch)
    assert plan_budget(threads).batch_size is None  # not planned without a batch size


@pytest.mark.parametrize("cores, busy, threads", [(2, 0.0, 2), (2, 1.0, 1), (2, 5.0, 1), (8, 2.6, 5), (4, None, 4)])
def test_lone_work_gets_the_idle_cores(cores, busy, threads):
    assert lone_threads(cores, busy) == threads


def test_opencv_threads_are_restored_after_overlapping_runs():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        with opencv_threads(1):
            assert cv2.getNumThreads() == 1 and budget.budget_cores() == 2  # plans for the setting outside runs
            with opencv_threads(1):
                pass
            assert cv2.getNumThreads() == 1  # the outer run is still going
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_load_meter_counts_other_processes_cpu_time(monkeypatch):
    clock = {"wall": 100.0, "busy": 50.0, "mine": 3.0}

    class FakeTime:
        monotonic = staticmethod(lambda: clock["wall"])
        process_time = staticmethod(lambda: clock["mine"])

    monkeypatch.setattr(budget, "time", FakeTime)
    monkeypatch.setattr(budget, "usable_cores", lambda: 2)
    monkeypatch.setattr(budget.os, "cpu_count", lambda: 2)
    meter = LoadMeter(read_busy_s=lambda: clock["busy"], read_runnable=lambda: 4)
    assert meter.busy_cores() == 3.0  # no earlier reading: the threads runnable now, less this one
    clock.update(wall=101.0, busy=51.8, mine=3.5)  # 1.8 s of CPU in 1 s of which 0.5 s ours
    assert meter.busy_cores() == pytest.approx(1.3)
    clock.update(wall=101.05, busy=51.9, mine=3.55)  # too soon after the last reading: runnable threads again
    assert meter.busy_cores() == 3.0
    monkeypatch.setattr(budget.os, "cpu_count", lambda: 8)  # pinned to 2 of a host's 8 cores: a quarter of it is ours
    assert meter.busy_cores() == 0.75


def _arrays(n):
    return [xray_like(40 + 3 * i, 36, seed=i, bits=16 if i % 3 == 0 else 8) for i in range(n)]


def test_pipeline_gives_the_sequential_results_in_order_and_plans_its_budget(bundle):
    m = Model.load(bundle)
    items = _arrays(13)
    items[4] = np.zeros((0, 0), np.uint8)  # an empty image fails alone
    items[9] = "/no/such/file.png"
    before = cv2.getNumThreads()
    pipelined = m.predict(items, batch_size=4)
    assert cv2.getNumThreads() == before  # the pipeline's single-threaded passes do not leak
    sequential = m.predict(items, batch_size=4, workers=0)
    assert [p.path for p in pipelined] == [p.path for p in sequential]
    assert [p.ok for p in pipelined] == [i not in (4, 9) for i in range(13)]
    for a, b in zip(pipelined, sequential, strict=True):
        assert a.error == b.error
        if a.ok:
            np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-5)
    b = m.budget
    assert b is not None and b.costs is not None and b.costs.decode_ms > 0 and b.costs.forward_ms > 0
    assert b.threads >= 1 and 1 <= b.forwards <= MAX_STREAMS and "measured" in b.reason
    assert 1 <= len(m.net_pool) <= b.forwards  # a net per pass that ran at once, kept for the next run


def test_pipeline_workers_and_streams_as_asked(bundle):
    m = Model.load(bundle)
    items = _arrays(10)
    got = m.predict(items, batch_size=2, workers=1, streams=3)
    assert (m.budget.threads, m.budget.forwards, m.budget.batch_size) == (1, 3, 2) and all(p.ok for p in got)
    got = m.predict(items, batch_size=8, workers=2)  # 10 inputs on 2 threads: passes of 2, same results
    assert m.budget.batch_size == 2
    np.testing.assert_allclose([p.logits for p in got], [p.logits for p in m.predict(items, workers=0)], rtol=0, atol=1e-5)
    with pytest.raises(UsageError, match="workers must be 0 or more"):
        m.predict(items, workers=-1)
    with pytest.raises(UsageError, match="streams must be 1 or more"):
        m.predict(items, streams=0)


def test_one_batch_runs_without_a_pipeline_and_gives_the_same_results(bundle):
    m = Model.load(bundle)
    items = [*_arrays(3), "/no/such/file.png", *_arrays(2)]
    before = cv2.getNumThreads()
    one_batch = m.predict(items, batch_size=8)
    assert m.budget is None and cv2.getNumThreads() == before  # no inference to overlap: no thread budget planned
    in_turn = m.predict(items, batch_size=8, workers=0)
    assert [p.ok for p in one_batch] == [p.ok for p in in_turn] == [True, True, True, False, True, True]
    np.testing.assert_array_equal([p.logits for p in one_batch if p.ok], [p.logits for p in in_turn if p.ok])
    assert m.predict(items[0], batch_size=8)[0].logits == one_batch[0].logits  # one input: in this thread
