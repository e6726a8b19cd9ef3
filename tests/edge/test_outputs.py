import os

import pytest

from medge.edge.errors import UsageError
from medge.edge.outputs import (
    atomic_dir,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    open_atomic,
    wrote,
)


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "r.json").write_text("mine")
    with pytest.raises(UsageError, match=r"r.json: exists already \(use --overwrite to replace it\)"):
        check_output_file(tmp_path / "r.json")
    check_output_file(tmp_path / "r.json", overwrite=True)
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="d: is a folder: give a file name for the record"):
        check_output_file(tmp_path / "d", overwrite=True, what="record")
    with pytest.raises(UsageError, match="r.json is a file, not a folder"):
        check_output_file(tmp_path / "r.json" / "sub" / "x.json")
    assert UsageError.exit_status == 2


def test_check_output_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="f: is a file: give a folder for the bundle"):
        check_output_dir(tmp_path / "f", "bundle")
    with pytest.raises(UsageError, match="f is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "inside")
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_parent_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="permission denied"):
            check_output_file(ro / "new" / "r.json")
    finally:
        ro.chmod(0o700)


def test_atomic_write_creates_parents_and_a_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError), open_atomic(target) as f:
        f.write("half of tw")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "one" and os.listdir(target.parent) == ["r.json"]  # no temporary file left
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_keep_partial_keeps_what_was_written(tmp_path):
    target = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt), open_atomic(target, keep_partial=True) as f:
        f.write("record 1\n")
        raise KeyboardInterrupt
    assert not target.exists() and (tmp_path / ".r.jsonl.partial").read_text() == "record 1\n"


def test_atomic_dir(tmp_path, capsys):
    target = tmp_path / "out" / "set"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not target.exists()  # invisible until complete
    assert (target / "a.txt").read_text() == "a"
    with pytest.raises(UsageError, match="exists already"), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("b")
    with pytest.raises(RuntimeError), atomic_dir(target, replace=True) as tmp:
        (tmp / "b.txt").write_text("b")
        raise RuntimeError("interrupted")
    assert os.listdir(target) == ["a.txt"]
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert os.listdir(target) == ["b.txt"] and os.listdir(target.parent) == ["set"]
    wrote(target, "data set")
    assert capsys.readouterr().err == f"wrote data set: {target}\n"
