"""Batch inference on a cluster engine: a callable class for Ray Data's ``map_batches`` and Dask's ``map_partitions``.

Usage:
    import ray
    from medge.edge.batch import BatchPredictor
    ds = ray.data.read_binary_files("/archive/studies", include_paths=True)  # columns: bytes, path
    rows = ds.map_batches(BatchPredictor, fn_constructor_kwargs={"bundle": "bundles/xray"}, batch_size=16,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=8), num_cpus=1)
    rows.write_parquet("results/")

No Ray here: this module needs numpy and OpenCV only (``medge batch``, ``edge.apps.batch``, drives Ray).

The hazards guarded against, each of which turns a cluster run into a slower or failed one:

- a worker that loads the bundle per batch (reading it, its SHA-256 and its golden
  self-test, each time): ``BatchPredictor`` loads and verifies it once, in its constructor,
  and Ray keeps the instance for the actor's life;
- N workers on a box each using every core through OpenCV's thread pool (N x cores
  threads fighting): each sets OpenCV's threads for itself (``threads``, default 1:
  one worker per core, parallelism from the workers);
- one bad file failing the whole batch (Ray retries it, then fails the run): a file
  that cannot be read gets an error row, like ``medge predict``'s error record.

A row is ``medge predict``'s record (``Prediction.to_record``), whatever keys it has:
fields that hold a dict or a list (probabilities, timings, warnings, what the input
is; a multi-label bundle's decisions, thresholds and positive findings) are JSON
text, so that every row has the same flat column types in Arrow and Parquet and the
floats come back exactly (JSON writes the shortest text that reads back as the same
double); ``row_to_record`` turns a row back into the record. Text
that is not valid UTF-8 (a file name from an old share) is written as ``\\udcXX``,
as medge writes it in CSV (``edge.paths``). Other input columns are passed through.
A multi-label bundle's rows (``edge.findings``) also have ``task`` (text), ``decisions``,
``thresholds`` and ``positive_findings`` (JSON text; null in an error row's decisions and
positive findings) and ``any_positive`` (bool, null in an error row): an error row has
the same columns as the others.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import EncodedFile
from medge.edge.model import Model
from medge.edge.paths import shown, to_json
from medge.edge.prediction import Prediction

PATH, BYTES = "path", "bytes"  # the input columns (read_binary_files(..., include_paths=True) gives both)


def _nested_fields(**findings) -> frozenset[str]:
    """The record's fields that hold a dict or a list, from a classified input's record (``findings``: a multi-label
    one's decisions and thresholds)."""
    rec = Prediction("", label="", probabilities={}, logits=[], input={}, **findings).to_record("", {})
    return frozenset(k for k, v in rec.items() if isinstance(v, (dict, list)))


NESTED_FIELDS = _nested_fields()  # JSON text in a row
FINDINGS_FIELDS = _nested_fields(decisions={}, thresholds={}) - NESTED_FIELDS  # and in a multi-label bundle's row
JSON_FIELDS = NESTED_FIELDS | FINDINGS_FIELDS
_LOADED: dict[tuple, Model] = {}  # bundles loaded in this process by unpickled predictors (Dask), by their arguments


class BatchPredictor:
    """A bundle loaded and verified once per worker; each call classifies a batch of files into record columns.

    Args:
        bundle: the bundle folder (it must be readable at the same path on every worker).
        threads: OpenCV threads of this worker (``cv2.setNumThreads``): 1 when the engine runs one worker per core.
        backend, engine, variant: as ``Model.load``.
        batch_size: images per forward pass.
        max_pixels: refuse larger images.
        strict: an input with warnings gets an error instead of a label (``medge predict --strict``).

    Raises:
        the errors of ``Model.load`` (BundleError, ModelIntegrityError, SelfTestError, ConfigError), in the
        constructor: a worker that cannot load the bundle fails at once, not on each batch.
    """

    def __init__(self, bundle: str | os.PathLike, threads: int = 1, backend: str = "cpu", engine: str | None = None,
                 batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = False, variant: str | None = None):
        self._args = {"bundle": os.fspath(bundle), "threads": threads, "backend": backend, "engine": engine,
                      "batch_size": batch_size, "max_pixels": max_pixels, "strict": strict, "variant": variant}
        cv2.setNumThreads(threads)
        self.model = Model.load(bundle, backend=backend, engine=engine, variant=variant)
        self.batch_size, self.max_pixels, self.strict = batch_size, max_pixels, strict

    def __getstate__(self) -> dict:
        """Pickled as its arguments (a loaded net cannot be pickled): Dask sends the instance with its tasks."""
        return self._args

    def __setstate__(self, args: dict) -> None:
        """Unpickled in a worker: the bundle loaded and verified once per process, however many tasks bring it."""
        key = tuple(sorted((k, v) for k, v in args.items() if k in ("bundle", "backend", "engine", "variant")))
        cv2.setNumThreads(args["threads"])
        self._args, self.model = args, _LOADED.get(key) or _LOADED.setdefault(key, Model.load(
            args["bundle"], backend=args["backend"], engine=args["engine"], variant=args.get("variant")))
        self.batch_size, self.max_pixels, self.strict = args["batch_size"], args["max_pixels"], args["strict"]

    def predict(self, paths, data=None) -> list[Prediction]:
        """One Prediction per path, in order (``data``: each file's bytes, already read, or None to read the path)."""
        paths = [os.fsdecode(p) for p in paths]
        items = paths if data is None else [EncodedFile(p, bytes(d)) for p, d in zip(paths, data, strict=True)]
        # workers=0: in this thread with this worker's OpenCV threads; the engine's workers are the parallelism.
        return self.model.predict(items, self.batch_size, workers=0, max_pixels=self.max_pixels, strict=self.strict)

    def __call__(self, batch) -> dict:
        """Record columns for a batch: a dict of column -> array (Ray's "numpy" format) or a pandas DataFrame (Dask).

        The input has a ``path`` column (str, or bytes for a file name that is not UTF-8) and optionally
        ``bytes``, each file's content; its other columns come back unchanged. Returns the same type as given.
        """
        data = batch[BYTES] if BYTES in batch else None
        records = [p.to_record(self.model.sha256, self.model.runtime) for p in self.predict(list(batch[PATH]), data)]
        columns = records_to_columns(records, self.model.error_prediction(None, "").to_record(""))
        for name in batch:  # e.g. an id column the caller joins on
            if name not in columns and name != BYTES:
                columns[name] = np.asarray(batch[name])
        if type(batch).__name__ == "DataFrame":  # Dask's map_partitions gives and wants pandas: no import needed
            return type(batch)(columns, index=batch.index)
        return columns


def record_to_row(rec: dict) -> dict:
    """A record as a flat row: dict and list fields as JSON text, text as valid UTF-8 (see the module docstring)."""
    return {k: to_json(v) if isinstance(v, (dict, list)) else shown(v) if isinstance(v, str) else v
            for k, v in rec.items()}


def row_to_record(row: dict) -> dict:
    """The record a row holds: JSON fields decoded (the inverse of ``record_to_row`` for valid UTF-8 text)."""
    return {k: json.loads(v) if k in JSON_FIELDS and isinstance(v, str) else v for k, v in row.items()}


def records_to_columns(records: list[dict], template: dict | None = None) -> dict[str, np.ndarray]:
    """Rows of ``record_to_row`` as columns (object arrays: text and None side by side).

    Args:
        records: the records of one batch.
        template: a record of the bundle (``Model.error_prediction(...).to_record``): its keys are the columns of an
            empty batch (a multi-label bundle's have the findings' keys); default a single-label record's.

    Returns:
        {column: object array}, the columns in the records' order.
    """
    keys = list(records[0] if records else template if template is not None else Prediction(None).to_record(""))
    rows = [record_to_row(r) for r in records]
    columns = {}
    for k in keys:
        col = np.empty(len(rows), dtype=object)  # np.array of equal-length lists would build a 2-D array
        col[:] = [r[k] for r in rows]
        columns[k] = col
    return columns
