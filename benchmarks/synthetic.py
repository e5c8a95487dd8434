"""Small synthetic data sets in the layouts the scripts read, for tests and for running the benchmarks anywhere.

- `write_mnist(root, n_per_class)`: torchvision's MNIST layout (`root/MNIST/raw/*-ubyte`, uncompressed IDX files)
  holding simple, easily told apart patterns: class k is a bright block at the k-th of ten places, jittered and noisy.
- `write_image_folder(folder, n)`: n smooth random colour JPEGs of CelebA's aligned size (178x218).

Nothing here is real data; it exists so that code paths run, not to measure quality.
"""

import struct
from pathlib import Path

import torch
import torchvision


def digit_patterns(n_per_class, seed=0):
    """(images uint8 (10*n, 28, 28), labels int64 (10*n,)): class k is a 4x10 block at place k, shifted by up to
    one pixel, with random brightness and a little noise; classes are interleaved 0, 1, ..., 9, 0, 1, ..."""
    g = torch.Generator().manual_seed(seed)
    n = 10 * n_per_class
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 28, 28)
    shift = torch.randint(-1, 2, (n, 2), generator=g)
    bright = torch.rand(n, generator=g) * 0.3 + 0.7
    for i in range(n):
        k = int(labels[i])
        y0 = 3 + 12 * (k // 5) + int(shift[i, 0])
        x0 = 2 + 5 * (k % 5) + int(shift[i, 1])
        images[i, y0:y0 + 10, x0:x0 + 4] = bright[i]
    images = (images + 0.1 * torch.rand(n, 28, 28, generator=g)).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


def write_idx(path, tensor):
    """Write a uint8 tensor as an IDX file (magic 0x00000800 | ndim, then big-endian int32 sizes, then bytes)."""
    t = tensor.to(torch.uint8).contiguous()
    header = struct.pack(">I", 0x0800 | t.dim()) + struct.pack(f">{t.dim()}I", *t.shape)
    Path(path).write_bytes(header + t.numpy().tobytes())


def write_mnist(root, n_per_class=256, seed=0, digits=None):
    """Write digits, (images uint8 (n, 28, 28), labels (n,)), by default digit_patterns(n_per_class, seed), as both
    MNIST splits under root (same images in train and test); return root."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images, labels = digit_patterns(n_per_class, seed) if digits is None else digits
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return Path(root)


def write_image_folder(folder, n=32, size=(218, 178), seed=0):
    """Write n smooth random RGB JPEGs (height, width = size) named 000001.jpg ... into folder; return folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        coarse = torch.rand(1, 3, 6, 5, generator=g)
        img = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0]
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        torchvision.io.write_jpeg(img, str(folder / f"{i + 1:06d}.jpg"), quality=90)
    return folder
