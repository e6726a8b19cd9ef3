"""medge's edge runtime: numpy + OpenCV only (never torch or onnx)."""
from edge.errors import (
    BundleError,
    ConfigError,
    ImageError,
    InferenceError,
    MedgeError,
    MissingExtraError,
    ModelIntegrityError,
    SelfTestError,
)
from edge.image import DEFAULT_MAX_PIXELS, read_image
from edge.preprocess import (
    PreprocessConfig,
    normalize,
    preprocess,
    preprocess_batch,
    preprocess_stages,
    preprocess_uint8,
)

__version__ = "0.1.0"
