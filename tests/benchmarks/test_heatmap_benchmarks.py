import json
import shutil

import cv2
import numpy as np
import pytest

from medge.benchmarks import heatmap_cost, pointing_game
from medge.benchmarks.report import main as report_main
from medge.edge.errors import UsageError
from medge.train.synth import Lesion, index_key, read_lesion_index


def test_hottest_point_maps_model_pixels_to_image_pixels():
    heat = np.zeros((32, 32), np.float32)
    heat[8, 24] = 1.0
    x, y = pointing_game.hottest_point(heat, 256, 256)
    assert (x, y) == pytest.approx((24.5 * 8 - 0.5, 8.5 * 8 - 0.5))
    assert pointing_game.hottest_point(np.zeros((4, 4), np.float32), 10, 10) is None  # no evidence: no point


def test_hits_are_within_radius_plus_tolerance():
    lesions = [Lesion(100.0, 50.0, 10.0)]
    assert pointing_game.is_hit((105.0, 55.0), lesions, 0.0)
    assert not pointing_game.is_hit((100.0, 65.0), lesions, 0.0)
    assert pointing_game.is_hit((100.0, 65.0), lesions, 5.0)
    assert not pointing_game.is_hit(None, lesions, 100.0)
    mask = pointing_game.reach_mask(lesions, 200, 100, 5.0)
    assert mask.sum() == pytest.approx(np.pi * 15 ** 2, rel=0.05) and mask[50, 100] and not mask[50, 80]


def test_pointing_game_on_synthetic_data(heat_bundle, tiny_data, tmp_path, capsys):
    out, example = tmp_path / "pg.json", tmp_path / "example.png"
    assert pointing_game.main(["--model", str(heat_bundle[0]), "--data", str(tiny_data), "--split", "train",
                               "--out", str(out), "--example", str(example)]) == 0
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "medge pointing game" and rec["method"] == "cam" and rec["images"] == 14  # disease only
    assert all(r["lesions"] for r in rec["results"]) and rec["hits"] == sum(r["hit"] for r in rec["results"])
    index = read_lesion_index(tiny_data)  # the ground truth is synth's lesion index, image by image
    assert [r["lesions"] for r in rec["results"]] == [[les.__dict__ for les in index[index_key(tiny_data, r["path"])].lesions]
                                                      for r in rec["results"]]
    assert 0 < rec["random_point_hit_rate"] < 1 and 0 <= rec["prior_point_hit_rate"] <= 1
    pic = cv2.imread(str(example))
    assert pic.shape == (192, 2 * 192 + 6, 3) and rec["example"] == str(example)  # input | overlay, twice the 96 px
    assert "pointing-game hits" in capsys.readouterr().out
    assert report_main([str(out)]) == 0 and f"| {rec['hits']} (" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no such split"):
        pointing_game.run_pointing_game(str(heat_bundle[0]), str(tiny_data), "nothing")
    shutil.copytree(tiny_data / "train", tmp_path / "no_index" / "train")  # images without synth's lesion index
    with pytest.raises(UsageError, match="no lesions.jsonl"):
        pointing_game.run_pointing_game(str(heat_bundle[0]), str(tmp_path / "no_index"), "train")


def test_heatmap_cost_record(heat_bundle, occlusion_bundle, tmp_path, capsys):
    out = tmp_path / "cost.json"
    assert heatmap_cost.main(["--model", str(heat_bundle[0]), str(occlusion_bundle[0]), "--repeats", "2",
                              "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    cam, occ = rec["bundles"]
    assert (cam["method"], cam["forward_passes"]) == ("cam", 1)
    # 64 px, patch 9, stride 4: corners 0, 4, ..., 52 and 55 per axis -> 15 x 15 positions, plus the unoccluded pass
    assert (occ["method"], occ["forward_passes"]) == ("occlusion", 15 * 15 + 1)
    assert cam["infer"]["n"] == cam["explain"]["n"] == 2 and occ["ratio"] > 0
    assert "| occlusion | 226 |" in capsys.readouterr().out
