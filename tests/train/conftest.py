import pytest

from train.synth import SynthConfig, generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """40 small synthetic images: train/val/test of two classes, 8- and 16-bit."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate(root, SynthConfig(n=40, size=64, bits="mix", seed=1))
    return root
