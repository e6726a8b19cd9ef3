"""``medge batch``: classify an archive on Ray, one row per input, resumable.

Usage: medge batch --model bundles/xray /archive/studies --out results.parquet --workers 2

Inputs are files and folders (folders scanned by content, as ``medge predict`` does)
and/or ``--manifest FILE``, one path a line. Each worker is a Ray actor that loads and
verifies the bundle once (``medge.edge.batch.BatchPredictor``), with ``--threads``
OpenCV threads (default 1: one worker per core). Without ``--ray`` a local Ray instance
is started with one CPU per worker; ``--ray auto`` or ``--ray ADDRESS`` joins a running
cluster, whose workers must see the inputs and the bundle at the same paths.

The output holds exactly one row per input, in input order: ``medge predict``'s record
plus ``file_size`` and ``file_mtime_ns``, the input's identity when it was read.
Parquet (the default) stores the record's dict and list fields (probabilities,
timings_ms, warnings, input; a multi-label bundle's decisions, thresholds and
positive_findings, beside its task and any_positive columns) as JSON text: the floats read back exactly
(``medge.edge.batch.row_to_record`` gives the record back); ``--format jsonl`` writes
the records as ``medge predict`` does.

Resume: an existing --out is read, not refused: the inputs it holds with the same
path, size and modification time are not redone, and rows of inputs that are no
longer given are dropped. Rows done by a run that was cut short are kept beside the
output (``.NAME.parts/``) and used the same way. --overwrite starts afresh. An --out
that is not a medge batch output, or holds another model's results, is refused (exit 2).

A worker that dies (killed, out of memory, a crash in a decoder) is restarted and its
batch retried, up to 3 times; inputs whose batch still fails get an error row, redone
on the next run.

Exit status: 0 every input classified, 1 some input failed (each has its row),
2 usage or configuration error (bad option, bad bundle, existing output that is not
this command's), 3 a bug.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medge.edge.apps.options import add_bundle_arguments, add_strict_argument, at_least
from medge.edge.apps.records import FindingCounts
from medge.edge.batch import JSON_FIELDS, BatchPredictor, record_to_row, row_to_record
from medge.edge.errors import UsageError
from medge.edge.inputs.scanning import Scan, scan_inputs
from medge.edge.model import Model
from medge.edge.outputs import atomic_write_text, check_output_file, open_atomic, wrote
from medge.edge.paths import shown, to_json
from medge.edge.prediction import Prediction
from medge.edge.progress import ProgressLine
from medge.edge.system import usable_cores

FORMATS = ("parquet", "jsonl")
IDENTITY = ("file_size", "file_mtime_ns")  # the columns beside the record: what resume compares
RETRIES = 3  # restarts of a dead worker and retries of its batch (Ray's default is forever: a poison file would loop)
MAX_ROWS_PER_TASK = 32  # files per Ray task, at most: smaller tasks balance the workers, larger ones cost less
FLUSH_ROWS, FLUSH_S = 256, 10.0  # rows done are saved beside the output this often (what a cut-short run keeps)
ROW_INDEX = "index"  # the column that joins a Ray row to its input


@dataclass(frozen=True)
class InputKey:
    """An input's identity for resume: its path, size and modification time when it was read."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> InputKey | None:
        """The key of a file now; None when it cannot be stat'ed (its row is an error, redone on every run)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(path, st.st_size, st.st_mtime_ns)

    @classmethod
    def of_row(cls, rec: dict) -> InputKey | None:
        """The key a saved row was made for; None for rows to redo (no identity: an error before reading)."""
        size, mtime = rec.get(IDENTITY[0]), rec.get(IDENTITY[1])
        return None if size is None or mtime is None else cls(rec["path"], int(size), int(mtime))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("batch", help="classify an archive on Ray, resumable (extra: ray)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders (scanned by content)")
    p.add_argument("--manifest", action="append", default=[], metavar="FILE",
                   help="a text file of input paths, one a line (blank lines and lines starting with # ignored; "
                        "relative paths are relative to the current folder); may be given more than once")
    add_bundle_arguments(p)
    for action in p._actions:
        if action.dest == "threads":
            action.help = "OpenCV threads of each worker (default: %(default)s: one worker per core)"
    p.set_defaults(threads=1)
    p.add_argument("--batch-size", type=at_least(1), default=8, help="images per forward pass (default: %(default)s)")
    add_strict_argument(p)
    p.add_argument("--out", required=True, help="the results file (parent folders created); an existing one is resumed")
    p.add_argument("--format", choices=FORMATS, default="parquet", help="output format (default: %(default)s)")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="join a running Ray cluster ('auto': the one this machine belongs to; or its address); "
                        "default: start a local Ray instance with one CPU per worker")
    p.add_argument("--workers", type=at_least(1),
                   help="Ray workers (actors), each loading the bundle once (default: the local cores / the cluster's "
                        "CPUs, divided by --threads)")
    p.add_argument("--verbose", action="store_true", help="list the files skipped as not images")
    p.add_argument("--overwrite", action="store_true", help="start afresh: replace --out instead of resuming it")
    return p


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.out, overwrite=True, what="results")  # existing: resumed (below) or replaced
    model = Model.open(args.model, args.backend, args.engine, args.variant)  # files and SHA-256s, before Ray starts
    scan = scan_inputs(input_paths(args.paths, args.manifest))
    store = ResultStore(out, args.format, model.sha256, fresh=args.overwrite)
    records, todo, reused = plan(scan, store, model)
    progress = ProgressLine(len(todo), "images")
    if todo:
        kwargs = {"bundle": os.path.abspath(args.model), "threads": args.threads, "backend": args.backend, "engine": args.engine,
                  "batch_size": args.batch_size, "max_pixels": args.max_pixels, "strict": args.strict, "variant": args.variant}
        with ray_session(args.ray, args.workers, args.threads) as workers:
            failed = 0
            try:
                for i, rec in predict_on_ray([(i, scan.entries[i].path) for i in todo], kwargs, workers):
                    rec["path"] = scan.entries[i].path  # exact, also for a name that is not UTF-8
                    records[i] = with_identity(rec, todo[i])
                    store.add(records[i])
                    failed += rec["error"] is not None
                    progress.update(f"{failed} failed")
            finally:
                store.flush()
                progress.close()
    for i in todo:
        if i not in records:  # its batch failed on every try (Ray said so above): say it, redo it next time
            records[i] = lost_record(scan.entries[i].path, model)
    ordered = [records[i] for i in range(len(scan.entries))]
    store.write(ordered)
    report_summary(ordered, reused, scan, args.verbose, model.classes if model.findings is not None else None)
    wrote(out, "results")
    return 1 if any(r["error"] is not None for r in ordered) else 0


def input_paths(paths: list[str], manifests: list[str]) -> list[str]:
    """The paths given, then each manifest's lines; UsageError for a manifest that cannot be read, or no input at all."""
    found = list(paths)
    for manifest in manifests:
        try:
            data = Path(manifest).read_bytes()
        except OSError as e:
            raise UsageError(f"{shown(manifest)}: cannot read the manifest: {e.strerror or e}") from None
        for line in data.splitlines():  # bytes: a name that is not UTF-8 comes back exact (os.fsdecode)
            line = line.strip()
            if line and not line.startswith(b"#"):
                found.append(os.fsdecode(line))
    if not found:
        raise UsageError("no input: give files, folders or --manifest FILE")
    return found


def plan(scan: Scan, store: "ResultStore", model) -> tuple[dict[int, dict], dict[int, InputKey | None], int]:
    """What is known before any work, by input index: the records of entries that cannot be read and of inputs
    done before and unchanged; the inputs still to do, with their identity now; how many were done before.
    ``model``: the bundle opened (``Model.open``), whose error records are made here."""
    records, todo, reused = {}, {}, 0
    for i, entry in enumerate(scan.entries):
        if entry.error is not None:
            records[i] = with_identity(error_record(model, entry.path, f"{entry.path}: {entry.error}"), None)
            continue
        key = InputKey.of(entry.path)
        done = store.done.get(key) if key is not None else None
        if done is not None:
            records[i], reused = done, reused + 1
        else:
            todo[i] = key
    return records, todo, reused


def with_identity(rec: dict, key: InputKey | None) -> dict:
    """A record and its input's identity (None: redone on the next run)."""
    return {**rec, IDENTITY[0]: key and key.size, IDENTITY[1]: key and key.mtime_ns}


def error_record(model, path: str, error: str) -> dict:
    """The record of an input that was not classified: a multi-label bundle's (``model.findings``) with the findings'
    keys, as the worker's error records have them (``Model.error_prediction``); ``model``: a Model or an opened
    bundle (``Model.open``)."""
    thresholds = model.findings.thresholds if model.findings is not None else None
    return Prediction(path, error=error, thresholds=thresholds).to_record(model.sha256)


def lost_record(path: str, model) -> dict:
    """The row of an input whose batch failed on every try (no identity: the next run redoes it)."""
    why = (f"{path}: not classified: the Ray worker running its batch failed {RETRIES + 1} times (killed, out of "
           "memory, or a crash); run medge batch again to retry it")
    return with_identity(error_record(model, path, why), None)


@contextmanager
def ray_session(address: str | None, workers: int | None, threads: int):
    """Yield the number of workers, in a Ray session: the caller's if one is open, else a local instance
    (``address`` None) or the cluster at ``address``, shut down at the end."""
    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress line, not Ray's execution log
    own = not ray.is_initialized()
    if own and address is None:
        workers = workers or max(1, usable_cores() // threads)
        ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    elif own:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as e:  # no cluster there: the user's address, not a bug
            raise UsageError(f"--ray {address}: cannot join a Ray cluster: {e}") from None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
        yield workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    finally:
        if own:
            ray.shutdown()


def predict_on_ray(items: list[tuple[int, str]], predictor_kwargs: dict, workers: int, predictor=BatchPredictor):
    """Yield (index, record) for the (index, path) items, as Ray's actors finish them (in no particular order).

    Args:
        items: inputs to classify, each with the index it is reported under.
        predictor_kwargs: the arguments of ``predictor`` (``BatchPredictor``'s), sent to each actor.
        workers: actors in the pool.
        predictor: the callable class each actor runs (tests give one that dies once).

    A batch whose worker dies is retried on a restarted one (``RETRIES``); a batch that still fails
    yields nothing for its inputs (the caller gives them an error row).
    """
    import ray

    threads = predictor_kwargs.get("threads", 1)
    rows_per_task = max(1, min(MAX_ROWS_PER_TASK, math.ceil(len(items) / (4 * workers))))
    blocks = math.ceil(len(items) / rows_per_task)
    workers = min(workers, blocks)  # no idle actor starting for nothing (a rerun with little left to do)
    ds = ray.data.from_items([{ROW_INDEX: i, "path": os.fsencode(p)} for i, p in items], override_num_blocks=blocks)
    ds.context.max_errored_blocks = -1  # a batch failing every retry drops its rows, not the run: see above
    with warnings.catch_warnings():  # max_restarts and max_task_retries are still passed this way in Ray 2.60
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        rows = ds.map_batches(predictor, fn_constructor_kwargs=predictor_kwargs, batch_size=rows_per_task,
                              batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads,
                              max_restarts=RETRIES, max_task_retries=RETRIES)
    for batch in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            yield row.pop(ROW_INDEX), row_to_record(row)


class ResultStore:
    """The output file and the rows done beside it (``.NAME.parts/``): what a rerun does not redo.

    Rows are kept with their input's identity (``IDENTITY``); rows saved by an earlier run of the same
    output are read at start (UsageError when they are not this command's or another model's).
    """

    def __init__(self, out: Path, fmt: str, sha256: str, fresh: bool = False):
        self.out, self.fmt, self.sha256 = out, fmt, sha256
        self.parts = out.with_name(f".{out.name}.parts")
        self._pending, self._saved_at, self._seq = [], time.monotonic(), 0
        if fmt == "parquet":
            import pyarrow  # noqa: F401  (a missing extra is reported before any work)
        if fresh:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.done: dict[InputKey, dict] = {} if fresh else self._read_done()

    def _read_done(self) -> dict[InputKey, dict]:
        rows = self._read_output() if self.out.exists() else []
        for part in sorted(self.parts.glob("*.jsonl")) if self.parts.is_dir() else []:
            rows += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line]
        done = {}
        for rec in rows:
            if rec.get("model_sha256") != self.sha256:
                raise UsageError(f"{shown(self.out)}: holds results of another model ({rec.get('model_sha256')!s:.16}..., "
                                 f"this one is {self.sha256:.16}...): give another --out, or --overwrite to start afresh")
            key = InputKey.of_row(rec)
            if key is not None:
                done[key] = rec
        return done

    def _read_output(self) -> list[dict]:
        what = f"{shown(self.out)}: exists and is not a medge batch {self.fmt} output"
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                rows = [row_to_record(r) for r in pq.read_table(self.out).to_pylist()]
            else:
                rows = [json.loads(line) for line in self.out.read_text(encoding="utf-8").splitlines() if line]
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError; json's errors too
            raise UsageError(f"{what} ({type(e).__name__}: {str(e)[:200]}): give another --out, or --overwrite to "
                             "replace it") from None
        if rows and not all(isinstance(r, dict) and set(IDENTITY) <= set(r) and "path" in r for r in rows):
            raise UsageError(f"{what} (no {IDENTITY[0]} column): give another --out, or --overwrite to replace it")
        return rows

    def add(self, rec: dict) -> None:
        """Keep a row done now; saved beside the output every FLUSH_ROWS rows or FLUSH_S seconds."""
        self._pending.append(rec)
        if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._saved_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Save the rows done since the last flush as one more part (atomically: a part is whole or absent)."""
        if self._pending:
            self._seq += 1
            part = self.parts / f"part-{os.getpid()}-{time.time_ns()}-{self._seq}.jsonl"
            atomic_write_text(part, "".join(to_json(r) + "\n" for r in self._pending))
        self._pending, self._saved_at = [], time.monotonic()

    def write(self, records: list[dict]) -> None:
        """Write the output (atomically), then drop the parts it now holds."""
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([record_to_row(r) for r in records])
            meta = {"medge": to_json({"json_fields": sorted(JSON_FIELDS & set(table.column_names)),
                                      "identity": list(IDENTITY), "model_sha256": self.sha256})}
            table = table.replace_schema_metadata(meta)
            with open_atomic(self.out, "wb") as f:
                pq.write_table(table, f)
        else:
            with open_atomic(self.out, "w", newline="") as f:
                f.writelines(to_json(r) + "\n" for r in records)
        shutil.rmtree(self.parts, ignore_errors=True)


def report_summary(records: list[dict], reused: int, scan: Scan, verbose: bool, findings: list[str] | None = None) -> None:
    """The summary on stderr, e.g. "5 input(s) (2 done before), 3 classified now ..., 1 failed; 1 skipped: 1 not images";
    ``findings``: a multi-label bundle's, counted on a second line (``edge.apps.records.FindingCounts``)."""
    failed = sum(r["error"] is not None for r in records)
    warned = sum(bool(r["error"] is None and r["warnings"]) for r in records)
    line = (f"{len(records)} input(s)" + (f" ({reused} done before, not redone)" if reused else "")
            + f", {len(records) - failed} classified" + (f" ({warned} with warnings)" if warned else "")
            + f", {failed} failed" + (f"; {scan.skipped_summary()}" if scan.skipped else ""))
    print(shown(line), file=sys.stderr)
    if findings is not None:
        counts = FindingCounts(findings)
        for r in records:
            counts.add(r)
        print(counts.summary(), file=sys.stderr)
    if scan.skipped and verbose:
        for path, why in scan.skipped:
            print(f"  skipped {shown(path)}: {why}", file=sys.stderr)
    elif scan.skipped:
        print("  (--verbose lists the skipped files)", file=sys.stderr)
