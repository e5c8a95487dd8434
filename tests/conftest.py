"""Fixtures shared by the tests: tiny datasets written into temporary folders (the helpers are in helpers.py).

The tests read no data from outside and use no network: they make their own tiny data sets, in the formats
the scripts read.
"""
import pytest
import torch

from helpers import bar_digits, write_photo_folder
from common import write_mnist

torch.set_num_threads(1)  # one thread, as helpers.ONE_THREAD gives the scripts the tests start (see there)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """Root folder of a 256-digit MNIST in torchvision's layout (root/MNIST/raw/*-ubyte; pass it as --data)."""
    return write_mnist(tmp_path_factory.mktemp("mnist"), digits=bar_digits(256))


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """A folder of mixed images for dcgan64.py and dcgan256.py (see helpers.write_photo_folder)."""
    return write_photo_folder(tmp_path_factory.mktemp("photos") / "photos")
