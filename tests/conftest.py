"""Shared set-up for the unit tests: one thread, and small fixtures.

Quick mode is set by the root conftest.py, for the notebooks too.
"""
from __future__ import annotations

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from gi_tutorial import data, fl, models  # noqa: E402


@pytest.fixture(scope="session")
def empty_root(tmp_path_factory):
    """A data root with nothing in it, so no torchvision-format copy can be found there."""
    return tmp_path_factory.mktemp("empty_data_root")


@pytest.fixture(scope="session")
def cifar_batch(empty_root):
    """The first 4 CIFAR-10 test images and labels (from the foolbox wheel, offline)."""
    images, labels = data.load_dataset("cifar10", "test", 4, root=empty_root, allow_download=False)
    return images, labels


@pytest.fixture(scope="session")
def cifar_image(cifar_batch):
    """The first CIFAR-10 test image, ``(1, 3, 32, 32)``, and its label ``(1,)`` (a cat, 3)."""
    images, labels = cifar_batch
    return images[:1].clone(), labels[:1].clone()


@pytest.fixture
def lenet():
    """DLG's LeNet for 3-channel images, seed 0."""
    return models.build_model("lenet", in_channels=3, seed=0)


@pytest.fixture
def random_batch():
    """A function ``(b, c=3, seed=0) -> (images, labels)`` of random images in [0, 1]."""
    def make(b: int, c: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(b, c, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)
    return make


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of a model's full state (parameters and buffers, e.g. BatchNorm running stats)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


@pytest.fixture
def same_state():
    """``(state_copy, assert_same_state)`` helpers to check that a call leaves a model unchanged."""
    return state_copy, assert_same_state


@pytest.fixture
def lenet_update(lenet, cifar_image):
    """LeNet and the update of the first CIFAR-10 image on it (batch size shared, labels not)."""
    x, y = cifar_image
    return lenet, fl.client_update(lenet, x, y)
