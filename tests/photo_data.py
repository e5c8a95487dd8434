"""What the tests of the photo scripts (dcgan64.py, dcgan256.py) share: a small folder of images in every
layout and format they must read, a command-line runner, and a recorder of the shapes a network produces.

PIL is used here only, to write the formats torchvision cannot encode (BMP, WebP, CMYK, RGBA, 16-bit).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO))                                   # the scripts are imported for their networks

READABLE = 14                                                   # readable images in photo_folder


def write_photo_folder(root):
    """Nested folders of mixed sizes and modes; one truncated JPEG, one PNG that is not an image, one text file."""
    root = Path(root)
    (root / "faces").mkdir(parents=True)
    (root / "more" / "deeper").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(218, 178), (100, 150), (64, 64), (80, 70), (90, 120), (218, 178)]):
        image = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
        torchvision.io.write_jpeg(image, str(root / "faces" / f"{i:06d}.jpg"))
    for i in range(3):
        torchvision.io.write_png((torch.rand(1, 70, 90, generator=g) * 255).to(torch.uint8),
                                 str(root / "more" / f"gray{i}.png"))
    Image.new("RGBA", (70, 80), (200, 10, 30, 128)).save(root / "more" / "deeper" / "rgba.png")
    Image.new("I;16", (66, 77), 3000).save(root / "more" / "deeper" / "gray16.png")
    Image.new("CMYK", (70, 70), (10, 20, 30, 40)).save(root / "more" / "deeper" / "cmyk.jpg")
    Image.new("RGB", (70, 70), (1, 2, 3)).save(root / "more" / "photo.bmp")
    Image.new("RGB", (70, 70), (1, 200, 3)).save(root / "more" / "photo.webp")
    jpeg = (root / "faces" / "000000.jpg").read_bytes()
    (root / "faces" / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "more" / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    (root / "notes.txt").write_text("not an image, and not named like one")
    return root


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos") / "photos")


def run_torchrun(script, *args, processes=2):
    """The script under torchrun on this machine, one CPU process per rank (gloo)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), str(REPO / script), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def layer_shapes(net, x, kinds):
    """(C, H, W) after every layer of the given kinds, in order, for input x."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in net.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        net.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


def load_checkpoint(run_folder):
    return torch.load(Path(run_folder) / "checkpoint.pt", weights_only=True)


def same_weights(a, b):
    return all(torch.equal(a[k][n], b[k][n]) for k in ("G", "D") for n in a[k])
