"""medge.edge.batch.BatchPredictor without Ray: the rows are medge predict's records (base install, any OpenCV)."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from medge.edge.batch import FINDINGS_FIELDS, NESTED_FIELDS, BatchPredictor, record_to_row, row_to_record
from medge.edge.errors import BundleError
from medge.edge.inputs.image import write_image
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from tests.conftest import xray_like


def make_archive(root):
    """Real images (8- and 16-bit, nested) and bad files: truncated, random bytes, text named .jpg, a non-image."""
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        write_image(root / f"img{i}.png", xray_like(70 + 9 * i, 64, seed=i))
    write_image(root / "sub" / "deep.tif", xray_like(90, 60, seed=7, bits=12))
    good = (root / "img0.png").read_bytes()
    (root / "sub" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "random.png").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "text.jpg").write_text("not a JPEG at all")
    (root / "notes.txt").write_text("a report: skipped, not an image")
    return root


@pytest.fixture
def archive(tmp_path):
    return make_archive(tmp_path / "archive")


@pytest.fixture
def threads_kept():
    before = cv2.getNumThreads()
    yield
    cv2.setNumThreads(before)


def predict_records(bundle, paths) -> dict:
    """medge predict's records (its default pipeline), by path."""
    m = Model.load(bundle)
    return {p.path: p.to_record(m.sha256, m.runtime) for p in m.predict(paths)}


def assert_same_records(got: list[dict], expected: dict) -> None:
    """Equal to the expected records in every field but timings, probabilities bit for bit; the engine may differ
    (each process times OpenCV's engines at load, and a worker runs one thread), the variant may not."""
    assert len(got) == len(expected)
    for rec in got:
        want = expected[rec["path"]]
        assert set(rec) >= set(want)
        for k in want:
            if k == "runtime":
                assert rec[k]["variant"] == want[k]["variant"] and rec[k]["engine"], rec["path"]
            elif k != "timings_ms":
                assert rec[k] == want[k], (rec["path"], k)


def test_rows_equal_predict_records_for_good_and_bad_files(bundle, archive, threads_kept):
    paths = scan_inputs([archive]).paths
    assert len(paths) == 9
    expected = predict_records(bundle, paths)
    predictor = BatchPredictor(bundle, threads=1, batch_size=4)
    assert cv2.getNumThreads() == 1  # the worker set OpenCV's threads for itself
    out = predictor({"path": np.array(paths, dtype=object), "id": np.arange(len(paths))})
    assert list(out["id"]) == list(range(len(paths)))  # other columns pass through
    assert all(isinstance(v, np.ndarray) and len(v) == len(paths) for v in out.values())
    rows = [row_to_record({k: out[k][i] for k in out if k != "id"}) for i in range(len(paths))]
    assert [r["path"] for r in rows] == paths
    assert_same_records(rows, expected)
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if r["error"]}
    assert set(errors) == {"truncated.png", "random.png", "text.jpg"}
    assert "truncated PNG" in errors["truncated.png"]
    ok = [r for r in rows if r["error"] is None]
    assert all(isinstance(r["probabilities"], dict) and r["label"] in r["probabilities"] for r in ok)


def test_bytes_column_gives_the_same_rows_as_paths(bundle, archive, threads_kept):
    paths = scan_inputs([archive]).paths
    predictor = BatchPredictor(bundle)
    by_path = predictor({"path": paths})
    data = [open(p, "rb").read() for p in paths]
    by_bytes = predictor({"path": [os.fsencode(p) for p in paths], "bytes": data})  # bytes paths: any file name
    assert "bytes" not in by_bytes
    for k in by_path:
        if k != "timings_ms":
            assert list(by_bytes[k]) == list(by_path[k]), k
    empty = predictor({"path": [str(archive / "x.png")], "bytes": [b""]})
    assert "empty file (0 bytes)" in empty["error"][0]


def test_nested_fields_are_those_of_a_real_record(bundle, archive, threads_kept):
    """The JSON fields come from the record's types: a field added to the record later is covered too."""
    m = Model.load(bundle)
    rec = m.predict([str(archive / "img0.png")])[0].to_record("x", m.runtime)
    assert NESTED_FIELDS == {k for k, v in rec.items() if isinstance(v, (dict, list))}
    row = record_to_row(rec)
    assert all(isinstance(row[k], str) for k in NESTED_FIELDS)
    assert row_to_record(row) == rec


def test_a_name_that_is_not_utf8_gives_text_arrow_can_hold(bundle, tmp_path, threads_kept):
    name = os.fsdecode(b"scan-\xff.png")
    write_image(tmp_path / name, xray_like(64, 64))
    out = BatchPredictor(bundle)({"path": [os.fsencode(tmp_path / name)]})
    assert out["error"][0] is None and out["path"][0].endswith("scan-\\udcff.png")
    out["path"][0].encode("utf-8")  # valid UTF-8: \udcff written as text, as medge's CSV does


def test_pandas_frame_in_pandas_frame_out(bundle, archive, threads_kept):
    pd = pytest.importorskip("pandas")
    paths = scan_inputs([archive]).paths[:3]
    frame = pd.DataFrame({"path": paths, "study": ["a", "b", "c"]}, index=[10, 11, 12])
    out = BatchPredictor(bundle)(frame)
    assert isinstance(out, pd.DataFrame) and list(out.index) == [10, 11, 12] and list(out["study"]) == ["a", "b", "c"]
    assert list(out["path"]) == paths and out["label"].notna().all()


def test_pickled_as_arguments_and_loaded_once_per_process(bundle, archive, threads_kept):
    import pickle

    paths = scan_inputs([archive]).paths[:2]
    first = BatchPredictor(bundle, batch_size=2)
    copies = [pickle.loads(pickle.dumps(first)) for _ in range(2)]  # as Dask sends it with each task
    assert copies[0].model is copies[1].model is not first.model and copies[0].batch_size == 2
    assert list(copies[1]({"path": paths})["probabilities"]) == list(first({"path": paths})["probabilities"])


def test_a_bad_bundle_fails_the_worker_at_once(tmp_path):
    with pytest.raises(BundleError, match="no model.json"):
        BatchPredictor(tmp_path)


def test_importing_batch_loads_no_ray_pyarrow_or_pandas():
    code = ("import sys\nimport medge.edge.batch\n"
            "print(','.join(m for m in ('ray', 'pyarrow', 'pandas', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_medge_batch_without_the_ray_extra_exits_2_naming_it(bundle, archive, tmp_path):
    code = ("import sys\nfor m in ('ray', 'pyarrow'): sys.modules[m] = None  # as if not installed\n"
            "from medge.edge.apps.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    for fmt in ("parquet", "jsonl"):
        res = subprocess.run([sys.executable, "-c", code, "batch", "--model", str(bundle), str(archive),
                              "--out", str(tmp_path / f"r.{fmt}"), "--format", fmt], capture_output=True, text=True)
        assert res.returncode == 2 and "needs the 'ray' extra" in res.stderr, res.stderr
        assert not (tmp_path / f"r.{fmt}").exists()


def test_a_multilabel_bundle_rows_hold_each_finding_and_round_trip_through_arrow(multilabel_bundle, archive, threads_kept):
    """Every row of a multi-label bundle, error rows included, has the findings' columns; Arrow holds them (bool with
    nulls, JSON text) and gives the records back."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    paths = scan_inputs([archive]).paths
    expected = predict_records(multilabel_bundle, paths)
    out = BatchPredictor(multilabel_bundle, batch_size=4)({"path": paths})
    assert FINDINGS_FIELDS == {"decisions", "thresholds", "positive_findings"}
    table = pa.table({k: pa.array(list(v)) for k, v in out.items()})
    assert table.schema.field("any_positive").type == pa.bool_() and table.schema.field("task").type == pa.string()
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    rows = [row_to_record(r) for r in pq.read_table(pa.BufferReader(buf.getvalue())).to_pylist()]
    assert_same_records(rows, expected)
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 3 and all(r["decisions"] is None and r["any_positive"] is None and r["task"] == "multilabel"
                                 and r["thresholds"] == {"Effusion": 0.4, "Nodule": None} for r in bad)
    good = [r for r in rows if not r["error"]]
    assert all(r["decisions"]["Nodule"] is None and isinstance(r["any_positive"], bool) for r in good)


def test_an_empty_batch_has_the_columns_of_its_bundle(multilabel_bundle, bundle, threads_kept):
    ml = BatchPredictor(multilabel_bundle)({"path": np.array([], dtype=object)})
    single = BatchPredictor(bundle)({"path": np.array([], dtype=object)})
    assert set(ml) - set(single) == {"task", "decisions", "thresholds", "positive_findings", "any_positive"}
    assert all(len(v) == 0 for v in ml.values())
