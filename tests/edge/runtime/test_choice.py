"""The fastest correct engine, by measurement; bundles asking for engines this OpenCV lacks."""
import json
import shutil
import time

import cv2
import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.errors import BundleError, SelfTestError
from medge.edge.model import Model
from medge.edge.runtime.choice import record_engine, record_key, record_path
from medge.edge.runtime.engines import ENGINES, Engine, engines_for


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Recorded engine choices go to a temporary cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


class _Wrapped:
    """A real classic-engine net with a twist: outputs shifted, passes slowed, or batches > 1 failing."""

    def __init__(self, net, shift=0.0, sleep_s=0.0, batches=True):
        self.net, self.shift, self.sleep_s, self.batches = net, shift, sleep_s, batches

    def empty(self):
        return self.net.empty()

    def setInput(self, blob):
        self.n = len(blob)
        self.net.setInput(blob)

    def getUnconnectedOutLayersNames(self):  # noqa: N802 (cv2's name)
        return self.net.getUnconnectedOutLayersNames()

    def forward(self, names=None):
        if self.n > 1 and not self.batches:
            raise cv2.error("(-215:Assertion failed) start <= (int)shape.size() in function 'total'")
        time.sleep(self.sleep_s)
        out = self.net.forward() if names is None else self.net.forward(names)
        if isinstance(names, list):  # several named outputs (a heatmap bundle): all shifted
            return [o + np.float32(self.shift) for o in out]
        return out + np.float32(self.shift)


CLASSIC = ENGINES["classic"]


def _add_engine(monkeypatch, name, **twist):
    monkeypatch.setitem(ENGINES, name, Engine(name, "a test engine", lambda src: _Wrapped(CLASSIC.read(src), **twist), ("cpu",)))


def test_auto_runs_a_correct_engine_and_says_why(bundle):
    m = Model.load(bundle)
    choice = m.engine_choice
    assert choice.requested == "auto" and m.engine == choice.engine and m.engine in ENGINES
    assert choice.trials[0].engine == m.engine and choice.trials[0].self_test_max_abs <= 1e-3
    opencv_engines = engines_for("cpu", extras=False)  # at load time auto measures OpenCV's engines only
    if len(opencv_engines) == 1:
        assert "the only engine" in choice.reason and choice.trials[0].forward_ms is None
    else:
        assert "fastest correct" in choice.reason and {t.engine for t in choice.trials} == set(opencv_engines)
        p50 = {t.engine: t.forward_ms["p50_ms"] for t in choice.trials}
        assert m.engine == min(p50, key=p50.get)
    assert Model.load(bundle, engine="classic").engine_choice.reason == "asked for"


def test_a_fast_but_wrong_engine_and_a_slow_one_lose(bundle, monkeypatch):
    _add_engine(monkeypatch, "wrong", shift=0.5)
    _add_engine(monkeypatch, "slow", sleep_s=0.05)  # 50 ms a pass on a model that takes about 1 ms
    m = Model.load(bundle)
    trials = {t.engine: t for t in m.engine_choice.trials}
    assert m.engine not in ("wrong", "slow")
    assert not trials["wrong"].ok and "golden self-test failed" in trials["wrong"].error
    assert trials["slow"].ok and trials["slow"].forward_ms["p50_ms"] > trials[m.engine].forward_ms["p50_ms"]


def test_no_correct_engine_is_a_self_test_error_naming_each(bundle, monkeypatch):
    for name in list(ENGINES):
        monkeypatch.delitem(ENGINES, name)
    _add_engine(monkeypatch, "one", shift=0.5)
    _add_engine(monkeypatch, "two", shift=-0.5)
    with pytest.raises(SelfTestError, match=r"no engine of OpenCV .* runs this model correctly: \[one\].*; \[two\]"):
        Model.load(bundle)


def test_batches_that_fail_here_fall_back_to_one_image_per_pass(bundle, monkeypatch, tmp_path):
    _add_engine(monkeypatch, "nobatch", batches=False)  # as OpenCV 4.5.5/4.6 do on squeeze-excitation models
    m = Model.load(bundle, engine="nobatch")
    assert m.dynamic_batch is False and "one image per forward pass" in m.batch_note
    assert m.engine_choice.trials[0].batched is False
    x = np.stack([m.bundle.golden_inputs()[0]] * 3)
    ref = Model.load(bundle, engine="classic")
    np.testing.assert_array_equal(m.infer(x), ref.infer(x))
    assert ref.dynamic_batch is True and ref.batch_note is None


def test_a_bundle_asking_for_an_engine_this_opencv_lacks(bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["runtime"]["engine"] = "warp"
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"model.json: the bundle asks for an engine this OpenCV lacks: engine 'warp' "
                                          r"is not available in OpenCV .*--engine auto"):
        Model.load(copy)
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["predict", "--model", str(copy), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "asks for an engine this OpenCV lacks" in err and "Traceback" not in err and "cannot read" not in err
    assert Model.load(copy, engine="auto").engine in ENGINES


def test_a_recorded_choice_is_used_and_a_bad_record_ignored(bundle, cache):
    sha = Model.open(bundle).sha256
    engine = list(ENGINES)[-1]
    path = record_engine(record_key(sha, "cpu"), engine)
    assert path.parent == cache / "medge" / "engines"
    m = Model.load(bundle)
    assert (m.engine, m.engine_choice.reason) == (engine, "recorded by medge check on this box")
    other_threads = record_key(sha, "cpu", threads=cv2.getNumThreads() + 1)
    assert record_path(other_threads) != path  # another thread count is another key
    path.write_text("{not json")
    assert Model.load(bundle).engine_choice.reason != "recorded by medge check on this box"
