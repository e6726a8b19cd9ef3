"""medge batch's records of a multi-label bundle made without Ray: the rows of inputs that cannot be read and of lost
batches carry the findings' keys, the Parquet output keeps them, the summary counts each finding."""
import pytest

from medge.edge.apps import batch
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from tests.edge.test_batch import make_archive

pq = pytest.importorskip("pyarrow.parquet", reason="medge batch needs the ray extra")


def test_rows_made_without_a_worker_have_the_findings_keys_and_parquet_keeps_them(multilabel_bundle, tmp_path, capsys):
    archive = make_archive(tmp_path / "archive")
    (archive / "dangling.png").symlink_to(archive / "nowhere.png")  # an entry the scan cannot read: its row is
    scan = scan_inputs([archive])                                      # made before any work
    opened = Model.open(multilabel_bundle)
    store = batch.ResultStore(tmp_path / "r.parquet", "parquet", opened.sha256)
    records, todo, _ = batch.plan(scan, store, opened)
    assert records and all(r["task"] == "multilabel" and r["decisions"] is None for r in records.values())
    model = Model.load(multilabel_bundle)
    for i in todo:
        records[i] = batch.with_identity(model.predict([scan.entries[i].path], workers=0)[0].to_record(model.sha256),
                                         todo[i])
    lost = batch.lost_record(str(archive / "lost.png"), opened)
    rows = [records[i] for i in range(len(scan.entries))] + [lost]
    assert lost["decisions"] is None and lost["task"] == "multilabel"
    assert all(set(r) == set(rows[0]) for r in rows)  # error rows have the columns of the others
    store.write(rows)
    back = [batch.row_to_record(r) for r in pq.read_table(tmp_path / "r.parquet").to_pylist()]
    assert back == rows
    batch.report_summary(rows, 0, scan, False, model.classes)
    positive = sum(bool(r["decisions"] and r["decisions"]["Effusion"]) for r in rows)
    classified = sum(r["error"] is None for r in rows)
    assert (f"findings: Effusion {positive} positive, Nodule not decided (no threshold) on {classified}"
            in capsys.readouterr().err)
