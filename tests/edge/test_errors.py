"""medge.edge.errors: every error raised on purpose is a MedgeError carrying the exit status of ``medge``."""
import inspect
from pathlib import Path

import pytest

from medge.edge import errors
from medge.edge.errors import ConfigError, ImageError, MedgeError, MissingExtraError

# 1: an input or a step of the job failed; 2: a usage or configuration error (the module docstring's table).
EXIT_STATUS = {"MedgeError": 1, "UsageError": 2, "ConfigError": 2, "ImageError": 1, "MissingExtraError": 2,
               "BundleError": 2, "ModelIntegrityError": 2, "SelfTestError": 2, "InferenceError": 1,
               "CheckpointError": 2, "DataError": 1, "ExportError": 1, "ParityError": 1}


def test_every_error_is_a_medge_error_with_its_exit_status():
    classes = {name: c for name, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__}
    assert set(classes) == set(EXIT_STATUS)  # a new error gets its row here
    assert {name: c.exit_status for name, c in classes.items()} == EXIT_STATUS
    assert all(issubclass(c, MedgeError) for c in classes.values())
    assert issubclass(errors.ModelIntegrityError, errors.BundleError) and issubclass(errors.SelfTestError, errors.BundleError)


def test_a_config_error_is_also_a_value_error():
    with pytest.raises(ValueError, match="bad"):
        raise ConfigError("bad")


def test_an_image_error_names_the_file_and_the_reason():
    e = ImageError(Path("in") / "a.png", "truncated PNG")
    assert (e.path, e.reason, str(e)) == ("in/a.png", "truncated PNG", "in/a.png: truncated PNG")
    assert str(ImageError(None, "empty array")) == "<array>: empty array"


def test_a_missing_extra_names_the_extra_and_how_to_install_it():
    e = MissingExtraError("dicom", "pydicom", "reading DICOM")
    assert (e.extra, e.module, e.exit_status) == ("dicom", "pydicom", 2)
    assert str(e) == ("reading DICOM needs the 'dicom' extra (pydicom is not installed): "
                      "pip install -c constraints.txt 'medge[dicom]'")
    assert str(MissingExtraError("ort", "onnxruntime")).startswith("this feature needs the 'ort' extra")
