"""Tiny generated datasets shared by the training tests, and one torch thread for the tests that opt in."""
import pytest
import torch
from train_helpers import TINY_BANDS

from csakd.train.data import generated_source, open_source, with_split

SOURCE = generated_source(4, 1, 0, size=32, bands=TINY_BANDS, seed=0)


@pytest.fixture(scope="session")
def tiny_train():
    return open_source(SOURCE)[0]


@pytest.fixture(scope="session")
def tiny_val():
    return open_source(with_split(SOURCE, "val"))[0]


@pytest.fixture
def one_thread():
    """Runs a test with one torch thread. The tiny networks gain nothing from a second thread, and on a machine
    whose cores are busy with other work two threads per process oversubscribe them: the training tests then
    ran about eight times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
