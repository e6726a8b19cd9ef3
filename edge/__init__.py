"""medge.edge: the edge runtime, numpy + OpenCV only (never torch or onnx).

Usage:
    from medge.edge import Model, Prediction
    model = Model.load("bundles/xray")
    predictions: list[Prediction] = model.predict(["a.png", "b.dcm"])

The library, by concern:

- ``inputs``: files to grayscale arrays (formats, image, dicom, scanning, profile);
- ``runtime``: the bundle and the engines that run it (bundle, engines, dnn, ort, verify, choice);
- ``execution``: how ``Model.predict`` runs its inputs (run, pipeline, budget);
- ``golive``: the go-live statistics (roc, proportions, calibration, thresholds, shift, distributions) and
  ``medge validate``'s and ``medge monitor``'s jobs on them (validation, drift, plots).

and flat modules: ``model`` (``Model``, the façade), ``prediction`` (``Prediction``, one input's result),
``preprocess`` (the one deterministic chain), ``preview`` (its stages drawn side by side), ``explain``
(heatmaps), ``decision`` (calibration and operating point), ``batch`` (``BatchPredictor`` for Ray Data
and Dask), ``node_extra`` (whether the DICOM node extra works here), ``system`` (what the box offers),
``outputs`` (output files), ``paths`` (any file name), ``progress``, ``config`` and ``errors``.

The commands built on it (medge check, predict, preview, watch, validate, monitor, batch, and the
packages serve and node) are in ``medge.edge.apps``.
"""
from medge.edge.errors import (
    BundleError,
    ConfigError,
    ImageError,
    InferenceError,
    MedgeError,
    MissingExtraError,
    ModelIntegrityError,
    SelfTestError,
)
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import read_image
from medge.edge.model import Model  # safe here: no module of the library imports a name from medge.edge itself
from medge.edge.prediction import Prediction
from medge.edge.preprocess import (
    PreprocessConfig,
    normalize,
    preprocess,
    preprocess_batch,
    preprocess_stages,
    preprocess_uint8,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "BundleError", "ConfigError", "ImageError", "InferenceError", "MedgeError",
    "MissingExtraError", "Model", "ModelIntegrityError", "Prediction", "PreprocessConfig", "SelfTestError", "normalize",
    "preprocess", "preprocess_batch", "preprocess_stages", "preprocess_uint8", "read_image",
]
