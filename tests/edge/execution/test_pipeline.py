"""edge.execution.pipeline: order, batches, bounds and errors of the work-sharing pipeline (no model: plain functions)."""
import threading
import time

import pytest

from medge.edge.execution.pipeline import Pipeline


class Recorder:
    """prepare/infer callbacks that record what ran, and how much of it at once."""

    def __init__(self, bad=(), delay=0.0):
        self.lock = threading.Lock()
        self.bad, self.delay = set(bad), delay
        self.prepared, self.batches, self.inferring, self.most_inferring = [], [], 0, 0

    def prepare(self, item):
        time.sleep(self.delay * (item % 3))  # inputs finish out of order
        with self.lock:
            self.prepared.append(item)
        return {"item": item}, (None if item in self.bad else item * 10)

    def infer(self, batch):
        with self.lock:
            self.inferring += 1
            self.most_inferring = max(self.most_inferring, self.inferring)
        time.sleep(self.delay)
        for pred, tensor in batch:
            pred["out"] = tensor + 1
        with self.lock:
            self.inferring -= 1
            self.batches.append([pred["item"] for pred, _ in batch])


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_results_in_input_order_in_batches_of_consecutive_inputs(threads):
    rec = Recorder(bad={3, 8}, delay=0.002)
    got = list(Pipeline(range(11), 4, threads, 2, rec.prepare, rec.infer))
    assert [p["item"] for p in got] == list(range(11))
    assert [p.get("out") for p in got] == [None if i in (3, 8) else i * 10 + 1 for i in range(11)]
    # batches are the inputs 4 at a time, the failed ones left out, whatever the timing
    assert sorted(rec.batches) == [[0, 1, 2], [4, 5, 6, 7], [9, 10]]
    assert rec.most_inferring <= 2


def test_a_batch_with_nothing_to_infer_is_given_back_without_a_pass():
    rec = Recorder(bad={0, 1})
    got = list(Pipeline(range(3), 2, 2, 2, rec.prepare, rec.infer))
    assert [p.get("out") for p in got] == [None, None, 21] and rec.batches == [[2]]


def test_empty_inputs_and_one_thread():
    rec = Recorder()
    assert list(Pipeline([], 8, 3, 1, rec.prepare, rec.infer)) == []
    assert [p["out"] for p in Pipeline(iter(range(5)), 2, 1, 1, rec.prepare, rec.infer)] == [1, 11, 21, 31, 41]


def test_passes_at_once_never_exceed_the_cap():
    rec = Recorder(delay=0.01)
    list(Pipeline(range(24), 1, 6, 2, rec.prepare, rec.infer))
    assert rec.most_inferring == 2  # six threads, batches of one: the cap binds


def test_a_slow_consumer_holds_the_pipeline_to_its_window():
    rec = Recorder()
    it = iter(Pipeline(range(1000), 2, 2, 1, rec.prepare, rec.infer, window=6))
    first = next(it)
    time.sleep(0.3)  # the threads would read everything if nothing held them
    assert first["item"] == 0 and len(rec.prepared) <= 6 + 2
    it.close()  # leaving early stops the threads
    assert not [t for t in threading.enumerate() if t.name.startswith("medge-pipeline")]


def test_a_bug_in_a_stage_or_the_inputs_reaches_the_consumer_and_stops_the_threads():
    def bad_infer(batch):
        raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        list(Pipeline(range(10), 2, 2, 2, rec.prepare, bad_infer))

    def inputs():
        yield 1
        raise ValueError("the scan broke")

    with pytest.raises(ValueError, match="the scan broke"):
        list(Pipeline(inputs(), 2, 2, 2, rec.prepare, rec.infer))
    assert not [t for t in threading.enumerate() if t.name.startswith("medge-pipeline")]


@pytest.mark.parametrize("threads", [2, 3])
def test_a_stream_that_waits_for_its_next_input_holds_up_no_inference(threads):
    """Inputs that arrive one at a time (a DICOM node's spool): the next is only produced once the result of the
    one before is out. A thread waiting for the stream must leave the others free to infer what is there."""
    rec = Recorder()
    given_back = threading.Event()

    def stream():
        for i in range(4):
            yield i
            if not given_back.wait(10):
                raise AssertionError(f"input {i}'s result never came back while the stream waited")
            given_back.clear()

    got = []
    for pred in Pipeline(stream(), 1, threads, 1, rec.prepare, rec.infer):
        got.append(pred["out"])
        given_back.set()
    assert got == [1, 11, 21, 31]
