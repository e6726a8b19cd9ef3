"""medge batch on a local Ray cluster (ray.init(num_cpus=2), one per module): rows equal medge predict's
records, a killed worker loses and repeats nothing, a rerun resumes. Skipped where the ray extra is absent."""
import json
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="medge batch needs the ray extra")
pq = pytest.importorskip("pyarrow.parquet", reason="medge batch needs the ray extra")

from medge.edge.apps import batch  # noqa: E402
from medge.edge.apps.cli import main  # noqa: E402
from medge.edge.batch import BatchPredictor, row_to_record  # noqa: E402
from medge.edge.inputs.scanning import scan_inputs  # noqa: E402
from tests.edge.test_batch import assert_same_records, make_archive  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module (starting one takes seconds); medge batch uses it as given."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("batch") / "archive")


def predict_jsonl(bundle, paths, out: Path) -> dict:
    assert main(["predict", "--model", str(bundle), *map(str, paths), "--out", str(out)]) == 1
    return {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}


def read_parquet(path: Path) -> list[dict]:
    return [row_to_record(r) for r in pq.read_table(path).to_pylist()]


def test_rows_equal_predict_records_one_per_input_in_order(bundle, archive, tmp_path, capsys):
    expected = predict_jsonl(bundle, [archive], tmp_path / "predict.jsonl")
    out = tmp_path / "deep" / "results.parquet"
    assert main(["batch", "--model", str(bundle), str(archive), "--out", str(out), "--workers", "2"]) == 1
    rows = read_parquet(out)
    assert [r["path"] for r in rows] == list(expected)  # predict's order: folders depth first, names sorted
    assert_same_records(rows, expected)
    assert all(r["file_size"] == os.stat(r["path"]).st_size for r in rows)
    err = capsys.readouterr().err
    assert "9 input(s), 6 classified" in err and "3 failed; 1 skipped: 1 not images" in err
    jsonl = tmp_path / "results.jsonl"
    manifest = tmp_path / "list.txt"
    manifest.write_text("# three files\n" + "\n".join(list(expected)[:3]) + "\n\n")
    assert main(["batch", "--model", str(bundle), "--manifest", str(manifest), "--out", str(jsonl), "--format", "jsonl"]) == 0
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert_same_records(lines, {p: expected[p] for p in list(expected)[:3]})


class DiesOnce(BatchPredictor):
    """A worker that kills its own process on the first batch that finds the marker file (which it removes)."""

    def __init__(self, marker: str, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker

    def __call__(self, batch):
        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            return super().__call__(batch)
        os._exit(1)


def test_a_killed_worker_still_gives_each_input_exactly_once(bundle, archive, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers need not import this test module
    marker = tmp_path / "die"
    marker.touch()
    paths = scan_inputs([archive]).paths * 2  # 18 items: several batches per worker
    kwargs = {"bundle": str(bundle), "threads": 1, "marker": str(marker)}
    got = list(batch.predict_on_ray(list(enumerate(paths)), kwargs, 2, predictor=DiesOnce))
    assert not marker.exists()  # a worker died
    assert sorted(i for i, _ in got) == list(range(len(paths)))
    assert sum(r["error"] is None for _, r in got) == 12 and all(r["path"] == paths[i] for i, r in got)


def test_a_rerun_redoes_nothing_done(bundle, archive, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.parquet"
    args = ["batch", "--model", str(bundle), str(archive), "--out", str(out)]
    real, asked = batch.predict_on_ray, []

    def cut_short(items, kwargs, workers, predictor=BatchPredictor):  # 4 rows, then Ctrl-C
        for n, done in enumerate(real(items, kwargs, workers, predictor), 1):
            yield done
            if n == 4:
                raise KeyboardInterrupt

    def counting(items, kwargs, workers, predictor=BatchPredictor):
        asked.extend(p for _, p in items)
        yield from real(items, kwargs, workers, predictor)

    monkeypatch.setattr(batch, "FLUSH_ROWS", 1)
    monkeypatch.setattr(batch, "predict_on_ray", cut_short)
    assert main(args) == 130 and not out.exists()
    parts = out.with_name(f".{out.name}.parts")
    saved = [json.loads(x)["path"] for p in parts.iterdir() for x in p.read_text().splitlines()]
    assert len(saved) == 4
    monkeypatch.setattr(batch, "predict_on_ray", counting)
    assert main(args) == 1
    all_paths = scan_inputs([archive]).paths
    assert sorted(asked) == sorted(set(all_paths) - set(saved))  # the 4 rows saved are not redone
    assert [r["path"] for r in read_parquet(out)] == all_paths and not parts.exists()
    first = read_parquet(out)
    asked.clear()
    touched = archive / "img1.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert main(args) == 1
    assert asked == [str(touched)]  # only the changed file
    assert "9 input(s) (8 done before, not redone)" in capsys.readouterr().err
    assert [r for r in read_parquet(out) if r["path"] != str(touched)] == [r for r in first if r["path"] != str(touched)]
    asked.clear()
    assert main([*args, "--overwrite"]) == 1 and sorted(asked) == sorted(all_paths)


def test_usage_errors_exit_2_before_any_work(bundle, archive, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["batch", "--model", str(bundle), str(archive), "--out", str(tmp_path / "r.parquet"), "--workers", "0"])
    assert e.value.code == 2 and "--workers: 0 is below 1" in capsys.readouterr().err
    assert main(["batch", "--model", str(bundle), "--manifest", str(tmp_path / "none.txt"),
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "cannot read the manifest" in capsys.readouterr().err
    assert main(["batch", "--model", str(bundle), "--out", str(tmp_path / "r.parquet")]) == 2
    assert "no input" in capsys.readouterr().err
    mine = tmp_path / "mine.parquet"
    mine.write_text("not parquet")
    assert main(["batch", "--model", str(bundle), str(archive), "--out", str(mine)]) == 2
    assert "not a medge batch parquet output" in capsys.readouterr().err and mine.read_text() == "not parquet"
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"path": "x", "model_sha256": "0" * 64, "file_size": 1, "file_mtime_ns": 1}) + "\n")
    assert main(["batch", "--model", str(bundle), str(archive), "--out", str(other), "--format", "jsonl"]) == 2
    assert "holds results of another model" in capsys.readouterr().err


def test_a_multilabel_bundle_through_ray_gives_predicts_records_with_each_finding(multilabel_bundle, archive, tmp_path,
                                                                                  capsys):
    expected = predict_jsonl(multilabel_bundle, [archive], tmp_path / "predict.jsonl")
    out = tmp_path / "ml.parquet"
    assert main(["batch", "--model", str(multilabel_bundle), str(archive), "--out", str(out), "--workers", "2"]) == 1
    table = pq.read_table(out)
    assert str(table.schema.field("any_positive").type) == "bool"
    assert {"decisions", "thresholds", "positive_findings"} <= set(json.loads(
        table.schema.metadata[b"medge"])["json_fields"])
    rows = [row_to_record(r) for r in table.to_pylist()]
    assert_same_records(rows, expected)
    assert all(r["task"] == "multilabel" and r["thresholds"] == {"Effusion": 0.4, "Nodule": None} for r in rows)
    assert "findings: Effusion" in capsys.readouterr().err
