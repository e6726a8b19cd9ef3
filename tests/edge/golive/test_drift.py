"""medge monitor and edge.golive.drift: records of a box against the bundle's validation scores and training profile."""
import json
from pathlib import Path

import numpy as np
import pytest

from medge.edge import golive as ev
from medge.edge.apps.cli import main
from medge.edge.errors import UsageError
from medge.edge.golive import drift, shift
from medge.edge.model import Model
from medge.train.synth import SynthConfig, generate
from tests.edge.calibrated import calibrated_copy, synth_split


@pytest.fixture(scope="module")
def setup(bundle, tmp_path_factory):
    """A calibrated bundle with the profile of its 8-bit 64 px validation images, and a maker of record files."""
    root = tmp_path_factory.mktemp("drift")
    val, _ = synth_split(root / "d", n=160)
    b = calibrated_copy(bundle, root / "b", val)
    model = Model.load(b)

    made: dict[str, Path] = {}

    def records(name: str, **kw) -> Path:  # one record file per set, made once per module
        if name in made:
            return made[name]
        cfg = {"n": 80, "size": 64, "bits": "8", "val_fraction": 0.0, "test_fraction": 0.0, "seed": 7, **kw}
        generate(root / name, SynthConfig(**cfg))
        paths = sorted(str(p) for p in (root / name).rglob("*.png"))
        out = root / f"{name}.jsonl"
        out.write_text("".join(json.dumps(p.to_record(model.sha256)) + "\n" for p in model.predict(paths, workers=0)))
        made[name] = out
        return out

    return b, model, records


def _monitor(b, tmp_path, *files, extra=()):
    rc = main(["monitor", "--model", str(b), *map(str, files), "--out", str(tmp_path / "m/drift.json"), *extra])
    return rc, json.loads((tmp_path / "m/drift.json").read_text())


def test_records_of_the_same_distribution_are_not_drift_and_say_what_they_cannot_see(setup, tmp_path):
    """80 records against the bundle's few dozen validation cases: no alarm, but not "stable" either (issue 31):
    the report states the smallest shift each check would see, in JSON and in the summary."""
    b, model, records = setup
    rc, report = _monitor(b, tmp_path, records("same", seed=9))
    assert (rc, report["verdict"]) == (0, "too little data")
    assert report["records"] == 80 and report["files"] == 1
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) >= {"score distribution", "positive share", "warning share", "bit depth", "image size", "gray_mean"}
    assert not any(c["drift"] for c in checks.values())
    scores = checks["score distribution"]
    assert scores["false_alarm_rate"] == pytest.approx(drift.PSI_ALPHA + drift.KS_ALPHA)
    assert scores["detectable"]["shift"] > drift.COARSE_SD and scores["too_little_data"]
    assert f"too little data to see a shift below {scores['detectable']['shift']:.2f} SD" in " ".join(report["reasons"])
    assert all(0 < c["false_alarm_rate"] <= 0.01 and "detectable" in c for c in checks.values())
    summary = (tmp_path / "m/drift.md").read_text()
    assert "too little data to see a shift below" in summary and "false-alarm rate" in summary
    assert (tmp_path / "m/drift.scores.png").stat().st_size > 0


@pytest.mark.parametrize("shift, check", [({"bits": "16"}, "bit depth"), ({"size": 128}, "image size")])
def test_records_of_a_shifted_set_are_flagged(setup, tmp_path, capsys, shift, check):
    b, model, records = setup
    rc, report = _monitor(b, tmp_path, records("shift_" + "_".join(map(str, shift.values())), **shift))
    assert rc == 1 and report["verdict"] == "drift"
    flagged = {c["check"] for c in report["checks"] if c["drift"]}
    assert check in flagged and "warning share" in flagged
    assert any(check in r or "never seen" in r or "outside" in r for r in report["reasons"])
    assert "verdict: drift" in capsys.readouterr().err


def test_other_models_errors_and_torn_lines_are_left_out_and_counted(setup, tmp_path):
    b, model, records = setup
    lines = records("same", seed=9).read_text().splitlines()
    folder = tmp_path / "box"
    folder.mkdir()
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    other = json.loads(lines[0]) | {"model_sha256": "0" * 64}
    failed = json.loads(lines[1]) | {"error": "x.png: truncated PNG", "label": None, "probabilities": None}
    skipped = json.loads(lines[2]) | {"status": "skipped"}
    malformed = json.loads(lines[3]) | {"probabilities": [0.2, 0.8]}
    (folder / "mixed.jsonl").write_text("\n".join(
        [json.dumps(other), json.dumps(failed), json.dumps(skipped), '{"torn', "[1, 2]", json.dumps({"a": 1}),
         json.dumps(malformed), "x" * (3 << 20)]) + "\n")
    rc, report = _monitor(b, tmp_path, folder, folder / "mixed.jsonl")  # mixed.jsonl given twice: read once
    assert report["records"] == 80 and report["files"] == 2
    assert report["left_out"] == {"another model (model_sha256 differs)": 1, "an error record": 2, "node: skipped": 1,
                                  "not JSON (a torn or foreign line)": 1, "not a record": 1,
                                  "not a medge prediction record": 1, "not a record (a line over 1 MB)": 1}


def test_too_few_records_is_not_called_stable(setup, tmp_path):
    b, model, records = setup
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(records("same", seed=9).read_text().splitlines()[:20]) + "\n")
    rc, report = _monitor(b, tmp_path, few)
    assert (rc, report["verdict"]) == (0, "too few records") and "at least 50" in report["reasons"][0]


def test_since_keeps_dated_records_and_leaves_undated_ones_out(setup, tmp_path):
    b, model, records = setup
    lines = [json.loads(ln) for ln in records("same", seed=9).read_text().splitlines()]
    dated = tmp_path / "dated.jsonl"
    dated.write_text("".join(json.dumps(r | {"processed_at": f"2026-11-{1 + i % 20:02d}T08:00:00+00:00"}) + "\n"
                             for i, r in enumerate(lines)))
    undated = tmp_path / "undated.jsonl"
    undated.write_text("".join(json.dumps(r) + "\n" for r in lines[:5]))
    rc, report = _monitor(b, tmp_path, dated, undated, extra=("--since", "2026-11-11"))
    assert report["records"] == sum(1 + i % 20 >= 11 for i in range(len(lines)))
    assert report["left_out"]["before --since"] == len(lines) - report["records"]
    assert report["left_out"]["undated (predict records carry no time; --since needs watch or node records)"] == 5


@pytest.mark.parametrize("argv, message", [
    (["--since", "last week"], "--since 'last week'"),
    (["--out", "{tmp}/m/drift.txt"], "give a .json file name"),
])
def test_usage_errors_exit_2(setup, tmp_path, capsys, argv, message):
    b, model, records = setup
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "m/drift.json")]
    assert main(["monitor", "--model", str(b), str(records("same", seed=9)), *out, *argv]) == 2
    assert message in capsys.readouterr().err
    assert main(["monitor", "--model", str(b), str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no such file or folder of records" in capsys.readouterr().err


def test_an_existing_report_is_not_replaced(setup, tmp_path, capsys):
    b, model, records = setup
    f = records("same", seed=9)
    assert _monitor(b, tmp_path, f)[0] == 0
    before = (tmp_path / "m/drift.json").read_bytes()
    assert main(["monitor", "--model", str(b), str(f), "--out", str(tmp_path / "m/drift.json")]) == 2
    assert "exists already" in capsys.readouterr().err and (tmp_path / "m/drift.json").read_bytes() == before


# -- the score check's statistics ---------------------------------------------------------------------------


def test_chi2_quantile_is_close_to_scipy():
    chi2 = pytest.importorskip("scipy.stats").chi2
    for df in (3, 5, 9, 20, 60):
        for p in (0.9, 0.99, 0.999, 0.9999):
            assert ev.chi2_quantile(p, df) == pytest.approx(chi2.ppf(p, df), rel=0.04 if df < 9 else 0.013)


def _score_check(ref: np.ndarray, cur: np.ndarray) -> dict:
    op = {"positive": "disease", "validation": {"scores": ref.tolist(), "score_of": "disease"}}
    return drift.score_checks([{"probabilities": {"disease": float(s)}} for s in cur], op)[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


SIZES = [(48, 50), (48, 80), (1000, 1000)]


@pytest.mark.parametrize("sizes", SIZES, ids=[f"{m}v{n}" for m, n in SIZES])
def test_score_check_false_alarm_rate_at_most_one_percent(sizes):
    """Same distribution, 2,000 seeded pairs: the whole score check (PSI or KS) fires at most 1% of the time
    (stated 0.5%). Before issue 31: 2.1% at 48 v 50 and 0.8% at 48 v 80 (PSI's fixed floor). Measured
    0.55%, 0.45%, 0.55%."""
    m, n = sizes
    rng = np.random.default_rng(m * 7 + n)
    fired = [_score_check(_sigmoid(rng.normal(0, 1, m)), _sigmoid(rng.normal(0, 1, n)))["drift"] for _ in range(2000)]
    assert 0.001 <= np.mean(fired) <= 0.01  # not zero either: the floor is the stated rate, not a wall


def test_score_check_power_and_what_it_says_when_it_cannot_see():
    """A 0.5 SD shift (on the logit scale) is seen in >= 80% of 1000 v 1000 pairs (measured 100%). At 48 v 80 it is
    seen about a quarter of the time; every pair it misses says "too little data to see a shift below ...", never
    "stable" (before: 21% seen, the rest "stable")."""
    rng = np.random.default_rng(5)
    big = [_score_check(_sigmoid(rng.normal(0, 1, 1000)), _sigmoid(rng.normal(0.5, 1, 1000))) for _ in range(200)]
    assert np.mean([c["drift"] for c in big]) >= 0.8
    assert big[0]["detectable"]["shift"] < drift.COARSE_SD and not big[0]["too_little_data"]
    small = [_score_check(_sigmoid(rng.normal(0, 1, 48)), _sigmoid(rng.normal(0.5, 1, 80))) for _ in range(300)]
    assert 0.1 < np.mean([c["drift"] for c in small]) < 0.5
    missed = [c for c in small if not c["drift"]]
    assert all(c["too_little_data"] and c["note"].startswith("too little data to see a shift below 0.") for c in missed)


@pytest.mark.parametrize("sizes", [(48, 80), (300, 200)], ids=["48v80", "300v200"])
def test_the_stated_detectable_shift_is_seen_with_80_percent_power(sizes):
    """min_detectable_shift's own simulation, checked through the real check on fresh seeds (band 0.72 to 0.88)."""
    m, n = sizes
    shift = ev.min_detectable_shift(m, n, drift.PSI_ALPHA, drift.KS_ALPHA)
    assert 0 < shift < 4
    rng = np.random.default_rng(11)
    seen = [_score_check(rng.normal(0, 1, m), rng.normal(shift, 1, n))["drift"] for _ in range(600)]
    assert 0.72 <= np.mean(seen) <= 0.88


def test_a_year_of_records_is_simulated_at_the_cap_and_the_answer_is_an_upper_bound():
    """Past MAX_SIMULATED_SIZE the simulation runs at the cap (bounded memory), and fewer cases never see more."""
    cap = shift.MAX_SIMULATED_SIZE
    at_cap = ev.min_detectable_shift(48, cap, drift.PSI_ALPHA, drift.KS_ALPHA)
    assert ev.min_detectable_shift(48, 200_000, drift.PSI_ALPHA, drift.KS_ALPHA) == at_cap
    assert at_cap <= ev.min_detectable_shift(48, cap // 4, drift.PSI_ALPHA, drift.KS_ALPHA)


def test_psi_noise_floor_is_the_stated_quantile_of_the_psi():
    """Against psi() on samples actually drawn (a different distribution: PSI depends on ranks only)."""
    rng = np.random.default_rng(3)
    for m, n in ((48, 80), (200, 1000)):
        floor = ev.psi_noise_floor(10, m, n, 0.95)
        over = [ev.psi(rng.exponential(1, m), rng.exponential(1, n))["psi"] > floor for _ in range(4000)]
        assert 0.04 <= np.mean(over) <= 0.06
    assert ev.psi_noise_floor(10, 48, 80, 0.9975) > ev.psi_noise_floor(10, 1000, 1000, 0.9975)
    with pytest.raises(UsageError, match="n_current"):
        ev.psi_noise_floor(10, 48, 0)


def test_ks_critical_value_and_vectorised_statistics_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for m, n in ((48, 80), (1000, 1000), (30, 700)):
        n_eff = round(m * n / (m + n))
        assert shift.ks_critical(m, n, 0.0025) == pytest.approx(stats.kstwo.isf(0.0025, n_eff), rel=1e-6)
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(size=(20, 30)), 1), np.sort(rng.normal(0.3, 1, size=(20, 45)), 1)
    expected = [stats.ks_2samp(a[i], b[i]).statistic for i in range(20)]
    np.testing.assert_allclose(shift._ks_statistics(a, b), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("share", [0.1, 0.4, 0.7])
def test_positive_share_false_alarms_at_most_the_stated_rate(share):
    """48 validation cases v 500 records of one share, 4,000 draws: at most SHARE_ALPHA (1%) + 0.5 points
    (3 standard errors). Before issue 31 (the validation share taken as exact): 5.55% at share 0.4.
    Measured 0.8%, 0.85%, 1.05%."""
    rng = np.random.default_rng(int(share * 100))
    k_ref, k = rng.binomial(48, share, 4000), rng.binomial(500, share, 4000)
    fired = [drift._positive_share_check(int(k[i]), 500, int(k_ref[i]), 48, "x")["drift"] for i in range(4000)]
    assert np.mean(fired) <= drift.SHARE_ALPHA + 0.005


def test_positive_share_states_what_it_can_see():
    """The detectable change is the one statsmodels' power function gives 80% power, and the simulated power of
    the Newcombe test there is about 80% (the normal approximation; band 0.7 to 0.9)."""
    smp = pytest.importorskip("statsmodels.stats.proportion")
    coarse = drift._positive_share_check(20, 80, 19, 48, "x")
    assert coarse["too_little_data"] and "percentage points" in coarse["note"]
    fine = drift._positive_share_check(400, 1000, 400, 1000, "x")
    assert not fine["too_little_data"] and fine["detectable"]["shift"] < drift.COARSE_POINTS
    d = ev.detectable_difference(0.4, 300, 600, drift.SHARE_ALPHA)
    power = smp.power_proportions_2indep(d, 0.4, 300, ratio=2, alpha=drift.SHARE_ALPHA).power
    assert power == pytest.approx(0.8, abs=0.01)
    rng = np.random.default_rng(2)
    k_ref, k = rng.binomial(300, 0.4, 2000), rng.binomial(600, 0.4 + d, 2000)
    low = rng.binomial(600, 0.4 - d, 2000)
    up_seen = np.mean([drift._positive_share_check(int(k[i]), 600, int(k_ref[i]), 300, "x")["drift"] for i in range(2000)])
    down_seen = np.mean([drift._positive_share_check(int(low[i]), 600, int(k_ref[i]), 300, "x")["drift"]
                         for i in range(2000)])
    assert 0.7 <= min(up_seen, down_seen) and max(up_seen, down_seen) <= 0.95


def test_a_large_sample_of_one_distribution_is_stable():
    """With 1,000 validation scores and 1,000 records every check sees its coarse shift: "stable" is earned."""
    rng = np.random.default_rng(8)
    ref, cur = _sigmoid(rng.normal(0, 1, 1000)), _sigmoid(rng.normal(0, 1, 1000))
    manifest = {"operating_point": {"positive": "d", "threshold": 0.5, "validation": {"scores": ref.tolist(), "score_of": "d"}}}
    records = [{"probabilities": {"d": float(s)}, "label": "d" if s >= 0.5 else "n", "warnings": []} for s in cur]
    report = drift.monitor(records, manifest)
    assert (report["verdict"], report["reasons"]) == ("stable", [])
    assert {c["check"] for c in report["checks"]} == {"score distribution", "positive share", "warning share"}
    shifted = [r | {"probabilities": {"d": float(s)}} for r, s in zip(records, _sigmoid(rng.normal(0.5, 1, 1000)), strict=True)]
    assert drift.monitor(shifted, manifest)["verdict"] == "drift"


def test_the_warning_of_a_model_trained_on_synthetic_images_is_not_counted_as_an_input_warning():
    """Every record of such a bundle carries it alike: the warning share counts the warnings about the input."""
    from medge.edge.inputs.profile import SYNTHETIC_WARNING

    scores = _sigmoid(np.random.default_rng(9).normal(0, 1, 200))
    manifest = {"operating_point": {"positive": "d", "threshold": 0.5,
                                    "validation": {"scores": scores.tolist(), "score_of": "d"}}}
    records = [{"probabilities": {"d": float(s)}, "label": "d" if s >= 0.5 else "n", "warnings": [SYNTHETIC_WARNING]}
               for s in scores]
    share = next(c for c in drift.monitor(records, manifest)["checks"] if c["check"] == "warning share")
    assert share["share"] == 0 and not share["drift"]
    odd = [r | {"warnings": [SYNTHETIC_WARNING, "modality CT never seen in training"]} for r in records]
    share = next(c for c in drift.monitor(odd, manifest)["checks"] if c["check"] == "warning share")
    assert share["share"] == 1 and share["drift"]
