import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import medge
from medge.edge.errors import CheckpointError, MedgeError
from medge.edge.preprocess import PreprocessConfig
from medge.train import engine
from medge.train.checkpoint import load_checkpoint, model_from_checkpoint
from medge.train.config import TrainConfig

SMALL = PreprocessConfig(size=32)


def tiny_cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=3, batch_size=8, workers=1, device="cpu", cache_dir=str(out) + "-cache")
    return TrainConfig(**{**base, **kw})


def history(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in ("time_s", "train_images_per_s")} for ln in lines]


@pytest.mark.slow
def test_short_cpu_run_learns(trained_run):
    """Learns the lesions: the synthetic classes differ by nothing else (not brightness, not bit depth). Measured on
    this run: val accuracy 0.84, AUC 0.91; test (40 images) accuracy 0.70, AUC 0.83; chance is 0.5."""
    summary = trained_run[2]
    assert summary["val"]["accuracy"] >= 0.75 and summary["val"]["auc"] >= 0.85, summary["val"]
    assert summary["test"]["auc"] >= 0.7, summary["test"]


def test_same_seed_gives_same_metrics(tiny_data, tmp_path):
    a = engine.train(tiny_cfg(tiny_data, tmp_path / "a", epochs=2), SMALL)
    b = engine.train(tiny_cfg(tiny_data, tmp_path / "b", epochs=2), SMALL)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    assert a["val"] == b["val"]
    wa, wb = (load_checkpoint(tmp_path / x / "last.pt")["model"] for x in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_data, tmp_path, monkeypatch):
    engine.train(tiny_cfg(tiny_data, tmp_path / "full", schedule="cosine"), SMALL)

    calls = {"n": 0}
    real = engine.augment

    def interrupt_in_epoch_3(*a, **k):  # 28 train images / batch 8 = 4 steps per epoch
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "augment", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_cfg(tiny_data, tmp_path / "cut", schedule="cosine"), SMALL)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(engine, "augment", real)

    engine.resume(engine.ResumeOptions(str(tmp_path / "cut")))  # to the run's own 3 epochs
    assert history(tmp_path / "cut") == history(tmp_path / "full")
    full, cut = (load_checkpoint(tmp_path / x / "last.pt") for x in ("full", "cut"))
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])
    assert full["optimizer"]["state"][0]["exp_avg"].equal(cut["optimizer"]["state"][0]["exp_avg"])


def test_checkpoint_contents(tiny_data, tmp_path):
    out = tmp_path / "run"
    summary = engine.train(tiny_cfg(tiny_data, out, epochs=2, arch="mobilenet_v3_small"), SMALL)
    ck = load_checkpoint(out / "best.pt")
    assert ck["arch"] == "mobilenet_v3_small" and ck["classes"] == ["disease", "normal"]
    assert ck.preprocess == SMALL
    assert TrainConfig.from_dict(ck["train_config"]).arch == "mobilenet_v3_small"
    assert ck["epoch"] == summary["best"]["epoch"]
    assert set(ck["metrics"]) == {"val", "test"} and 0 <= ck["metrics"]["val"]["auc"] <= 1
    assert {"torch", "torchvision", "numpy", "opencv", "medge"} <= set(ck["versions"])
    assert ck["versions"]["medge"] == medge.__version__
    model = model_from_checkpoint(ck)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and "optimizer" in last and "model" in last
    assert json.loads((out / "config.json").read_text())["preprocess"] == SMALL.to_dict()
    profile = ck["data_profile"]  # what training saw, for the edge's input checks
    assert profile["images"] == 28 and profile["bits"] == {"16": 14, "8": 14} and profile["formats"] == {"png": 28}
    assert profile["width"]["min"] == 64 and set(profile["stats"]) >= {"gray_mean", "input_std"}
    assert profile["synthetic"] is True  # medge synth made the data: every record of its bundles says so
    assert json.loads((out / "data_profile.json").read_text()) == profile
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_existing_run_is_not_overwritten(tiny_data, tmp_path):
    engine.train(tiny_cfg(tiny_data, tmp_path / "run", epochs=1), SMALL)
    with pytest.raises(MedgeError, match="holds a run already: continue it with --resume"):
        engine.train(tiny_cfg(tiny_data, tmp_path / "run", epochs=1), SMALL)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a medge checkpoint: an empty file"),
        (b"garbage" * 100, "not a medge checkpoint: not a PyTorch file"),
        ("state_dict", "not a medge checkpoint"),
        ("truncated", "not a readable checkpoint"),
    ],
)
def test_corrupt_or_foreign_checkpoint(tmp_path, tiny_data, content, match):
    path = tmp_path / "x.pt"
    if content == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif content == "truncated":
        engine.train(tiny_cfg(tiny_data, tmp_path / "run", epochs=1), SMALL)
        data = (tmp_path / "run" / "best.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_cli_train_and_resume(tiny_data, tmp_path, capsys):
    from medge.edge.apps.cli import main

    out = tmp_path / "run"
    common = ["--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--img-size", "32", "--batch-size", "8"]
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", *common]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", *common]) == 0
    text = capsys.readouterr().out
    assert "epoch 1/1" in text and "epoch 2/2" in text and "best epoch" in text
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 1
    assert "data folder not found" in capsys.readouterr().err


def test_ddp_two_cpu_processes_only_rank0_writes(tiny_data, tmp_path, user_folder):
    """The README's torchrun command, run from a folder holding the user's own train.py (issue 10)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medge.train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--device", "cpu",
           "--img-size", "32", "--batch-size", "4", "--cache-dir", str(tmp_path / "c"), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=user_folder)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("epoch 2/2") == 1 and res.stdout.count("best epoch") == 1  # only rank 0 prints
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # only rank 0 appends
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "data_profile.json", "data_report.json",
                                                      "last.pt", "metrics.jsonl", "summary.json"]
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 2 and ck["metrics"]["val"]["n"] == 8  # val gathered from both ranks


def test_learning_rate_warm_up_cosine_and_extension():
    cfg = TrainConfig(epochs=8, lr=1e-3, warmup_epochs=1.0)
    steps = 10
    warm = [engine.learning_rate(cfg, 1, k, steps) for k in range(steps)]
    assert warm == pytest.approx([1e-4 * (k + 1) for k in range(steps)])  # linear, reaching lr at the end of epoch 1
    assert engine.learning_rate(cfg, 2, 0, steps) == pytest.approx(1e-3)  # then the cosine starts from lr
    lrs = [engine.learning_rate(cfg, e, k, steps) for e in range(2, 9) for k in range(steps)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and 0 < lrs[-1] < 1e-6
    # Extended to 12 epochs: the curve of a 12-epoch run, e.g. 0.5 (1 + cos(pi (8 - 1) / 11)) x lr at epoch 9.
    longer = TrainConfig(epochs=12, lr=1e-3, warmup_epochs=1.0)
    assert engine.learning_rate(longer, 9, 0, steps) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 7 / 11)))
    assert engine.learning_rate(TrainConfig(schedule="none", warmup_epochs=0.0), 5, 3, steps) == 1e-3


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_resume_from_another_folder_leaves_a_finished_run_untouched_and_extends_it(tiny_data, tmp_path, monkeypatch,
                                                                                   capsys):
    from medge.edge.apps.cli import main

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_data, work / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(work)  # relative paths, as a user types them
    assert main(["train", "--data", "data", "--out", "run", "--epochs", "2", "--cache-dir", "cache", "--device", "cpu",
                 "--img-size", "32", "--batch-size", "8", "--workers", "1"]) == 0
    run = work / "run"
    before, first_two = _files(run), history(run)
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "finished already (2 of 2 epochs" in capsys.readouterr().out
    assert _files(run) == before  # byte for byte, not even rewritten
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert "has trained 2 epochs already" in capsys.readouterr().err and _files(run) == before

    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "extending" in out and "from 2 to 3 epochs" in out and "epoch 3/3" in out
    extended = history(run)
    assert [h["epoch"] for h in extended] == [1, 2, 3] and extended[:2] == first_two
    last = load_checkpoint(run / "last.pt")
    cfg = last.train_config
    assert last.epoch == 3 and cfg.epochs == 3 and cfg.data == str(work / "data") and cfg.cache_dir == str(work / "cache")
    assert extended[2]["lr"] == pytest.approx(engine.learning_rate(cfg, 3, 0, 4)) and extended[2]["lr"] > 1e-5
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3
    assert sorted(os.listdir(elsewhere)) == []  # nothing written where the resume was typed


def test_resume_accepts_moved_data_and_refuses_other_data(tiny_data, tmp_path, capsys):
    from medge.edge.apps.cli import main

    shutil.copytree(tiny_data, tmp_path / "data")
    engine.train(tiny_cfg(tmp_path / "data", tmp_path / "run", epochs=1), SMALL)
    shutil.move(tmp_path / "data", tmp_path / "moved")
    before = _files(tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 2
    assert "the run's data folder is not there (moved?); give its place with --data" in capsys.readouterr().err
    changed = tmp_path / "changed"
    shutil.copytree(tmp_path / "moved", changed)
    next((changed / "train" / "normal").iterdir()).unlink()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--data", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "not the data this run was trained on: train/normal: 13 images, the run had 14" in err
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--lr", "0.1"]) == 2
    assert "cannot change lr=0.1 (the run's: 0.001)" in capsys.readouterr().err
    assert _files(tmp_path / "run") == before
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--data", str(tmp_path / "moved")]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt").train_config.data == str(tmp_path / "moved")


def test_a_run_on_dicom_class_folders_records_patients_per_split(tmp_path, capsys):
    """Class folders of DICOM files with a PatientID are split by patient, and the run says and records how many
    patients and images each split holds (as an index run does)."""
    from tests.train.test_data import dicom_classes

    root = dicom_classes(tmp_path, patient_ids=True)
    engine.train(tiny_cfg(root, tmp_path / "run", epochs=1, val_fraction=0.25), SMALL)
    splits = json.loads((tmp_path / "run" / "summary.json").read_text())["splits"]
    assert splits["train"]["patients"] + splits["val"]["patients"] == 22  # 10 per class, and 2 with images in both
    assert splits["train"]["images"] + splits["val"]["images"] == 72
    assert "split by patient: train" in capsys.readouterr().out
