"""The pipelined predict: a few threads that each read, preprocess or infer, whichever is next.

Every thread of the pipeline takes the next job when it is free: a batch whose
inputs are all read and preprocessed is inferred first (``forwards`` at most at
once: each forward pass holds a net), else the next input is read and
preprocessed. So both stages always have all the threads they can use, in
whatever proportion the model, the files and the load on the box give, with
never more threads running than the pipeline has (``edge.execution.budget`` says why this
beats a fixed split). Batches are the inputs in input order, ``batch_size`` at a
time (the last one may be shorter): which images share a forward pass does not
depend on timing, so the outputs are the same from run to run. Results come back
in input order; at most ``window`` inputs are taken ahead of the last one given
back, so a slow consumer holds the pipeline instead of filling the memory.

Only the standard library: the work itself is the caller's ``prepare`` and ``infer``.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable, Iterator

FILLING, CLAIMED, DONE = "filling", "claimed", "done"
_END = object()  # the inputs ran out


class _Batch:
    """Up to ``batch_size`` consecutive inputs and what became of them."""

    __slots__ = ("preds", "tensors", "pending", "closed", "state")

    def __init__(self):
        self.preds: list = []  # the prepared prediction of each input (None while it is being read)
        self.tensors: list = []  # its model input, or None (unreadable, refused)
        self.pending = 0  # inputs still being read and preprocessed
        self.closed = False  # no more inputs join (full, or the inputs ran out)
        self.state = FILLING

    def ready(self) -> bool:
        return self.state == FILLING and self.closed and self.pending == 0


class Pipeline:
    """Run ``prepare`` on every input and ``infer`` on batches of them, on ``threads`` threads; iterate for the
    predictions in input order.

    Args:
        inputs: any iterable, taken lazily by one thread at a time, outside the pipeline's lock: an iterator that
            blocks until the next input arrives (a stream) holds up no inference meanwhile.
        batch_size: inputs per batch (>= 1).
        threads: threads of the pipeline (>= 1); each reads or infers, whichever is next.
        forwards: at most this many batches inferred at once (>= 1).
        prepare: ``item -> (prediction, tensor or None)``; must not raise for a bad input.
        infer: ``[(prediction, tensor), ...] -> None``, fills in the predictions.
        window: at most this many inputs taken and not yet given back (default: enough for every thread
            to work ahead by a batch).

    An exception from ``prepare``, ``infer`` or the inputs (a bug, not a bad input) stops the
    pipeline and is raised to the consumer; leaving the iteration early stops the threads.
    """

    def __init__(self, inputs: Iterable, batch_size: int, threads: int, forwards: int,
                 prepare: Callable, infer: Callable, window: int | None = None):
        self._inputs = iter(inputs)
        self._batch_size, self._threads = max(1, batch_size), max(1, threads)
        self._max_forwards = max(1, forwards)
        self._prepare, self._infer = prepare, infer
        self._window = window or self._batch_size * (self._threads + 1) + self._threads
        self._cond = threading.Condition()
        self._batches: deque[_Batch] = deque()  # not yet given back, in input order
        self._ahead = 0  # inputs taken and not yet given back
        self._forwards = 0  # batches being inferred
        self._exhausted = False
        self._taking = False  # a thread is asking the inputs for the next one
        self._stop = False
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator:
        workers = [threading.Thread(target=self._work, name=f"medge-pipeline-{i}", daemon=True)
                   for i in range(self._threads)]
        for t in workers:
            t.start()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._error is not None
                                        or (self._batches and self._batches[0].state == DONE)
                                        or (self._exhausted and not self._batches))
                    if self._error is not None:
                        raise self._error
                    if not self._batches:
                        return
                    batch = self._batches.popleft()
                    self._ahead -= len(batch.preds)
                    self._cond.notify_all()
                yield from batch.preds
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            for t in workers:
                t.join()

    def _work(self) -> None:
        try:
            while (job := self._next_job()) is not None:
                if isinstance(job, _Batch):
                    try:
                        self._infer([(p, t) for p, t in zip(job.preds, job.tensors, strict=True) if t is not None])
                    finally:
                        with self._cond:
                            job.tensors = []  # the memory goes as soon as the batch is done
                            job.state = DONE
                            self._forwards -= 1
                            self._cond.notify_all()
                else:
                    batch, i, item = job
                    pred, tensor = self._prepare(item)
                    with self._cond:
                        batch.preds[i], batch.tensors[i] = pred, tensor
                        batch.pending -= 1
                        self._cond.notify_all()
        except BaseException as e:  # a bug: stop everything and tell the consumer
            with self._cond:
                if self._error is None:
                    self._error = e
                self._cond.notify_all()

    def _next_job(self):
        """The next job for a free thread: a ready batch to infer, else an input to read, else wait; None when
        nothing is left for this thread."""
        with self._cond:
            while not self._stop and self._error is None:
                if self._forwards < self._max_forwards:
                    for batch in self._batches:
                        if not batch.ready():
                            continue
                        if any(t is not None for t in batch.tensors):
                            batch.state = CLAIMED
                            self._forwards += 1
                            return batch
                        batch.state = DONE  # nothing in it to infer
                        self._cond.notify_all()
                if not self._exhausted and not self._taking and self._ahead < self._window:
                    job = self._take_input()
                    if job is not None:
                        return job
                    continue
                if self._exhausted and all(b.state != FILLING for b in self._batches):
                    return None
                self._cond.wait()
            return None

    def _take_input(self):
        """(batch, index, item) for the next input, or None when the inputs ran out or the pipeline stopped meanwhile.
        Called under the lock, which is let go while the inputs are asked: other threads infer and read meanwhile."""
        self._taking = True
        self._cond.release()
        try:
            item = next(self._inputs, _END)
        finally:
            self._cond.acquire()
            self._taking = False
            self._cond.notify_all()
        if self._stop:
            return None
        if item is _END:
            self._exhausted = True
            if self._batches:
                self._batches[-1].closed = True
            self._cond.notify_all()
            return None
        if not self._batches or self._batches[-1].closed:
            self._batches.append(_Batch())
        batch = self._batches[-1]
        batch.preds.append(None)
        batch.tensors.append(None)
        batch.pending += 1
        batch.closed = len(batch.preds) == self._batch_size
        self._ahead += 1
        return batch, len(batch.preds) - 1, item
