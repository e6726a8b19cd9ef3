"""Label indexes: a CSV that names each image, its findings and its patient (NIH, CheXpert or generic).

Real chest X-ray sets are not class folders: a CSV lists every image with its
findings (several per image possible) and the patient it belongs to. This
module reads one into a ``LabelIndex`` (stdlib ``csv`` + numpy: ``medge validate``
reads indexes too), with one target per finding per image: 1.0 present,
0.0 absent, nan masked (an uncertain label under ``uncertain="ignore"``).

Formats (``FORMATS``; docs/datasets.md lists the exact columns):

- ``nih`` (ChestX-ray14's ``Data_Entry_2017_v2020.csv``): ``Image Index`` and
  ``Finding Labels`` (``A|B`` or ``No Finding``) required; ``Patient ID`` (without
  it each image is its own patient: ``train.data.discover_index`` says the split is by image),
  ``Patient Age``, ``Patient Gender`` (M/F), ``View Position`` optional. Findings:
  the sorted names seen, without "No Finding".
- ``chexpert`` (``train.csv``): ``Path`` (the patient is its ``patientNNNNN``
  component), ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA`` and one column per
  observation holding 1.0, 0.0, -1.0 (uncertain) or blank. Findings: the
  observation columns without "No Finding".
- ``generic``: a path column (``path``, else the first of file/image/filename)
  and EITHER one column per finding (1, 0, -1 or blank) OR one column of ``A|B``
  names (``findings``, ``labels`` or ``finding labels``); optional ``patient`` (or
  ``patient_id``), ``split`` (train/val/test), ``sex``, ``age``, ``view``; a
  ``No Finding`` column is not a finding.

Label rules: a blank cell is "not mentioned" and counts as 0.0 (absent), as
CheXpert's labellers intend; -1 is uncertain and follows ``uncertain``
(``UNCERTAIN``): ``ignore`` gives nan (masked out of the loss and the metrics),
``zeros`` 0.0, ``ones`` 1.0. With ``findings=`` given, only those findings are
targets (a name outside them in an ``A|B`` cell is not a target).

Files: with ``images_dir`` each row's file is found under it (the path as
given; else, for nih and generic, by its base name anywhere below the folder,
one walk; for chexpert, by dropping leading path components). A file named but
not found, or not an image (``classify_file``), goes to ``LabelIndex.missing``
with the reason, never an error. Without ``images_dir`` nothing is resolved:
``IndexEntry.file`` is the path as given and ``missing`` is empty.

Errors (``DataError``, naming the CSV and its line): a required column missing
(the columns found are listed), the same file twice (both lines), a finding column
or a finding asked for twice (case-folded: ``A`` and ``a`` are one name), a label value
other than 1/0/-1/blank, an unknown split, an age that is not a number, a CSV
that is not UTF-8 (the line of the first bad byte: save it as UTF-8), a CSV over
``MAX_INDEX_BYTES`` (256 MiB: about 2.3 million rows of CheXpert's width; the error names the file,
its size and the limit). A ``.csv.gz`` is read as is (the limit is on its decompressed text).

Usage:
    from medge.edge.inputs.index import read_index
    index = read_index("Data_Entry_2017_v2020.csv", "images/", fmt="nih")
    index.targets()   # (N, K) float, nan = masked; index.findings names the K columns
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from medge.edge.errors import DataError, MissingExtraError
from medge.edge.inputs.scanning import classify_file

FORMATS = ("nih", "chexpert", "generic")
UNCERTAIN = ("ignore", "zeros", "ones")
NO_FINDING = "No Finding"
SPLITS = ("train", "val", "test")
MAX_INDEX_BYTES = 256 << 20  # of CSV text: CheXpert's 223,414 rows are 26 MB, so about 2.3 million rows of its width
#                               (the text, its rows and its entries are in memory at once while it is read)
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test"}
_PATH_COLUMNS = ("path", "file", "image", "filename")
_NAMES_COLUMNS = ("findings", "labels", "finding labels")
_META_COLUMNS = {"patient": ("patient", "patient_id", "patient id", "patientid"), "split": ("split",),
                 "sex": ("sex", "patient sex", "patient gender", "patientsex"), "age": ("age", "patient age", "patientage"),
                 "view": ("view", "view position", "viewposition")}  # also NIH's and DICOM's names: else read as findings
_PATIENT_IN_PATH = re.compile(r"^patient\d+$")


@dataclass(frozen=True)
class IndexEntry:
    """One image of an index: its path as written, the file it resolved to, one target per finding, and metadata."""

    path: str  # as in the index
    file: str  # the resolved file (the path as given when the index was read without an images folder)
    targets: tuple[float, ...]  # 1.0 present, 0.0 absent, nan masked (uncertain under "ignore")
    patient: str | None = None
    split: str | None = None  # "train", "val" or "test" when the index says
    sex: str | None = None  # "M" or "F" when known
    age: float | None = None
    view: str | None = None  # PA, AP, Lateral, ... as the index writes it
    line: int = 0  # the CSV line the entry was read from (1 = the header)
    uncertain: tuple[int, ...] = ()  # the findings (positions in ``targets``) whose label was -1, whatever the
    #                                  policy made of it: a split is drawn with them masked, without a second read


@dataclass(frozen=True)
class LabelIndex:
    """A read index: its findings, its usable entries, and the files it names that are missing or not images."""

    source: str
    format: str
    findings: tuple[str, ...]
    entries: tuple[IndexEntry, ...]
    missing: tuple[tuple[str, str], ...] = ()  # (path as in the index, reason)
    uncertain: str = "ignore"
    rows: tuple[IndexEntry, ...] = ()  # every row, usable or not: splits are drawn over all of them (stable
    #                                    when files come and go); empty means the same as ``entries``
    named: tuple[str, ...] = ()  # every finding the index itself names (its finding columns, or the names its rows
    #                              use), whatever ``findings=`` asked for: what a bundle's names are matched against

    def __len__(self) -> int:
        return len(self.entries)

    def targets(self) -> np.ndarray:
        """(N, K) float64: one row per entry, one column per finding; nan = masked."""
        return np.array([e.targets for e in self.entries], dtype=np.float64).reshape(len(self.entries),
                                                                                     len(self.findings))

    def patients(self) -> list[str | None]:
        """The patient of each entry (None where the index does not say)."""
        return [e.patient for e in self.entries]

    def missing_summary(self, limit: int = 3) -> str | None:
        """One line on the files named but not usable (a count and the first few), None when there are none."""
        if not self.missing:
            return None
        first = "; ".join(f"{p}: {why}" for p, why in self.missing[:limit])
        more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
        return f"{self.source}: {len(self.missing)} file(s) named but not usable ({first}{more})"


def read_index(csv_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, fmt: str = "generic",
               uncertain: str = "ignore", findings=None) -> LabelIndex:
    """Read a label index (see the module docstring for the formats and rules).

    Args:
        csv_path: the CSV (or ``.csv.gz``).
        images_dir: the folder the index's paths are under; None: files are not resolved or checked.
        fmt: one of ``FORMATS``.
        uncertain: what -1 means, one of ``UNCERTAIN``: ignore (nan, masked), zeros, ones.
        findings: the findings to read, in this order; None: every finding of the index.

    Returns:
        a LabelIndex; files named but missing or not images are in its ``missing``.

    Raises:
        DataError: unreadable CSV, missing column, duplicate file, bad label, split or age value (names the line).
    """
    if fmt not in FORMATS:
        raise DataError(f"{csv_path}: unknown index format {fmt!r}: one of {', '.join(FORMATS)}")
    if uncertain not in UNCERTAIN:
        raise DataError(f"{csv_path}: unknown uncertain-label policy {uncertain!r}: one of {', '.join(UNCERTAIN)}")
    source = os.fspath(csv_path)
    header, rows = _read_rows(source)
    reader = _READERS[fmt](source, header, rows, findings, uncertain)
    if not reader.findings:
        raise DataError(f"{source}: no findings: every row says {NO_FINDING!r} (or give findings=)")
    entries = [reader.entry(row, line) for line, row in rows]
    _check_unique(source, entries, lambda e: os.path.normpath(e.path))
    kept, missing = entries, []
    if images_dir is not None:
        kept, missing = _resolve(source, entries, os.fspath(images_dir), fmt)
        _check_unique(source, kept, lambda e: os.path.realpath(e.file))
    return LabelIndex(source, fmt, reader.findings, tuple(kept), tuple(missing), uncertain, tuple(entries),
                      reader.named)


def _read_rows(source: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, row), ...]) of a UTF-8 CSV; blank lines are skipped."""
    text = _read_text(source)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{source}: empty index (no header line)") from None
    except csv.Error as e:
        raise DataError(f"{source}, line 1: not a CSV header ({e})") from None
    separator = next((sep for sep in (";", "\t") if len(header) == 1 and sep in header[0]), None)
    if separator:  # a spreadsheet's "CSV" in a locale whose decimal mark is a comma, or its tab-separated text
        raise DataError(f"{source}, line 1: columns separated by {'tab' if separator == chr(9) else repr(separator)}, "
                        "not by commas: save the index as CSV with commas")
    rows = []
    try:
        for row in reader:
            if row and (len(row) > 1 or row[0].strip()):  # csv gives [] for an empty line
                _check_width(source, header, row, reader.line_num)
                rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(f"{source}, line {reader.line_num}: not CSV ({e})") from None
    if not rows:
        raise DataError(f"{source}: the index has a header but no rows")
    return header, rows


def _check_width(source: str, header: list[str], row: list[str], line: int) -> None:
    """A row of more cells than the header (empty ones at its end aside) or of fewer is an error naming its line: an
    unquoted comma in a file name or in ``A,B`` findings shifts every later column (the patient read from a finding),
    and a cut row would read its last findings as blank (absent), both in silence."""
    width = len(row)
    while width > len(header) and not row[width - 1].strip():
        width -= 1
    if width != len(header):
        hint = "a comma in a value that is not quoted? (quote it; join findings with '|')" if width > len(header) \
            else "a row cut short?"
        raise DataError(f"{source}, line {line}: {width} cells, the header has {len(header)}: {hint}")


def _read_text(source: str) -> str:
    """The CSV's text, gunzipped when it ends in .gz; DataError when unreadable, too large or not UTF-8."""
    gz = source.endswith(".gz")
    try:
        size = None if gz else os.path.getsize(source)
        if size is not None and size > MAX_INDEX_BYTES:
            raise DataError(f"{source}: {size} bytes of CSV text, over the limit of {_limit()} (MAX_INDEX_BYTES, "
                            "about 2.3 million rows of CheXpert's width): not a label index, or split it in parts")
        with (gzip.open(source, "rb") if gz else open(source, "rb")) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except (OSError, EOFError) as e:
        raise DataError(f"{source}: cannot read the index ({getattr(e, 'strerror', None) or e})") from None
    if len(data) > MAX_INDEX_BYTES:
        raise DataError(f"{source}: over {_limit()} of CSV text once decompressed (the limit, MAX_INDEX_BYTES, "
                        "about 2.3 million rows of CheXpert's width): not a label index, or split it in parts")
    try:
        return data.decode("utf-8-sig")  # a BOM, as spreadsheet programs write, is not part of the first column name
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        raise DataError(f"{source}, line {line}: not UTF-8 (byte 0x{data[start]:02x}): save the index as UTF-8") \
            from None


def _limit() -> str:
    return f"{MAX_INDEX_BYTES >> 20} MiB" if MAX_INDEX_BYTES >= 1 << 20 else f"{MAX_INDEX_BYTES} bytes"


def _column(source: str, header: list[str], names, what: str, required: bool = True) -> int | None:
    """The index of the first column whose name (case-insensitive) is one of ``names``."""
    lower = [h.lower() for h in header]
    for name in names:
        if name.lower() in lower:
            return lower.index(name.lower())
    if required:
        raise DataError(f"{source}: no {what} column ({' or '.join(repr(n) for n in names)}); "
                        f"columns found: {', '.join(header)}")
    return None


def _cell(row: list[str], col: int | None) -> str:
    return row[col].strip() if col is not None and col < len(row) else ""


class _Reader:
    """Turns the rows of one format into entries; subclasses find the columns and the targets."""

    def __init__(self, source: str, header: list[str], uncertain: str):
        self.source, self.header, self.uncertain = source, header, uncertain
        self.findings: tuple[str, ...] = ()
        self.named: tuple[str, ...] = ()  # the findings the index names, asked for or not
        self.path_col = 0
        self.meta: dict[str, int | None] = {}

    def entry(self, row: list[str], line: int) -> IndexEntry:
        path = _cell(row, self.path_col)
        if not path:
            raise DataError(f"{self.source}, line {line}: no file name in column {self.header[self.path_col]!r}")
        return IndexEntry(path, path, self.targets(row, line), self.patient(row, path) or None,
                          self.split(row, line), _sex(_cell(row, self.meta.get("sex"))),
                          self.age(row, line), _cell(row, self.meta.get("view")) or None, line,
                          self.uncertain_of(row))

    def targets(self, row: list[str], line: int) -> tuple[float, ...]:
        raise NotImplementedError

    def uncertain_of(self, row: list[str]) -> tuple[int, ...]:
        """The positions of the row's -1 labels (after ``targets`` checked them): none in a column of names."""
        return ()

    def patient(self, row: list[str], path: str) -> str:
        return _cell(row, self.meta.get("patient"))

    def split(self, row: list[str], line: int) -> str | None:
        value = _cell(row, self.meta.get("split"))
        if not value:
            return None
        if value.lower() not in _SPLIT_NAMES:
            raise DataError(f"{self.source}, line {line}: split {value!r} is not one of {', '.join(SPLITS)}")
        return _SPLIT_NAMES[value.lower()]

    def age(self, row: list[str], line: int) -> float | None:
        value = _cell(row, self.meta.get("age"))
        if not value:
            return None
        try:
            age = float(value.rstrip("Yy"))  # NIH's first release wrote ages as "058Y"
        except ValueError:
            age = math.nan
        if not math.isfinite(age):
            raise DataError(f"{self.source}, line {line}: age {value!r} is not a number")
        return age

    def value(self, cell: str, finding: str, line: int) -> float:
        """One per-finding cell: 1 / 0 / -1 (per the policy) / blank (0.0)."""
        if not cell:
            return 0.0
        try:
            v = float(cell)
        except ValueError:
            v = math.nan
        if v == 1.0 or v == 0.0:
            return v
        if v == -1.0:
            return {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[self.uncertain]
        hint = "" if not isinstance(self, _GenericReader) else (
            f" ({finding!r} is read as a finding: every column but the path, patient, split, sex, age and view "
            "columns is one)")
        raise DataError(f"{self.source}, line {line}: {finding} = {cell!r}: a label is 1, 0, -1 (uncertain) or blank"
                        + hint)


def _is_minus_one(cell: str) -> bool:
    """Whether a (checked) label cell is -1: uncertain."""
    if cell in _CERTAIN:
        return False
    try:
        return float(cell) == -1.0
    except ValueError:
        return False


_CERTAIN = frozenset(("", "0", "1", "0.0", "1.0"))


def _sex(value: str) -> str | None:
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(value.lower())


class _NamesReader(_Reader):
    """One column of ``A|B`` finding names (NIH's Finding Labels, generic's findings/labels)."""

    def setup_names(self, names_col: int, rows_findings, findings) -> None:
        _check_no_repeat(self.source, findings or (), "the finding {!r} asked for twice")
        self.names_col = names_col
        self.named = tuple(rows_findings)
        self.findings = tuple(findings) if findings is not None else rows_findings
        seen: dict[str, str] = {}
        for name in (*self.findings, *rows_findings):
            other = seen.setdefault(name.casefold(), name)
            if other != name:  # 'effusion' would be a finding of its own, or none at all: Effusion absent in silence
                raise DataError(f"{self.source}: {self.header[names_col]} names {name!r}, and {other!r} elsewhere or "
                                "as a finding asked for: finding names are matched exactly, case included")

    def names(self, row: list[str], line: int) -> list[str]:
        names = [n.strip() for n in _cell(row, self.names_col).split("|") if n.strip()]
        if NO_FINDING in names and len(names) > 1:
            raise DataError(f"{self.source}, line {line}: {self.header[self.names_col]} = "
                            f"{'|'.join(names)!r}: 'No Finding' with findings")
        return [n for n in names if n != NO_FINDING]

    def targets(self, row: list[str], line: int) -> tuple[float, ...]:
        names = set(self.names(row, line))
        return tuple(1.0 if f in names else 0.0 for f in self.findings)


def _names_found(rows, col: int) -> tuple[str, ...]:
    """Every finding name of an ``A|B`` column, sorted."""
    found = {n.strip() for _, row in rows for n in _cell(row, col).split("|")}
    return tuple(sorted(found - {"", NO_FINDING}))


class _NihReader(_NamesReader):
    def __init__(self, source, header, rows, findings, uncertain):
        super().__init__(source, header, uncertain)
        self.path_col = _column(source, header, ["Image Index"], "image")
        col = _column(source, header, ["Finding Labels"], "findings")
        self.setup_names(col, _names_found(rows, col), findings)
        self.meta = {"patient": _column(source, header, ["Patient ID"], "patient", required=False),
                     "sex": _column(source, header, ["Patient Gender"], "sex", required=False),
                     "age": _column(source, header, ["Patient Age"], "age", required=False),
                     "view": _column(source, header, ["View Position"], "view", required=False)}


class _ColumnsReader(_Reader):
    """One column per finding holding 1 / 0 / -1 / blank (CheXpert, generic)."""

    def setup_columns(self, candidates: list[int], findings) -> None:
        names = [self.header[c] for c in candidates]
        _check_no_repeat(self.source, names, "the finding column {!r} twice (columns {} and {})",
                         [c + 1 for c in candidates])
        _check_no_repeat(self.source, findings or (), "the finding {!r} asked for twice")
        self.named = tuple(names)
        if findings is None:
            self.cols = candidates
        else:
            absent = [f for f in findings if f not in names]
            if absent:
                raise DataError(f"{self.source}: no column for finding(s) {absent}; columns found: "
                                f"{', '.join(self.header)}")
            self.cols = [candidates[names.index(f)] for f in findings]
        if not self.cols:
            raise DataError(f"{self.source}: no finding columns; columns found: {', '.join(self.header)}")
        self.findings = tuple(self.header[c] for c in self.cols)
        self.table = {cell: self.value(cell, "", 0) for cell in ("", "0", "1", "-1", "0.0", "1.0", "-1.0")}

    def targets(self, row: list[str], line: int) -> tuple[float, ...]:
        try:  # the common cells by table (CheXpert: 223,414 rows of 13 cells); anything else parsed and checked
            return tuple(self.table[row[c].strip()] for c in self.cols)
        except (KeyError, IndexError):
            return tuple(self.value(_cell(row, c), self.header[c], line) for c in self.cols)

    def uncertain_of(self, row: list[str]) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.cols) if _is_minus_one(_cell(row, c)))


class _ChexpertReader(_ColumnsReader):
    def __init__(self, source, header, rows, findings, uncertain):
        super().__init__(source, header, uncertain)
        self.path_col = _column(source, header, ["Path"], "path")
        self.meta = {"sex": _column(source, header, ["Sex"], "sex"), "age": _column(source, header, ["Age"], "age"),
                     "frontal": _column(source, header, ["Frontal/Lateral"], "frontal/lateral"),
                     "view": _column(source, header, ["AP/PA"], "AP/PA")}
        first = max(c for c in self.meta.values()) + 1  # the observations follow AP/PA
        self.setup_columns([c for c in range(first, len(header)) if header[c] != NO_FINDING], findings)

    def patient(self, row: list[str], path: str) -> str:
        return next((p for p in path.replace("\\", "/").split("/") if _PATIENT_IN_PATH.match(p)), "")

    def entry(self, row: list[str], line: int) -> IndexEntry:
        e = super().entry(row, line)
        if e.view is None and _cell(row, self.meta["frontal"]):  # a lateral has no AP/PA
            return replace(e, view=_cell(row, self.meta["frontal"]))
        return e


class _GenericReader(_NamesReader, _ColumnsReader):
    def __init__(self, source, header, rows, findings, uncertain):
        _Reader.__init__(self, source, header, uncertain)
        self.path_col = _column(source, header, _PATH_COLUMNS, "path")
        self.meta = {k: _column(source, header, names, k, required=False) for k, names in _META_COLUMNS.items()}
        names_col = _column(source, header, _NAMES_COLUMNS, "findings", required=False)
        self.names_style = names_col is not None
        if self.names_style:
            self.setup_names(names_col, _names_found(rows, names_col), findings)
        else:
            used = {self.path_col, *(c for c in self.meta.values() if c is not None)}
            self.setup_columns([c for c in range(len(header)) if c not in used and header[c] not in ("", NO_FINDING)],
                               findings)

    def targets(self, row: list[str], line: int) -> tuple[float, ...]:
        if self.names_style:
            return _NamesReader.targets(self, row, line)
        return _ColumnsReader.targets(self, row, line)

    def uncertain_of(self, row: list[str]) -> tuple[int, ...]:
        return () if self.names_style else _ColumnsReader.uncertain_of(self, row)


_READERS = {"nih": _NihReader, "chexpert": _ChexpertReader, "generic": _GenericReader}


def _check_no_repeat(source: str, names, message: str, places=None) -> None:
    """DataError when a finding name comes twice (case-folded, as names are matched): a record holds one value per
    name, so the second would overwrite the first in silence. ``message`` takes the name and the two places."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        first = seen.setdefault(name.casefold(), i)
        if first != i:
            at = (places[first], places[i]) if places else (first + 1, i + 1)
            raise DataError(f"{source}: " + message.format(name, *at) + ": a finding is named once")


def _check_unique(source: str, entries: list[IndexEntry], key) -> None:
    """DataError naming both lines when two entries name the same file."""
    seen: dict[str, IndexEntry] = {}
    for e in entries:
        k = key(e)
        if k in seen:
            first = seen[k]
            raise DataError(f"{source}: the same file twice, line {first.line} ({first.path}) and line {e.line} "
                            f"({e.path})")
        seen[k] = e


def _resolve(source: str, entries: list[IndexEntry], images_dir: str, fmt: str):
    """(entries with their files, [(path, reason)] of those missing or not images)."""
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: images folder not found (for the index {source}): the data has moved? give "
                        "--labels INDEX.csv --images DIR, DIR the folder the index's paths are under")
    finder = _Finder(images_dir, fmt)
    kept, missing = [], []
    for e in entries:
        file = finder.find(e.path)
        if file is None:
            missing.append((e.path, f"not found under {images_dir}"))
            continue
        kind, reason = classify_file(file)
        if kind != "input":
            missing.append((e.path, f"{file}: {reason}"))
            continue
        kept.append(replace(e, file=file))
    return kept, missing


class _Finder:
    """Finds an index path under the images folder: as given; then by base name (one walk) or without leading
    components (CheXpert)."""

    def __init__(self, root: str, fmt: str):
        self.root, self.fmt = root, fmt
        self.by_name: dict[str, list[str]] | None = None
        self.drop = 0  # CheXpert: the number of leading components that last had to be dropped

    def find(self, path: str) -> str | None:
        parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            return None
        given = os.path.join(self.root, *parts) if not os.path.isabs(path) else path
        if os.path.isfile(given):
            return given
        if self.fmt == "chexpert":
            return self._without_prefix(parts)
        return self._by_base_name(path, parts[-1])

    def _without_prefix(self, parts: list[str]) -> str | None:
        for k in [self.drop, *range(1, len(parts))]:
            candidate = os.path.join(self.root, *parts[k:])
            if 0 < k < len(parts) and os.path.isfile(candidate):
                self.drop = k
                return candidate
        return None

    def _by_base_name(self, path: str, name: str) -> str | None:
        if self.by_name is None:
            self.by_name = {}
            for folder, dirs, files in os.walk(self.root):
                dirs.sort()
                for f in sorted(files):
                    self.by_name.setdefault(f, []).append(os.path.join(folder, f))
        found = self.by_name.get(name, [])
        if len(found) > 1:
            raise DataError(f"{path}: two files of that name under {self.root}: {found[0]} and {found[1]}; "
                            f"give the path relative to the images folder in the index")
        return found[0] if found else None


def dicom_patient(path: str | os.PathLike) -> str | None:
    """The PatientID of a DICOM file, read from its header only (the pixels are not read).

    Args:
        path: a DICOM file.

    Returns:
        the PatientID stripped, or None when the file has none, is empty, or cannot be parsed as DICOM.

    Raises:
        MissingExtraError: pydicom (the ``dicom`` extra) is not installed.
    """
    try:
        import pydicom
    except ImportError:
        raise MissingExtraError("dicom", "pydicom", f"reading the PatientID of {os.fspath(path)}") from None
    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - any parse failure means "no patient id"; the image reader reports the file
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None
