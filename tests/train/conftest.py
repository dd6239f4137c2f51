"""Tiny generated datasets shared by the training tests."""
import pytest
from train_helpers import TINY_BANDS

from csakd.train.data import generated_source, open_source, with_split

SOURCE = generated_source(4, 1, 0, size=32, bands=TINY_BANDS, seed=0)


@pytest.fixture(scope="session")
def tiny_train():
    return open_source(SOURCE)[0]


@pytest.fixture(scope="session")
def tiny_val():
    return open_source(with_split(SOURCE, "val"))[0]
