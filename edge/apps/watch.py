"""``medge watch``: a hot folder for PACS routers that drop files into a folder.

Usage: medge watch incoming/ results/ --model bundles/xray

- A file is taken once its size and modification time have not changed for
  ``--settle`` seconds (so a file still being written is left alone). Hidden
  files and names ending in .part, .partial, .tmp, .filepart are ignored: routers
  that write under a temporary name and rename are handled without waiting.
- Files are recognised by content, as ``medge predict`` does (``edge.inputs``):
  a DICOM without an extension is classified; a file that is not an image (a
  text file, a DICOMDIR) is left in place, logged once and recorded as skipped.
- Each result is written atomically to ``OUT/results/<relative path>.json``,
  with the record's ``warnings`` (``--strict`` quarantines such inputs instead).
- Inputs that fail are moved to ``OUT/quarantine/<relative path>`` with a
  ``.reason.txt`` beside them; nothing is dropped silently. So are entries
  that cannot be read (a named pipe, a device, a broken link); a subfolder
  medge may not open is logged and recorded once (it is not moved).
- Any file name works: one that is not UTF-8 is written as \\udcXX escapes in
  the results, the ledger and the log (``edge.paths``).
- ``OUT/.medge-watch.jsonl`` records every file handled (path, size, mtime), so a
  restart neither reprocesses nor skips anything; a result found on disk for the
  same file version (after a crash between the two writes) is recorded, not redone.
- SIGINT and SIGTERM finish the current batch and stop cleanly (exit 0).
- ``--once`` handles what is there (waiting for files to settle) and exits.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from medge.edge.apps.options import add_model_arguments, add_strict_argument, load_model
from medge.edge.apps.records import findings_text
from medge.edge.errors import UsageError
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.scanning import classify_file, walk
from medge.edge.model import Model
from medge.edge.outputs import atomic_write_text, check_output_dir
from medge.edge.paths import shown, to_json
from medge.edge.prediction import Prediction

LEDGER = ".medge-watch.jsonl"
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload")


@dataclass(frozen=True)
class FileVersion:
    """One version of an input file: its path relative to the input folder, size and mtime."""

    rel: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """The ledger's identity of this version: a JSON list, unambiguous whatever the file name holds."""
        return json.dumps([self.rel, self.size, self.mtime_ns], ensure_ascii=False)  # may hold surrogates: to_json


def _ledger_key(key: str) -> str:
    """A ledger key as this version writes it; ledgers of medge 0.1 wrote "rel|size|mtime_ns"."""
    if key.startswith("["):
        return key
    rel, size, mtime_ns = key.rsplit("|", 2)
    return FileVersion(rel, int(size), int(mtime_ns)).key


def _free_name(path: Path, suffix: str = "") -> Path:
    """``path`` + suffix, or the first ``path.N`` + suffix that does not exist yet."""
    candidate, n = Path(f"{path}{suffix}"), 1
    while candidate.exists():
        candidate, n = Path(f"{path}.{n}{suffix}"), n + 1
    return candidate


def check_folders(in_dir: Path, out_dir: Path) -> None:
    """UsageError unless IN_DIR is a folder and OUT_DIR a folder (or creatable) outside it."""
    if in_dir.is_file():
        raise UsageError(f"{in_dir}: is a file: give the folder the router drops files into")
    if not in_dir.is_dir():
        raise UsageError(f"{in_dir}: input folder not found")
    check_output_dir(out_dir, "results")
    if out_dir.resolve() == in_dir.resolve() or in_dir.resolve() in out_dir.resolve().parents:
        raise UsageError(f"{out_dir}: the output folder must not be inside the input folder")


class HotFolder:
    """Watches ``in_dir`` and writes results and quarantined files under ``out_dir``."""

    def __init__(self, model: Model, in_dir: str | os.PathLike, out_dir: str | os.PathLike, settle_s: float = 2.0,
                 batch_size: int = 8, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, log=print,
                 strict: bool = False, streams: int | None = None):
        self.model, self.in_dir, self.out_dir = model, Path(in_dir), Path(out_dir)
        check_folders(self.in_dir, self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.settle_s, self.batch_size, self.workers = settle_s, batch_size, workers
        self.max_pixels, self.strict, self.streams = max_pixels, strict, streams
        self.log = lambda msg: log(shown(msg))  # a non-UTF-8 name must not kill the hot folder
        self.ledger_path = self.out_dir / LEDGER
        self.done: set[str] = set()
        self.counts = {"classified": 0, "quarantined": 0, "recovered": 0, "skipped": 0, "errors": 0}
        self._seen: dict[str, tuple[FileVersion, float]] = {}  # rel -> (version, when first seen so)
        if self.ledger_path.exists():
            for line in self.ledger_path.read_text(encoding="utf-8").splitlines():
                try:
                    self.done.add(_ledger_key(json.loads(line)["key"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut short by a crash: that file is simply handled again

    def scan(self, now: float | None = None) -> tuple[list[tuple[Path, FileVersion, str | None]], int]:
        """Entries ready to handle, as (path, version, error or None), and how many files are still settling.

        Regular files wait to settle; an entry that cannot be read (a named pipe, a
        broken link, a folder medge may not open) is ready at once, with its error.
        """
        now = time.monotonic() if now is None else now
        ready, settling = [], 0
        for kind, found, why in walk(self.in_dir):
            p = Path(found)
            rel = p.relative_to(self.in_dir).as_posix()
            if any(part.startswith(".") for part in Path(rel).parts) or p.name.lower().endswith(TEMP_SUFFIXES):
                continue
            if kind == "skip":
                continue  # a folder reached a second time through a link: watched under its first path
            try:
                st = p.stat() if kind == "file" else p.lstat()
            except OSError:
                continue  # vanished between listing and stat
            version = FileVersion(rel, st.st_size if kind == "file" else 0, st.st_mtime_ns)
            if version.key in self.done:
                continue
            if kind == "error":
                ready.append((p, version, why))
                continue
            prev = self._seen.get(rel)
            if prev is None or prev[0] != version:
                self._seen[rel] = (version, now)
                settling += 1
            elif now - prev[1] >= self.settle_s:
                ready.append((p, version, None))
            else:
                settling += 1
        return ready, settling

    def _record(self, entry: dict) -> None:
        with open(self.ledger_path, "a", encoding="utf-8") as f:
            f.write(to_json(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(entry["key"])
        self._seen.pop(entry["path"], None)

    def _existing_result(self, rel: str, key: str) -> Path | None:
        base = self.out_dir / "results" / rel
        for candidate in [Path(f"{base}.json"), *sorted(base.parent.glob(f"{base.name}.*.json"))]:
            try:
                if json.loads(candidate.read_text(encoding="utf-8")).get("source", {}).get("key") == key:
                    return candidate
            except (OSError, json.JSONDecodeError):
                continue
        return None

    def handle(self, items: list[tuple[Path, FileVersion, str | None]]) -> None:
        """Classify ready files; write results, quarantine or skip; record each in the ledger."""
        todo = []
        for path, v, error in items:
            if error is not None:
                self._fail(path, v, Prediction(str(path), error=f"{path}: {error}"))
                continue
            found = self._existing_result(v.rel, v.key)
            if found is not None:  # crashed after writing the result, before recording it
                self._record({"key": v.key, "path": v.rel, "status": "classified", "result": str(found), "recovered": True})
                self.counts["recovered"] += 1
                continue
            kind, why = classify_file(str(path))
            if kind == "skip":  # not an image: left where it is, said once
                self._record({"key": v.key, "path": v.rel, "status": "skipped", "reason": why})
                self.counts["skipped"] += 1
                self.log(f"{v.rel}: skipped: {why}")
            elif kind == "error":
                self._fail(path, v, Prediction(str(path), error=f"{path}: {why}"))
            else:
                todo.append((path, v))
        preds = self.model.predict([p for p, _ in todo], self.batch_size, self.workers, self.max_pixels, self.strict,
                                   streams=self.streams)
        for (path, v), pred in zip(todo, preds, strict=True):
            if pred.ok:
                self._write_result(v, pred)
            else:
                self._fail(path, v, pred)

    def _write_result(self, v: FileVersion, pred: Prediction) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        target = _free_name(self.out_dir / "results" / v.rel, ".json")
        rec = {**pred.to_record(self.model.sha256, self.model.runtime), "path": v.rel,
               "source": {"key": v.key, "size": v.size, "mtime_ns": v.mtime_ns}, "processed_at": stamp}
        atomic_write_text(target, to_json(rec, indent=2) + "\n")
        self._record({"key": v.key, "path": v.rel, "status": "classified", "result": str(target)})
        self.counts["classified"] += 1
        note = f" [warnings: {'; '.join(pred.warnings)}]" if pred.warnings else ""
        said = (f"{max(pred.probabilities.values()):.3f}" if pred.decisions is None else
                findings_text(pred.probabilities, pred.decisions))  # a multi-label bundle: each finding
        self.log(f"{v.rel}: {pred.label} ({said}){note}")

    def _fail(self, path: Path, v: FileVersion, pred: Prediction) -> None:
        """Move a failed input to quarantine/ with its reason; a folder is only recorded (never moved)."""
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            is_dir = stat.S_ISDIR(path.lstat().st_mode)
        except OSError:
            is_dir = False
        if is_dir:
            self._record({"key": v.key, "path": v.rel, "status": "error", "reason": pred.error})
            self.counts["errors"] += 1
            self.log(f"{v.rel}: error: {pred.error}")
            return
        dest = _free_name(self.out_dir / "quarantine" / v.rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(str(path), dest)  # a named pipe or device is renamed, never read
            moved = str(dest)
        except (OSError, shutil.Error) as e:
            moved = f"not moved: {e}"
        atomic_write_text(Path(f"{dest}.reason.txt"), f"{v.rel}\n{pred.error}\nquarantined {stamp}\n")
        self._record({"key": v.key, "path": v.rel, "status": "quarantined", "quarantine": moved, "reason": pred.error})
        self.counts["quarantined"] += 1
        self.log(f"{v.rel}: quarantined: {pred.error}")

    def run(self, stop: threading.Event, poll_s: float = 1.0, once: bool = False) -> dict:
        """Watch until ``stop`` is set (or, with ``once``, until nothing is left to settle)."""
        while not stop.is_set():
            ready, settling = self.scan()
            for i in range(0, len(ready), 4 * self.batch_size):
                if stop.is_set():
                    break
                self.handle(ready[i : i + 4 * self.batch_size])
            if once and not ready and not settling:
                break
            if not ready:
                stop.wait(min(poll_s, self.settle_s) if settling else poll_s)
        return self.counts


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("watch", help="classify files dropped into a hot folder (base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("in_dir", metavar="IN_DIR", help="folder the router drops files into")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for results/, quarantine/ and the ledger")
    add_model_arguments(p)
    add_strict_argument(p)
    p.add_argument("--settle", type=float, default=2.0, help="seconds a file must stay unchanged (default: %(default)s)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between scans (default: %(default)s)")
    p.add_argument("--once", action="store_true", help="handle what is there, then exit")
    return p


def run(args: argparse.Namespace) -> int:
    check_folders(Path(args.in_dir), Path(args.out_dir))  # before the model loads
    model = load_model(args)
    folder = HotFolder(model, args.in_dir, args.out_dir, args.settle, args.batch_size, args.workers, args.max_pixels,
                       log=lambda msg: print(msg, flush=True), strict=args.strict, streams=args.streams)
    stop = threading.Event()

    def on_signal(signum, _frame):
        print(f"{signal.Signals(signum).name}: finishing the current batch, then stopping", file=sys.stderr, flush=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(shown(f"watching {args.in_dir} -> {args.out_dir} (model {model.sha256[:12]}, {len(folder.done)} file(s) "
                f"already done)"), file=sys.stderr, flush=True)
    try:
        counts = folder.run(stop, args.poll, args.once)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print(f"stopped: {counts['classified']} classified, {counts['quarantined']} quarantined, "
          f"{counts['recovered']} recovered from a previous run, {counts['skipped']} skipped (not images), "
          f"{counts['errors']} folder(s) that cannot be opened", file=sys.stderr, flush=True)
    return 0
