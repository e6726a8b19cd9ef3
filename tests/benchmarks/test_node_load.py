"""The node load benchmark end to end on 4 tiny files, 1 and 2 associations: a complete record, its table, --from."""
import json
import os
import shutil

import pytest

pytest.importorskip("pynetdicom", reason="the node extra (pynetdicom) is not installed")
pytest.importorskip("highdicom", reason="the node extra (highdicom) is not installed")

from medge.benchmarks.node_load import STORESCU, main, table  # noqa: E402

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


@pytest.mark.skipif(not os.access(ORTHANC, os.X_OK), reason=f"Orthanc is not installed ({ORTHANC}; apt-get install orthanc)")
@pytest.mark.parametrize("sender", [
    pytest.param("storescu", marks=pytest.mark.skipif(not os.access(STORESCU, os.X_OK), reason="dcmtk is not installed")),
    "pynetdicom"])
def test_node_load_smoke_produces_a_complete_record(bundle, tmp_path, capsys, sender):
    out = tmp_path / "new" / "node_load.json"
    assert main(["--model", str(bundle), "--files", "4", "--size", "64", "--associations", "1,2",
                 "--warmup-files", "2", "--sender", sender, "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "node_load" and rec["files"] == 4 and rec["image_size"] == 64 and rec["node_exit"] == 0
    assert rec["machine"]["usable_cores"] >= 1 and rec["versions"]["pynetdicom"] and rec["engine"]
    assert rec["config"]["associations"] == [1, 2] and rec["config"]["synthetic_inputs"] is True
    assert rec["config"]["sender"] == sender
    assert rec["warmup"]["sent"] == 2 and rec["warmup"]["srs_in_pacs"] == 2
    assert [r["associations"] for r in rec["rounds"]] == [1, 2]
    for r in rec["rounds"]:  # every instance acknowledged, classified and its SR in Orthanc, whatever the timings
        assert r["sent"] == r["srs_in_pacs"] == 4 and r["c_store_status"] == {"0x0000": 4} and not r["timed_out"]
        assert r["node_status"] == {"classified": 4}
        lat = r["latency_ms"]
        assert lat["n"] == 4 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert r["instances_per_s"] == pytest.approx(4 / r["wall_s"]) and r["wall_s"] >= r["sending_s"] > 0
        for part in ("c_store_answer", "spooled_to_classified", "classified_to_pacs"):
            assert r["parts_ms"][part]["n"] == 4
        assert sum(int(k) * v for k, v in r["node_log"]["instances_per_call"].items()) == 4
        assert set(r["cpu_s"]) == {"node", "orthanc", "senders", "box"} and r["cpu_s"]["node"] > 0
        assert set(r["ratio_vs_predict"]) == {"8", "1"}
        assert r["ratio_vs_predict"]["8"] == pytest.approx(r["instances_per_s"] / r["predict_instances_per_s"]["8"])
        predict, per = r["predict_cpu_s_per_instance"], r["cpu_s_per_instance"]  # the CPU view, from the same figures
        assert predict > 0 and r["cpu_ratio_vs_predict"] == pytest.approx(predict / per["node"])
        assert r["ceiling_with_senders_beside"] == pytest.approx(predict / (predict + per["senders"] + per["orthanc"]))
        assert 0 < r["ceiling_with_senders_beside"] < 1
    runs = rec["predict"]["runs"]  # before, between and after the rounds
    assert all(run[b]["cpu_s_per_instance"] > 0 for run in runs for b in ("8", "1"))
    assert len(runs) == 3 and all(run[b]["classified"] == 4 for run in runs for b in ("8", "1"))
    assert rec["predict"]["summary"]["8"]["runs"] == [run["8"]["instances_per_s"] for run in runs]
    assert rec["goals"] == []  # the goal is at 4 associations: not measured here
    text = table(rec)
    assert "| associations | instances/s |" in text and "\n| 2 | " in text and "4 64 px synthetic DX" in text
    assert capsys.readouterr().out.rstrip().endswith(text)  # the record as JSON, then its table
    assert main(["--from", str(out)]) == 0 and capsys.readouterr().out.strip() == text


def test_existing_record_is_refused_before_any_measuring(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert main(["--model", str(tmp_path / "no-bundle"), "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err and out.read_text() == "{}"


def test_the_cpu_view_of_a_round_and_its_table():
    """Per instance: predict 0.070 s of CPU, the node 0.100, senders 0.012 and PACS 0.005: the node reaches 0.70 of
    predict on a box of its own, and no node could pass 0.070 / 0.087 with the senders and PACS beside it."""
    from medge.benchmarks.node_load import cpu_figures

    r = {"cpu_s_per_instance": {"node": 0.100, "orthanc": 0.005, "senders": 0.012, "box": 0.13}}
    figures = cpu_figures(r, [{"cpu_s_per_instance": 0.060}, {"cpu_s_per_instance": 0.080}])
    assert figures == pytest.approx({"predict_cpu_s_per_instance": 0.070, "cpu_ratio_vs_predict": 0.70,
                                     "ceiling_with_senders_beside": 0.070 / 0.087})
    assert cpu_figures(r, [{"instances_per_s": 20.0}]) == {}  # a record from before CPU was measured


def test_the_recorded_table_states_the_ceiling_and_old_records_still_print():
    from pathlib import Path

    record = json.loads((Path(__file__).parents[2] / "benchmarks/results/xeon-2core/node_load.json").read_text())
    assert "ceiling with the senders and PACS beside it" in table(record)
    for r in record["rounds"]:
        for key in ("predict_cpu_s_per_instance", "cpu_ratio_vs_predict", "ceiling_with_senders_beside"):
            r.pop(key)
    for g in record["goals"]:
        g.pop("ceiling_with_senders_beside")
    text = table(record)
    assert " n/a |" in text and "ceiling" not in text.split("Goal:")[1]


def test_the_change_watcher_reads_nothing_while_paused():
    """The predict runs' CPU time is this process's: the Orthanc polling stops for them (a read under way first)."""
    import threading
    import time

    from medge.benchmarks.node_load import ChangeWatcher

    class Pacs:
        def __init__(self):
            self.reads, self.lock = 0, threading.Lock()

        def get_json(self, path, client=None):
            with self.lock:
                self.reads += 1
            return {"Last": 0, "Changes": [], "Done": True}

    pacs = Pacs()
    watcher = ChangeWatcher(pacs, 0.001)
    try:
        while pacs.reads < 5:  # polling
            time.sleep(0.005)
        with watcher.paused():
            before = pacs.reads
            time.sleep(0.2)  # some 100 polls' time
            assert pacs.reads == before
        while pacs.reads < before + 5:  # polling again
            time.sleep(0.005)
    finally:
        watcher.stop()
