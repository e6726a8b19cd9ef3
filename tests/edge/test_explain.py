"""Heatmaps on the edge (medge.edge.explain, Model.explain): numpy + OpenCV only."""
import json
import shutil

import cv2
import numpy as np
import pytest

from medge.edge.errors import BundleError, ImageError, InferenceError, ModelIntegrityError, SelfTestError, UsageError
from medge.edge.explain import (
    CamExplainer,
    Explanation,
    OcclusionExplainer,
    OcclusionGrid,
    default_occlusion,
    display_image,
    scale_map,
)
from medge.edge.inputs.image import write_image
from medge.edge.model import Model
from medge.edge.preprocess import PreprocessConfig, preprocess, preprocess_stages
from medge.edge.runtime.engines import ENGINES
from tests.conftest import xray_like


def _region_model(y0, y1, x0, x1):
    """A stand-in for a net: logit 0 = mean of a region of the input, logit 1 = minus that."""
    def run(blob, names):
        score = blob[:, 0, y0:y1, x0:x1].mean(axis=(1, 2)).astype(np.float32)
        return {"logits": np.stack([score, -score], axis=1)}
    return run


def test_scale_map_relu_resize_and_range():
    raw = np.array([[-2.0, 1.0], [3.0, 5.0]], np.float32)
    h = scale_map(raw, (8, 6))
    assert h.shape == (8, 6) and h.dtype == np.float32 and h.min() == 0.0 and h.max() == 1.0
    assert h[-1, -1] == 1.0 and h[0, 0] == 0.0  # the largest cell is the hottest; negative evidence is cut to 0
    assert not scale_map(-np.ones((3, 3)), (4, 4)).any()  # nothing positive: all zeros, not NaN
    assert not scale_map(np.ones((3, 3)), (4, 4)).any()  # flat: no place stands out


def test_occlusion_grid_covers_every_pixel():
    for size, patch, stride in [(224, 32, 16), (64, 9, 4), (10, 10, 3), (7, 3, 3), (5, 5, 5)]:
        grid = OcclusionGrid(size, patch, stride)
        covered = np.zeros((size, size), int)
        for y, x in grid.positions:
            covered[y : y + patch, x : x + patch] += 1
        assert covered.min() >= 1, (size, patch, stride)
    assert len(OcclusionGrid(224, **{k: v for k, v in default_occlusion(224).items() if k != "baseline"}).positions) == 169
    for patch, stride in [(3, 4), (0, 1), (65, 1), (4, 0)]:  # a stride over the patch would leave pixels unseen
        with pytest.raises(BundleError, match="bad occlusion settings"):
            OcclusionExplainer(64, patch, stride)


def test_occlusion_finds_the_region_the_model_uses():
    run = _region_model(40, 56, 8, 24)
    blob = np.full((1, 1, 64, 64), 0.8, np.float32)
    ex = OcclusionExplainer(64, patch=8, stride=4)
    logits, [e] = ex.explain(run, blob, [0])
    assert e.method == "occlusion" and e.class_index == 0 and e.heatmap.shape == (64, 64)
    hot = e.heatmap > 0.5
    ys, xs = np.nonzero(hot)
    assert 40 - 8 < ys.min() and ys.max() < 56 + 8 and 8 - 8 < xs.min() and xs.max() < 24 + 8
    assert e.heatmap[48, 16] == 1.0 and e.heatmap[10, 50] == 0.0
    # the other class gains when the region is hidden: no evidence for it anywhere
    assert not ex.explain(run, blob, [1])[1][0].heatmap.any()
    np.testing.assert_array_equal(logits, run(blob, ("logits",))["logits"])


def test_occlusion_chunking_does_not_change_the_result():
    run = _region_model(3, 20, 30, 50)
    blob = np.random.default_rng(0).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    a = OcclusionExplainer(64, 9, 4, batch_size=1).explain(run, blob)[1]
    b = OcclusionExplainer(64, 9, 4, batch_size=64).explain(run, blob)[1]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.heatmap, y.heatmap)


def test_cam_is_the_head_applied_at_every_position():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    weight, bias = rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    logits = features.mean(axis=(2, 3)) @ weight.T + bias
    run = lambda blob, names: {"logits": logits, "features": features}
    ex = CamExplainer(np.concatenate([weight, bias[:, None]], 1))
    blob = np.zeros((2, 1, 12, 16), np.float32)
    got, exps = ex.explain(run, blob, [2, 0])
    for i, k in enumerate([2, 0]):
        expected = scale_map(np.einsum("c,chw->hw", weight[k], features[i]), (12, 16))
        np.testing.assert_allclose(exps[i].heatmap, expected, atol=1e-6)
        assert exps[i].class_index == k
    assert [e.class_index for e in ex.explain(run, blob)[1]] == list(np.argmax(logits, 1))
    bad = lambda blob, names: {"logits": logits + 0.5, "features": features}  # a head that is not the model's
    with pytest.raises(InferenceError, match="does not reproduce the model's logits"):
        ex.explain(bad, blob)
    for wrong in ([3, 0], [-1, 0], [0.5, 0], [True, 0]):
        with pytest.raises(UsageError, match="class_index must be an integer in 0..2"):
            ex.explain(run, blob, wrong)


def test_display_image_gives_back_the_model_input_exactly(gray8):
    cfg = PreprocessConfig(size=64, mean=0.485, std=0.229)
    s = preprocess_stages(gray8, cfg)
    np.testing.assert_array_equal(display_image(s["tensor"], cfg), s["resized"])


def test_overlay():
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    e = Explanation(heat, 0, "cam", np.zeros(2, np.float32), np.full((4, 4), 100, np.uint8))
    o = e.overlay()
    assert o.shape == (4, 4, 3) and o.dtype == np.uint8
    np.testing.assert_array_equal(e.overlay(alpha=0.0), cv2.cvtColor(e.image, cv2.COLOR_GRAY2BGR))
    red = cv2.applyColorMap(np.uint8([[255]]), cv2.COLORMAP_JET)[0, 0]
    np.testing.assert_array_equal(e.overlay(alpha=1.0)[0, 0], red)
    big = e.overlay(np.zeros((40, 30, 3), np.uint8))  # any size: the heatmap follows the image
    assert big.shape == (40, 30, 3) and big[0, 0, 2] > big[-1, -1, 2]
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), "x.png"):
        with pytest.raises(UsageError, match="overlay needs a uint8 gray"):
            e.overlay(bad)
    with pytest.raises(UsageError, match="alpha"):
        e.overlay(alpha=1.5)


def test_model_explain_on_a_cam_bundle(heat_bundle, tmp_path):
    bundle, _ = heat_bundle
    m = Model.load(bundle)
    assert m.explain_method == "cam"
    img = xray_like(300, 280, seed=4)
    write_image(tmp_path / "a.png", img)
    e = m.explain(str(tmp_path / "a.png"))
    assert e.method == "cam" and e.heatmap.shape == (96, 96) and e.heatmap.dtype == np.float32
    assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0
    np.testing.assert_array_equal(e.logits, m.infer(preprocess(img, m.preprocess_config)[None])[0])
    assert e.class_index == int(np.argmax(e.logits))
    np.testing.assert_array_equal(e.image, preprocess_stages(img, m.preprocess_config)["resized"])
    np.testing.assert_array_equal(m.explain(img).heatmap, e.heatmap)  # path or array: the same
    other = m.explain(img, class_index=1 - e.class_index)
    assert other.class_index == 1 - e.class_index and other.method == "cam"
    np.testing.assert_array_equal(other.logits, e.logits)
    with pytest.raises(UsageError, match="class_index"):
        m.explain(img, class_index=2)
    with pytest.raises(ImageError, match="file not found"):
        m.explain(str(tmp_path / "missing.png"))
    with pytest.raises(UsageError, match="path or a numpy array"):
        m.explain(42)


def test_predict_with_heatmaps_matches_explain(heat_bundle, tmp_path):
    bundle, _ = heat_bundle
    m = Model.load(bundle)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        write_image(paths[-1], xray_like(90 + i, 100, seed=10 + i))
    inputs = [*paths[:2], str(tmp_path / "missing.png"), *paths[2:]]
    batched = m.predict(inputs, batch_size=4, heatmaps=True)
    single = m.predict(inputs, batch_size=1, workers=0, heatmaps=True)
    assert batched[2].explanation is None and batched[2].error
    for b, s, path in zip(batched, single, inputs, strict=True):
        if path.endswith("missing.png"):
            continue
        e = m.explain(path)
        assert b.explanation.class_index == e.class_index == m.classes.index(b.label)
        np.testing.assert_allclose(b.explanation.heatmap, e.heatmap, atol=1e-5)
        np.testing.assert_allclose(s.explanation.heatmap, e.heatmap, atol=1e-5)
        np.testing.assert_array_equal(np.float32(s.logits), e.logits)  # the same forward pass gave both
        np.testing.assert_allclose(np.float32(b.logits), e.logits, atol=1e-5)  # batch 4: OpenCV 4.5.5 rounds apart
    assert all(p.explanation is None for p in m.predict(paths))  # off by default


def test_occlusion_bundle(occlusion_bundle):
    bundle, _ = occlusion_bundle
    m = Model.load(bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    assert m.explain_method == "occlusion" and manifest["explain"] == {"method": "occlusion", **default_occlusion(64)}
    img = xray_like(200, 180, seed=5)
    e = m.explain(img)
    assert e.method == "occlusion" and e.heatmap.shape == (64, 64) and e.heatmap.max() == 1.0
    [p] = m.predict([img], heatmaps=True)
    np.testing.assert_allclose(p.explanation.heatmap, e.heatmap, atol=1e-5)


@pytest.fixture
def heat_copy(heat_bundle, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(heat_bundle[0], target)
    return target


def _manifest(d, edit):
    m = json.loads((d / "model.json").read_text())
    edit(m)
    (d / "model.json").write_text(json.dumps(m))


def test_a_heatmap_that_cannot_be_drawn_still_leaves_the_classification(heat_bundle, tmp_path, monkeypatch):
    bundle, _ = heat_bundle
    m = Model.load(bundle)
    path = str(tmp_path / "a.png")
    write_image(path, xray_like(90, 100, seed=3))
    (plain,) = m.predict([path])
    monkeypatch.setattr(m.explainer, "logit_rtol", -1.0)  # every head check fails: no heatmap can be drawn
    for p in (m.predict([path, path], batch_size=2, heatmaps=True)[0], m.predict([path], workers=0, heatmaps=True)[0]):
        assert p.ok and p.label == plain.label and p.probabilities == plain.probabilities and p.explanation is None
        assert any(w.startswith("no heatmap: the bundle's CAM head does not reproduce") for w in p.warnings)


def test_bundle_without_heatmaps_still_classifies(heat_copy, tmp_path):
    _manifest(heat_copy, lambda m: m.pop("explain"))  # as bundles exported before heatmaps
    (heat_copy / "cam_head.npy").unlink()
    m = Model.load(heat_copy)
    assert m.explain_method is None and m.predict([xray_like(50, 50)])[0].ok
    with pytest.raises(BundleError, match="has no heatmaps.*export it again"):
        m.explain(xray_like(50, 50))
    with pytest.raises(BundleError, match="has no heatmaps"):
        m.predict([xray_like(50, 50)], heatmaps=True)
    e = m.explain(xray_like(50, 50), method="occlusion")  # asked for by name, occlusion works with any bundle
    assert e.method == "occlusion" and e.heatmap.shape == (96, 96) and e.heatmap.max() == 1.0
    np.testing.assert_array_equal(e.logits, m.infer(preprocess(xray_like(50, 50), m.preprocess_config)[None])[0])
    with pytest.raises(UsageError, match="method 'cam' is not available"):
        m.explain(xray_like(50, 50), method="cam")


def test_tampered_or_missing_cam_head_is_refused(heat_copy):
    head = heat_copy / "cam_head.npy"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0x01
    head.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="cam_head.npy: SHA-256 does not match"):
        Model.load(heat_copy)
    head.unlink()
    with pytest.raises(BundleError, match="CAM head missing"):
        Model.load(heat_copy)


def test_unknown_method_is_a_clear_error(heat_copy):
    _manifest(heat_copy, lambda m: m["explain"].update(method="gradcam++"))
    with pytest.raises(BundleError, match="unknown heatmap method 'gradcam\\+\\+'"):
        Model.load(heat_copy)


def test_golden_self_test_covers_the_heatmaps(heat_copy):
    def shift(m):
        m["golden"]["expected_cam"][0][1][0][0] += 0.5
    _manifest(heat_copy, shift)
    with pytest.raises(SelfTestError, match="self-test of the heatmaps failed"):
        Model.load(heat_copy)


@pytest.mark.parametrize("engine", list(ENGINES))  # this OpenCV's: classic (and new in OpenCV 5)
def test_named_outputs_of_a_heatmap_bundle_on_every_engine(heat_bundle, engine):
    from medge.edge.runtime.dnn import forward, forward_outputs, load_net

    m = Model.load(heat_bundle[0])
    net = load_net(m.onnx_bytes, engine)
    x = np.stack([preprocess(xray_like(100, 100, seed=s), m.preprocess_config) for s in range(2)])
    both = forward_outputs(net, x, m.chw, ("logits", "features"))
    assert both["logits"].shape == (2, 2) and both["features"].shape == (2, 512, 3, 3)
    for name in ("logits", "features"):  # one output alone (the new engine refuses a one-name list)
        np.testing.assert_allclose(forward_outputs(net, x, m.chw, (name,))[name], both[name], rtol=0, atol=1e-5)
    # the single-output path gives the logits, not the feature map the classic engine's plain forward() returns
    np.testing.assert_allclose(forward(net, x, m.chw, 2), both["logits"], rtol=0, atol=1e-5)
    with pytest.raises(InferenceError, match="forward of outputs"):
        forward_outputs(net, x, m.chw, ("nothing",))


def _two_findings_model(a, b):
    """A stand-in for a multi-label net: finding 0's logit is the mean of region ``a``, finding 1's of region ``b``
    (independent findings, each read through its own sigmoid)."""
    def run(blob, names):
        za = blob[:, 0, a[0]:a[1], a[2]:a[3]].mean(axis=(1, 2))
        zb = blob[:, 0, b[0]:b[1], b[2]:b[3]].mean(axis=(1, 2))
        return {"logits": np.stack([za, zb], axis=1).astype(np.float32)}
    return run


def test_occlusion_of_a_finding_is_the_drop_of_its_own_logit():
    """Multi-label: the map of finding k is the drop of logit k alone (its sigmoid is monotone in it), not of a softmax
    over the findings, so finding 1's region never shows in finding 0's map."""
    a, b = (4, 20, 4, 20), (40, 60, 36, 60)
    run = _two_findings_model(a, b)
    blob = np.full((1, 1, 64, 64), 0.8, np.float32)
    ex = OcclusionExplainer(64, patch=8, stride=4)
    _, [e0] = ex.explain(run, blob, [0])
    _, [e1] = ex.explain(run, blob, [1])
    assert e0.heatmap[12, 12] == 1.0 and e0.heatmap[50, 48] == 0.0
    assert e1.heatmap[50, 48] == 1.0 and e1.heatmap[12, 12] == 0.0
    z = run(blob, ("logits",))["logits"][0]  # by hand: the drop of logit 0 per patch, spread over its pixels
    total, count = np.zeros((64, 64)), np.zeros((64, 64))
    for y, x in ex.grid.positions:
        hidden = blob.copy()
        hidden[0, :, y : y + 8, x : x + 8] = 0.0
        total[y : y + 8, x : x + 8] += z[0] - run(hidden, ("logits",))["logits"][0, 0]
        count[y : y + 8, x : x + 8] += 1
    np.testing.assert_allclose(e0.heatmap, scale_map(total / count, (64, 64)), atol=1e-6)


def test_maps_of_several_findings_come_from_the_passes_of_one():
    """explain_classes gives each class exactly explain's map, from one set of occluded copies (not one per class),
    and refuses a class the model does not have."""
    run = _two_findings_model((4, 20, 4, 20), (40, 60, 36, 60))
    passes = []

    def counted(blob, names):
        passes.append(len(blob))
        return run(blob, names)

    blob = np.stack([np.full((1, 64, 64), v, np.float32) for v in (0.8, 0.3)])
    ex = OcclusionExplainer(64, patch=8, stride=4)
    logits, per_image = ex.explain_classes(counted, blob, (1, 0))
    both = sum(passes)
    for i, maps in enumerate(per_image):
        assert [e.class_index for e in maps] == [1, 0]
        for e in maps:
            np.testing.assert_array_equal(e.heatmap, ex.explain(run, blob[i : i + 1], [e.class_index])[1][0].heatmap)
    passes.clear()
    ex.explain(counted, blob, [0, 0])
    assert both == sum(passes) == 2 + 2 * len(ex.grid.positions)  # two classes cost what one costs
    with pytest.raises(UsageError, match="class_index"):
        ex.explain_classes(run, blob, (2,))


def test_heatmaps_per_finding_of_a_multilabel_bundle(heat_bundle, tmp_path):
    """CAM of finding k is W[k] over the feature map: one heatmap per finding asked for, each Model.explain's."""
    from tests.edge.multilabel import finding_entry, multilabel_copy

    m = Model.load(multilabel_copy(heat_bundle[0], tmp_path / "ml", [finding_entry("Effusion", 1.5, 0.4),
                                                                       finding_entry("Nodule", threshold=None)]))
    img = xray_like(90, 100, seed=4)
    [p] = m.predict([img], workers=0, heatmaps=["Nodule", "Effusion"])
    assert [e.class_index for e in p.explanations] == [1, 0] and p.explanation is p.explanations[0]
    for e in p.explanations:
        np.testing.assert_allclose(e.heatmap, m.explain(img, class_index=e.class_index).heatmap, atol=1e-5)
    assert not np.allclose(p.explanations[0].heatmap, p.explanations[1].heatmap)
    [q] = m.predict([img], workers=0, heatmaps=True)  # by default: the most probable finding
    assert q.explanation.class_index == int(np.argmax(list(q.probabilities.values()))) and q.explanations is None
    assert [e.class_index for e in m.predict([img], workers=0, heatmaps=["all"])[0].explanations] == [0, 1]
    with pytest.raises(UsageError, match="'Effusion', 'Nodule'"):
        m.predict([img], heatmaps=["Hernia"])
