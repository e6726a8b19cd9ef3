import pytest

from tests.helpers import make_checkpoint


@pytest.fixture(scope="session")
def resnet_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "resnet18.pt")
