"""Tiny generated datasets shared by the training tests."""
import pytest
from train_helpers import TINY_BANDS

from csakd.train.data import GeneratedScenes


@pytest.fixture(scope="session")
def tiny_train():
    return GeneratedScenes(count=4, size=32, bands=TINY_BANDS, seed=0)


@pytest.fixture(scope="session")
def tiny_val():
    return GeneratedScenes(count=1, size=32, bands=TINY_BANDS, seed=100)
