"""medge predict --shard K/N: job arrays split an archive so that every input is classified exactly once."""
import json
import shutil

import pytest

from medge.edge.apps.cli import main
from medge.edge.errors import UsageError
from medge.edge.inputs.scanning import Shard, scan_inputs
from tests.edge.test_batch import assert_same_records, make_archive


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shards_do_not_overlap_and_together_equal_an_unsharded_run(bundle, tmp_path, capsys):
    archive = make_archive(tmp_path / "archive")
    for i in range(5, 12):  # more files: every shard gets some
        shutil.copy(archive / "img0.png", archive / "sub" / f"copy{i}.png")
    extra = tmp_path / "missing.png"  # a path given explicitly is sharded too
    assert main(["predict", "--model", str(bundle), str(archive), str(extra), "--out", str(tmp_path / "all.jsonl")]) == 1
    whole = records(tmp_path / "all.jsonl")
    shards = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}.jsonl"
        main(["predict", "--model", str(bundle), str(archive), str(extra), "--shard", f"{k}/3", "--out", str(out)])
        shards.append(records(out))
        assert f"shard {k}/3: {len(shards[-1])} input(s)" in capsys.readouterr().err
    assert all(shards) and sum(map(len, shards)) == len(whole) == 17
    paths = [r["path"] for s in shards for r in s]
    assert len(set(paths)) == len(paths)  # no overlap
    by_path = {r["path"]: r for r in whole}
    for s in shards:  # each run times OpenCV's engines at load: the engine may differ, nothing else
        assert_same_records(s, {r["path"]: by_path[r["path"]] for r in s})
        assert [r["path"] for r in s] == [p for p in by_path if p in {r["path"] for r in s}]  # input order kept


def test_the_split_follows_paths_relative_to_the_folder_given(tmp_path):
    archive = make_archive(tmp_path / "a" / "archive")
    moved = shutil.copytree(archive, tmp_path / "elsewhere" / "mount")
    for k in (1, 2):
        here = [p.relative_to(archive) for p in map(type(archive), scan_inputs([archive], Shard(k, 2)).paths)]
        there = [p.relative_to(moved) for p in map(type(moved), scan_inputs([moved], Shard(k, 2)).paths)]
        assert here == there
    skipped = [scan_inputs([archive], Shard(k, 2)).skipped for k in (1, 2)]
    assert sorted(len(s) for s in skipped) == [0, 1]  # the non-image is counted in one shard only


def test_a_folder_whose_images_are_in_other_shards_is_not_called_empty(tmp_path):
    one = make_archive(tmp_path / "a")
    for p in one.rglob("*"):
        if p.is_file() and p.name != "img0.png":
            p.unlink()
    found = [scan_inputs([one], Shard(k, 4)).entries for k in (1, 2, 3, 4)]
    assert sorted(len(e) for e in found) == [0, 0, 0, 1] and all(e.error is None for f in found for e in f)


@pytest.mark.parametrize("text, why", [("0/3", "needs 1 <= K <= N"), ("3/2", "needs 1 <= K <= N"),
                                        ("2", "give K/N"), ("a/b", "give K/N"), ("1/0", "needs 1 <= K <= N")])
def test_bad_shards_are_refused(text, why, tmp_path, capsys):
    with pytest.raises(UsageError, match=why):
        Shard.parse(text)
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", str(tmp_path), str(tmp_path), "--shard", text])
    assert e.value.code == 2 and why in capsys.readouterr().err
