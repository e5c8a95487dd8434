"""Fixtures shared by the tests: tiny datasets written into temporary folders, and a way to run the scripts.

The tests read no data from outside and use no network: they make their own tiny data sets, in the formats
the scripts read.
"""
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["photo_data"]  # the photo-folder fixture of the dcgan64/dcgan256 tests
# The tests train on batches of a few images: one thread is as fast as two there, and it keeps OpenMP's threads
# from stalling each other when the machine is busy with something else. Subprocesses get the same setting.
torch.set_num_threads(1)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_idx_mnist(root, n=256, seed=0):
    """Write a tiny MNIST in torchvision's layout (root/MNIST/raw/*-ubyte, the IDX format of the MNIST site).

    Class c is a bright bar at row 4 + 2c with some noise, so the ten classes are easy to tell apart.
    Returns the images as a (n, 28, 28) uint8 tensor and the labels.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 4 + 2 * c:6 + 2 * c, 4:24] = 255
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):  # torchvision checks that both splits are present
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + bytes(images.flatten().tolist()))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(labels.tolist()))
    return images, labels


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """Root folder of a 256-digit MNIST (pass it as --data)."""
    root = tmp_path_factory.mktemp("mnist")
    write_idx_mnist(root)
    return root


def run_script(script, *args, env=None, timeout=300):
    """Run one of the top-level scripts through its command line, as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env or ONE_THREAD,
                          capture_output=True, text=True, timeout=timeout)
