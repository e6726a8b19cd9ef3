"""medge.edge: the edge runtime, numpy + OpenCV only (never torch or onnx).

The library (formats, image, inputs, paths, dicom, preprocess, profile, bundle,
engines, runtime, ort_engine (onnxruntime, with the ``ort`` extra), engine_choice, budget,
pipeline, execution, system, model, and explain, decision, evaluate, drift, validation) is here;
the commands built on it (medge check, predict, watch, preview, validate, monitor, and the packages
serve and node) are in ``medge.edge.apps``.
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
    "MissingExtraError", "ModelIntegrityError", "PreprocessConfig", "SelfTestError", "normalize", "preprocess",
    "preprocess_batch", "preprocess_stages", "preprocess_uint8", "read_image",
]
