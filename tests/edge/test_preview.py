"""medge.edge.preview: the picture of the preprocessing stages (medge preview, the serve page)."""
import numpy as np
import pytest

from medge.edge.preprocess import PreprocessConfig
from medge.edge.preview import PANEL_MAX_W, PANEL_PX, TITLE_MIN_W, render_preview
from tests.conftest import xray_like


def _panels(picture: np.ndarray) -> int:
    """Panels in a preview: the 8-px grey gaps between them are whole columns of 128."""
    gray = picture if picture.ndim == 2 else picture[..., 0]
    gap = np.all(gray == 128, axis=0)
    starts = np.flatnonzero(gap[1:] & ~gap[:-1]) + 1
    return 1 + sum(1 for s in starts if s + 8 <= gap.size and gap[s : s + 8].all() and not gap[s + 8 : s + 9].all())


@pytest.mark.parametrize("h, w", [(300, 200), (64, 2000), (2000, 64)])
def test_four_gray_panels_of_bounded_size_for_any_aspect(h, w):
    picture = render_preview(xray_like(h, w), PreprocessConfig(size=32))
    assert picture.dtype == np.uint8 and picture.ndim == 2
    assert picture.shape[0] == PANEL_PX + 28  # the title bar over each panel
    assert picture.shape[1] <= 4 * PANEL_MAX_W + 3 * 8 and picture.shape[1] >= 4 * TITLE_MIN_W + 3 * 8
    assert _panels(picture) == 4


def test_a_model_with_heatmaps_adds_a_colour_panel(heat_bundle):
    from medge.edge import Model

    model = Model.load(heat_bundle[0])
    picture = render_preview(xray_like(128, 128), model.preprocess_config, model=model)
    assert picture.ndim == 3 and picture.shape[2] == 3 and _panels(picture) == 5
    plain = render_preview(xray_like(128, 128), model.preprocess_config)
    assert picture.shape[1] > plain.shape[1]


def test_the_heatmap_is_of_the_class_predict_labels_at_the_operating_point(heat_bundle, tmp_path):
    """With an operating point, the panel names the label and calibrated probability of medge predict, not the
    argmax of uncalibrated probabilities."""
    from medge.edge import Model
    from medge.edge.inputs.image import load_image
    from medge.edge.preprocess import preprocess_stages
    from medge.edge.preview import predicted_heatmap
    from tests.edge.calibrated import calibrated_copy, labelled, synth_split

    val, test = synth_split(tmp_path / "data", n=60, size=96)
    model = Model.load(calibrated_copy(heat_bundle[0], tmp_path / "cal", val))
    assert model.operating_point is not None and model.operating_point.threshold is not None
    paths, _ = labelled(test, model.classes)
    for pred, path in zip(model.predict(paths, batch_size=1), paths, strict=True):
        image, info = load_image(path)
        tensor = preprocess_stages(image, model.preprocess_config, info.display_range)["tensor"]
        e, p = predicted_heatmap(tensor, model)
        assert model.classes[e.class_index] == pred.label
        assert p == pytest.approx(pred.probabilities[pred.label], abs=1e-6)


def test_a_multilabel_bundle_panel_explains_the_most_probable_finding(heat_bundle, tmp_path):
    """Multi-label: the panel's probability is the finding's calibrated sigmoid, not a softmax over the findings."""
    from medge.edge import Model
    from medge.edge.preprocess import preprocess_stages
    from medge.edge.preview import predicted_heatmap
    from tests.edge.multilabel import finding_entry, multilabel_copy

    model = Model.load(multilabel_copy(heat_bundle[0], tmp_path / "ml", [finding_entry("Effusion", 1.5, 0.4),
                                                                          finding_entry("Nodule", threshold=None)]))
    for seed in range(3):
        image = xray_like(96, 96, seed=seed)
        (pred,) = model.predict([image], workers=0)
        e, p = predicted_heatmap(preprocess_stages(image, model.preprocess_config)["tensor"], model)
        best = max(pred.probabilities, key=pred.probabilities.get)
        assert model.classes[e.class_index] == best and p == pytest.approx(pred.probabilities[best], abs=1e-6)
    assert _panels(render_preview(xray_like(96, 96), model.preprocess_config, model=model)) == 5
