"""The recipe benchmark's plumbing (its runs take minutes each: they are never run here)."""
import json

import pytest

from medge.benchmarks import recipe
from medge.train.config import TrainConfig


def test_every_recipe_is_a_valid_config_and_after_is_todays_defaults(tmp_path):
    for name in recipe.RECIPES:
        cfg = recipe.recipe_config(name, tmp_path / "d", tmp_path / "r", tmp_path / "c", train_seed=0)
        assert cfg.epochs == recipe.TRAIN["epochs"] and cfg.device == "cpu"
    after = recipe.recipe_config("after", tmp_path / "d", tmp_path / "r", tmp_path / "c", 0)
    keep = ("data", "out", "cache_dir", "epochs", "device")
    assert {k: v for k, v in after.to_dict().items() if k not in keep} == \
        {k: v for k, v in TrainConfig().to_dict().items() if k not in keep}


def _fake_run(folder, accuracies, kept):
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e + 1, "time_s": 10.0, "val": {"accuracy": a, "loss": 1 - a, "auc": a}})
             for e, a in enumerate(accuracies)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps({"best": {"epoch": kept}, "val": {"accuracy": accuracies[kept - 1],
                                                                                      "auc": 0.9},
                                                    "test": {"accuracy": 0.8}}))


def test_results_and_table_from_run_folders(tmp_path):
    _fake_run(tmp_path / "a", [0.5, 0.9, 0.8, 0.85], kept=2)
    r = recipe.run_result(tmp_path / "a")
    assert (r["val_accuracy_kept"], r["val_accuracy_last"], r["val_accuracy_max"]) == (0.9, 0.85, 0.9)
    assert r["late_val_loss_range"] == pytest.approx(0.05) and r["train_seconds"] == 40.0
    s = recipe.aggregate([r, {**r, "val_accuracy_kept": 0.8}])
    assert (s["min"], s["reached_target"], s["runs"]) == (0.8, 1, 2)
    record = {"target_val_accuracy": 0.85, "data": {"n": 400, "size": 256, "seeds": [1, 2]},
              "train": {"img_size": 128, "epochs": 8, "seed": 0, "torch_threads": 1},
              "recipes": {"after": {"about": "x", "changes": {}, "runs": {"1": r}, "summary": recipe.aggregate([r])}},
              "env": {"cpu": "cpu", "cores": 2}}
    table = recipe.markdown(record)
    assert "| after | 0.900 (0.850) | - | 0.900 | 0.900 | 1/1 |" in table
