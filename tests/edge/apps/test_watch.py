import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from medge.edge.apps.watch import LEDGER, HotFolder
from medge.edge.inputs.image import write_image
from medge.edge.model import Model
from tests.conftest import xray_like


@pytest.fixture(scope="module")
def model(bundle):
    return Model.load(bundle)


def _png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, xray_like(60, 60, seed=seed))
    return path


def _counts(classified=0, quarantined=0, recovered=0, skipped=0, errors=0):
    return {"classified": classified, "quarantined": quarantined, "recovered": recovered, "skipped": skipped,
            "errors": errors}


def _ledger(out):
    return [json.loads(ln) for ln in (out / LEDGER).read_text().splitlines()]


def test_waits_for_files_to_settle_and_ignores_temporary_names(model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _png(inp / "a.png")
    hf = HotFolder(model, inp, out, settle_s=5.0, log=lambda m: None)
    assert hf.scan(now=0.0) == ([], 1)  # first sight: settling
    assert hf.scan(now=4.0) == ([], 1)
    partial = inp / "b.png"
    partial.write_bytes((inp / "a.png").read_bytes()[:100])  # still being written
    (inp / "c.png.part").write_bytes(b"router writes here first")
    ready, settling = hf.scan(now=5.5)
    assert [v.rel for _, v, _ in ready] == ["a.png"] and settling == 1
    partial.write_bytes((inp / "a.png").read_bytes())  # grows: its clock restarts
    assert [v.rel for _, v, _ in hf.scan(now=9.0)[0]] == ["a.png"]
    assert [v.rel for _, v, _ in hf.scan(now=15.0)[0]] == ["a.png", "b.png"]


def test_results_quarantine_and_restart(model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _png(inp / "a.png", 1)
    _png(inp / "sub" / "b.png", 2)
    (inp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ncut")
    hf = HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None)
    counts = hf.run(threading.Event(), poll_s=0.01, once=True)
    assert counts == _counts(2, 1, 0)
    res = json.loads((out / "results" / "sub" / "b.png.json").read_text())
    assert res["label"] in model.classes and res["model_sha256"] == model.sha256 and res["path"] == "sub/b.png"
    assert not (inp / "bad.png").exists() and (out / "quarantine" / "bad.png").exists()
    assert "truncated PNG" in (out / "quarantine" / "bad.png.reason.txt").read_text()
    assert sorted(e["path"] for e in _ledger(out)) == ["a.png", "bad.png", "sub/b.png"]

    # Restart: nothing is redone; a new file and a new version of an old one are handled.
    _png(inp / "c.png", 3)
    time.sleep(0.01)
    _png(inp / "a.png", 4)
    os.utime(inp / "a.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    hf2 = HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None)
    assert hf2.run(threading.Event(), poll_s=0.01, once=True) == _counts(2, 0, 0)
    assert (out / "results" / "c.png.json").exists()
    assert (out / "results" / "a.png.json").exists() and (out / "results" / "a.png.1.json").exists()  # old kept
    assert len(_ledger(out)) == 5
    hf3 = HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None)
    assert hf3.run(threading.Event(), poll_s=0.01, once=True) == _counts(0, 0, 0)


def test_crash_between_result_and_ledger_is_recovered_not_redone(model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _png(inp / "a.png")
    HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None).run(threading.Event(), 0.01, once=True)
    (out / LEDGER).unlink()  # as if the process died right after writing the result
    before = (out / "results" / "a.png.json").read_text()
    hf = HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None)
    assert hf.run(threading.Event(), 0.01, once=True) == _counts(0, 0, 1)
    assert (out / "results" / "a.png.json").read_text() == before
    assert not (out / "results" / "a.png.1.json").exists()


def test_a_ledger_written_by_medge_0_1_is_honoured(model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    st = _png(inp / "a|b.png").stat()  # a "|" in the name: the old key format split on it
    out.mkdir()
    (out / LEDGER).write_text(json.dumps({"key": f"a|b.png|{st.st_size}|{st.st_mtime_ns}", "path": "a|b.png",
                                          "status": "classified"}) + "\n")
    hf = HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None)
    assert hf.run(threading.Event(), 0.01, once=True) == _counts(0, 0, 0)


def test_files_dropped_while_running(model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    hf = HotFolder(model, inp, out, settle_s=0.2, log=lambda m: None)
    stop = threading.Event()
    t = threading.Thread(target=hf.run, args=(stop, 0.05))
    t.start()
    try:
        for i in range(5):
            tmp = inp / f".incoming{i}.png"
            _png(tmp, i)
            tmp.rename(inp / f"img{i}.png")  # atomic drop, as routers do
            time.sleep(0.05)
        deadline = time.time() + 30
        while time.time() < deadline and len(list((out / "results").glob("*.json")) if (out / "results").exists() else []) < 5:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    assert sorted(p.name for p in (out / "results").iterdir()) == [f"img{i}.png.json" for i in range(5)]


def test_output_inside_input_is_refused(model, tmp_path):
    from medge.edge.errors import MedgeError

    (tmp_path / "in").mkdir()
    with pytest.raises(MedgeError, match="must not be inside the input folder"):
        HotFolder(model, tmp_path / "in", tmp_path / "in" / "out")


def test_sigterm_stops_cleanly(bundle, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _png(inp / "a.png")
    proc = subprocess.Popen([sys.executable, "-m", "medge", "watch", str(inp), str(out), "--model", str(bundle),
                             "--settle", "0.1", "--poll", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "results" / "a.png.json").exists():
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGTERM: finishing the current batch" in stderr and "stopped: 1 classified" in stderr
    assert "a.png: " in stdout


def test_hot_folder_handles_what_a_pacs_share_holds(model, tmp_path):
    """Non-UTF-8 names, files without an extension, text files, a FIFO and a dangling link: nothing kills the
    hot folder, nothing is silently dropped, and a restart does not say it all again."""
    inp, out = tmp_path / "in", tmp_path / "out"
    weird = os.fsdecode(b"M\xfcller_\xff.png")
    _png(inp / weird, 1)
    _png(inp / "zz_after.png", 2)
    os.rename(_png(inp / "x.png", 3), inp / "IM000001")  # no extension: classified by content
    (inp / "readme.txt").write_text("not an image")
    os.mkfifo(inp / "pipe")
    os.symlink(inp / "gone.png", inp / "dangling.png")
    logs = []
    hf = HotFolder(model, inp, out, settle_s=0.0, log=logs.append)
    assert hf.run(threading.Event(), poll_s=0.01, once=True) == _counts(classified=3, quarantined=2, skipped=1)
    assert (out / "results" / "IM000001.json").exists() and (out / "results" / "zz_after.png.json").exists()
    res = json.loads((out / "results" / f"{weird}.json").read_text(encoding="utf-8"))
    assert os.fsencode(res["path"]) == b"M\xfcller_\xff.png" and res["label"] in model.classes
    assert any("tiny image" in w for w in res["warnings"])
    assert (out / "quarantine" / "pipe").exists() and not (inp / "pipe").exists()  # moved, never read
    assert "broken link" in (out / "quarantine" / "dangling.png.reason.txt").read_text()
    assert (inp / "readme.txt").exists()  # not an image: left where it is, said once
    assert "M\\udcfcller_\\udcff.png: normal" in "\n".join(logs) or "M\\udcfcller_\\udcff.png: disease" in "\n".join(logs)
    statuses = sorted(e["status"] for e in _ledger(out))
    assert statuses == ["classified"] * 3 + ["quarantined"] * 2 + ["skipped"]
    hf2 = HotFolder(model, inp, out, settle_s=0.0, log=logs.append)
    assert hf2.run(threading.Event(), poll_s=0.01, once=True) == _counts()  # the ledger read back, names and all


def test_strict_hot_folder_quarantines_inputs_with_warnings(model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _png(inp / "small.png")
    hf = HotFolder(model, inp, out, settle_s=0.0, log=lambda m: None, strict=True)
    assert hf.run(threading.Event(), poll_s=0.01, once=True) == _counts(quarantined=1)
    assert "refused (strict mode): tiny image" in (out / "quarantine" / "small.png.reason.txt").read_text()


def test_a_multilabel_bundle_results_hold_each_finding(multilabel_bundle, tmp_path):
    inp, out, said = tmp_path / "in", tmp_path / "out", []
    _png(inp / "a.png", 1)
    (inp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ncut")
    hf = HotFolder(Model.load(multilabel_bundle), inp, out, settle_s=0.0, log=said.append)
    assert hf.run(threading.Event(), poll_s=0.01, once=True) == _counts(1, 1, 0)
    rec = json.loads((out / "results" / "a.png.json").read_text())
    assert rec["task"] == "multilabel" and rec["thresholds"] == {"Effusion": 0.4, "Nodule": None}
    assert rec["decisions"]["Nodule"] is None and rec["any_positive"] is bool(rec["positive_findings"])
    effusion = "present" if rec["decisions"]["Effusion"] else "absent"
    assert any(f"Effusion {rec['probabilities']['Effusion']:.3f} {effusion}" in m and "Nodule" in m
               and "not decided" in m for m in said)
