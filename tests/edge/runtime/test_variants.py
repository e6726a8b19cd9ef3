"""A bundle's fast variants at the edge: sealed gates, verified files, pairs offered only where gated, and the choice.

Runs with the base install too (CI's OpenCV 4.5.5 and Debian environments, on the bundle the main environment
exported): a bundle with variants loads and predicts fp32 on cv2.dnn there.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medge.edge import Model
from medge.edge.decision import seal
from medge.edge.errors import BundleError, ConfigError, ModelIntegrityError, SelfTestError
from medge.edge.runtime.choice import VARIANT_MARGIN, candidate_pairs, pick_fastest
from medge.edge.runtime.engines import ENGINES, Engine
from medge.edge.runtime.variants import read_variants
from medge.edge.runtime.verify import open_bundle


@pytest.fixture
def copy(variant_bundle, tmp_path):
    return shutil.copytree(variant_bundle[0], tmp_path / "b")


def _manifest(folder):
    return json.loads((folder / "model.json").read_text())


def _write(folder, manifest):
    (folder / "model.json").write_text(json.dumps(manifest))


def test_a_bundle_without_variants_has_none(bundle):
    assert read_variants(_manifest(bundle), bundle) == {} and open_bundle(bundle).variants == {}


def test_variants_are_read_with_their_files_verified(variant_bundle):
    b = open_bundle(variant_bundle[0])
    assert set(b.variants) == {"bf16", "int8"}
    int8 = b.variants["int8"]
    assert int8.file == "model.int8.onnx" and int8.error is None and int8.data[:4] and int8.precision == "f32"
    assert b.variants["bf16"].file == "model.onnx" and b.variants["bf16"].precision == "bf16"
    pairs, _ = candidate_pairs(b, ["classic"], "auto")
    assert pairs == [("classic", "fp32")]  # cv2.dnn was never gated on a variant: it runs fp32 only


def test_with_the_base_install_a_bundle_with_variants_runs_fp32_on_opencv(variant_bundle, monkeypatch, tmp_path):
    for name in ("onnxruntime", "openvino"):
        monkeypatch.delitem(ENGINES, name, raising=False)
    m = Model.load(variant_bundle[0])
    assert m.engine in ("classic", "new") and m.variant == "fp32" and m.runtime == {"engine": m.engine, "variant": "fp32"}
    image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    (p,) = m.predict(image)
    assert p.ok and p.to_record(m.sha256, m.runtime)["runtime"] == {"engine": m.engine, "variant": "fp32"}
    with pytest.raises(BundleError, match=r"the int8 variant does not run on \['classic'(, 'new')?\]; it is offered on "
                                          r"\['onnxruntime', 'openvino'\], not installed here"):
        Model.load(variant_bundle[0], variant="int8")


def test_edited_gates_are_refused(copy):
    m = _manifest(copy)
    m["variants"]["int8"]["gates"]["onnxruntime"]["flips"] = 0  # a hand-edited gate result
    _write(copy, m)
    with pytest.raises(ModelIntegrityError, match="variants section .* does not match its SHA-256"):
        open_bundle(copy)
    m["variants"] = {k: v for k, v in m["variants"].items() if k != "sha256"}
    _write(copy, m)
    with pytest.raises(BundleError, match="not sealed"):
        open_bundle(copy)


def test_an_unknown_variant_is_refused(copy):
    m = _manifest(copy)
    body = {k: v for k, v in m["variants"].items() if k != "sha256"}
    m["variants"] = seal({**body, "int4": {"gates": {}}})
    _write(copy, m)
    with pytest.raises(BundleError, match="unknown variant 'int4'"):
        open_bundle(copy)


def test_a_modified_variant_file_disables_the_variant_not_the_bundle(copy):
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    b = open_bundle(copy)
    assert "SHA-256 does not match" in b.variants["int8"].error and b.variants["int8"].offered == ()
    assert ("onnxruntime", "int8") not in candidate_pairs(b, list(ENGINES), "auto")[0]
    with pytest.raises(BundleError, match="SHA-256 does not match"):
        Model.load(copy, engine="classic", variant="int8")
    from medge.edge.runtime.choice import bundle_key

    assert bundle_key(b)["variants"]["usable"] == ["bf16"]  # a damaged copy never shares a recorded choice
    assert Model.load(copy, engine="classic").variant == "fp32"


def test_a_variant_the_bundle_lacks_is_a_config_error(bundle):
    with pytest.raises(ConfigError, match=r"variant 'int8': this bundle has \['fp32'\]"):
        open_bundle(bundle, variant="int8")


def test_a_variant_wins_only_by_the_margin():
    fp32, int8 = ("classic", "fp32"), ("openvino", "int8")
    chosen, why = pick_fastest({fp32: 10.0, int8: 10.0 / VARIANT_MARGIN + 0.05})
    assert chosen == fp32 and "not 1.10x faster than fp32" in why
    assert pick_fastest({fp32: 10.0, int8: 2.0}) == (int8, None)
    assert pick_fastest({fp32: 3.0, ("onnxruntime", "fp32"): 2.0}) == (("onnxruntime", "fp32"), None)


class _Shifted:
    """A net whose logits are moved: a CPU that computes the variant differently from the box that gated it."""

    def __init__(self, net):
        self.net = net

    def __getattr__(self, name):
        return getattr(self.net, name)

    def forward(self, *args):
        out = self.net.forward(*args)
        return out + 0.5 if not isinstance(out, tuple) else (out[0] + 0.5, *out[1:])  # logits first, then the CAM map


def test_a_pair_that_does_not_reproduce_its_gated_outputs_never_runs(variant_bundle, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    real, fp32_bytes = ENGINES["onnxruntime"], open_bundle(variant_bundle[0]).onnx_bytes

    def read(src, precision="f32"):
        net = real.read(src, precision)
        return net if src == fp32_bytes else _Shifted(net)  # the int8 file computed differently here

    monkeypatch.setitem(ENGINES, "onnxruntime", Engine(real.name, real.about, read, real.backends, real.extra,
                                                       real.precisions, real.quantized))
    m = Model.load(variant_bundle[0], engine="onnxruntime")
    trials = {t.variant: t for t in m.engine_choice.trials}
    assert m.variant == "fp32" and trials["fp32"].ok
    assert "golden self-test of the int8 variant (against its outputs on the box that gated it) failed" in trials["int8"].error
    with pytest.raises(SelfTestError, match="int8 variant"):
        Model.load(variant_bundle[0], engine="onnxruntime", variant="int8")


def test_choice_names_variant_and_records_it(variant_bundle, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    m = Model.load(variant_bundle[0])
    trials = {(t.engine, t.variant): t for t in m.engine_choice.trials}
    assert (m.engine, m.variant) in trials and trials[(m.engine, m.variant)].ok
    assert ("classic", "fp32") in trials and ("onnxruntime", "int8") in trials  # every pair measured at the first load
    again = Model.load(variant_bundle[0])
    assert (again.engine, again.variant) == (m.engine, m.variant)
    assert again.engine_choice.reason.startswith("recorded on this box")
    forced = Model.load(variant_bundle[0], engine="onnxruntime", variant="int8")
    sha = forced.manifest["variants"]["int8"]["sha256"]  # the int8 file that computed it
    assert forced.runtime == {"engine": "onnxruntime", "variant": "int8", "variant_sha256": sha}
    assert forced.engine_choice.reason == "asked for"
    assert Model.load(variant_bundle[0], variant="fp32").variant == "fp32"  # fp32 forbids the fast variants


def test_a_pair_with_its_own_operating_point_decides_by_it_and_says_so(copy):
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    m = _manifest(copy)
    own = {k: v for k, v in m["operating_point"].items() if k != "sha256"}
    own["threshold"] = 0.123456
    body = {k: v for k, v in m["variants"].items() if k != "sha256"}
    body["int8"]["gates"]["onnxruntime"]["operating_point"] = seal(own)
    m["variants"] = seal(body)
    _write(copy, m)
    pair = Model.load(copy, engine="onnxruntime", variant="int8")
    assert pair.operating_point.threshold == 0.123456 and pair.runtime["operating_point"] == "own"
    fp32 = Model.load(copy, engine="onnxruntime", variant="fp32")
    assert fp32.operating_point.threshold == m["operating_point"]["threshold"] and "operating_point" not in fp32.runtime
    (p,) = pair.predict((np.arange(48 * 48).reshape(48, 48) % 241).astype(np.uint8))
    assert p.threshold == 0.123456


def test_a_new_set_of_variants_is_measured_anew(bundle, variant_bundle):
    from medge.edge.runtime.choice import bundle_key

    plain, fast = open_bundle(bundle), open_bundle(variant_bundle[0])
    assert "variants" not in bundle_key(plain)  # bundles without variants keep their recorded choices
    assert bundle_key(fast)["variants"] == {"sha256": fast.manifest["variants"]["sha256"], "usable": ["bf16", "int8"]}


def test_heatmaps_run_on_the_chosen_variant(variant_bundle):
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    image = (np.arange(64 * 64).reshape(64, 64) % 239).astype(np.uint8)
    for variant in ("int8", "fp32"):
        m = Model.load(variant_bundle[0], engine="onnxruntime", variant=variant)
        (p,) = m.predict(image, heatmaps=True)
        assert p.ok and p.explanation is not None and p.explanation.method == "cam", variant
    gate = open_bundle(variant_bundle[0]).variants["int8"].gates["onnxruntime"]
    assert m.explainer.logit_rtol == 1e-3  # fp32: the exported model's own tolerance
    int8 = Model.load(variant_bundle[0], engine="onnxruntime", variant="int8")
    assert int8.explainer.logit_rtol == pytest.approx(max(1e-3, 2 * gate["logit_drift"]["max"]))
