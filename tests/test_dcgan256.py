"""dcgan256.py: the networks against the DCGAN-on-faces project's 256x256 tables, and the script through its command
line on a folder of mixed images at batch 2 (training, --resume, --generate, a checkpoint of dcgan64.py).

The code it shares with dcgan64.py (data, checkpoints, torchrun, errors) is the same text, tested in depth in
test_dcgan64.py; here each path runs once."""
import re

import pytest
import torch
from PIL import Image
from torch import nn

import dcgan256
from helpers import error_of, layer_shapes, load_checkpoint, run_script

G_TABLE = [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (32, 64, 64), (16, 128, 128), (8, 256, 256)]
# After each convolution and each max-pool of the table's blocks, then after the two linear layers.
D_TABLE = [(8, 254, 254), (8, 127, 127), (16, 127, 127), (16, 63, 63), (32, 61, 61), (32, 30, 30),
           (64, 28, 28), (64, 14, 14), (128, 12, 12), (128, 6, 6), (256, 4, 4), (256, 2, 2), (128,), (1,)]


@pytest.mark.parametrize("channels", [1, 3])
def test_networks_match_the_published_tables(channels):
    G, D = dcgan256.Generator(100, 8, channels), dcgan256.Discriminator(8, channels)
    assert layer_shapes(G, torch.randn(2, 100, 1, 1), nn.ConvTranspose2d) == G_TABLE
    assert layer_shapes(G, torch.randn(2, 100, 1, 1), nn.Conv2d) == [(channels, 256, 256)]
    assert layer_shapes(D, torch.randn(2, channels, 256, 256), (nn.Conv2d, nn.MaxPool2d, nn.Linear)) == D_TABLE
    assert isinstance(G[-1], nn.Tanh) and not any(isinstance(m, nn.LeakyReLU) for m in G.modules())
    assert {m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())
    assert D(torch.randn(2, channels, 256, 256)).shape == (2,)


def test_d_has_the_tables_batchnorm():
    """The table's D has BatchNorm in blocks 2-6, their convolutions without bias (BatchNorm's shift is one)."""
    D = dcgan256.Discriminator(8, 1)
    assert [m.num_features for m in D.modules() if isinstance(m, nn.BatchNorm2d)] == [16, 32, 64, 128, 256]
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])


def test_g_act_leaky_is_the_tables_generator():
    """--g-act leaky: the table's hidden rows exactly (LeakyReLU(0.2) after every BatchNorm), the Tanh output kept."""
    G = dcgan256.Generator(100, 8, 3, act="leaky")
    assert layer_shapes(G, torch.randn(2, 100, 1, 1), nn.ConvTranspose2d) == G_TABLE
    hidden = [m for m in G.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert len(hidden) == len(G_TABLE) and all(type(m) is nn.LeakyReLU and m.negative_slope == 0.2 for m in hidden)
    assert isinstance(G[-1], nn.Tanh)


def test_trains_resumes_and_generates(photo_folder, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("--data", photo_folder, "--out", out, "--batch-size", "2", "--device", "cpu", "--workers", "1",
              "--log-every", "100")
    result = run_script("dcgan256.py", *common, "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    assert "trained 2 steps" in result.stdout
    dcgan256.main([str(a) for a in common] + ["--max-steps", "3", "--resume", "--workers", "0"])
    assert "trained 1 steps" in capsys.readouterr().out
    assert (out / "log.csv").read_text().count("\n") == 1 + 3
    for name in ("real.png", "samples/epoch_0001.png"):
        assert (out / name).stat().st_size > 0, name
    with Image.open(out / "samples/epoch_0001.png") as grid:  # 8 x 8 samples of 256 x 256, 2-pixel padding
        assert grid.size == (2 + 8 * 258, 2 + 8 * 258)
    ckpt = load_checkpoint(out)
    assert (ckpt["script"], ckpt["step"], ckpt["batch"]) == ("dcgan256", 3, 3)

    dcgan256.main(["--out", str(out), "--generate", "2", "--device", "cpu"])
    assert re.fullmatch(r"wrote 2 images to \S+ and a grid of the first 2 to \S+ \(G: \d+ images/s\)\n",
                        capsys.readouterr().out)
    assert load_checkpoint(out)["G"]["21.weight"].shape == (3, 8, 3, 3)

    # A dcgan64.py checkpoint is refused by name, in one line.
    torch.save({**ckpt, "script": "dcgan64"}, out / "checkpoint.pt")
    assert error_of("dcgan256", "--out", out, "--generate", "2") == (
        f"dcgan256.py: error: {out / 'checkpoint.pt'} is not a checkpoint of dcgan256.py but of dcgan64.py")
