"""Tests of the three MNIST scripts: vanilla_gan.py, lsgan.py, dcgan_mnist.py.

Layer shapes are checked against the design documents' tables; training, resume, generation and every bad input
run the scripts' real entry point (main, or the command line in a subprocess) on a tiny MNIST in IDX format.
"""
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from conftest import REPO, run_script

sys.path.insert(0, str(REPO))
SCRIPTS = ["vanilla_gan", "lsgan", "dcgan_mnist"]
B = 5  # batch size of the shape tests


def layer_shapes(sequential, x):
    """(layer type, output shape) after every layer of an nn.Sequential, by running x through it."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, tuple(o.shape))))
             for m in sequential]
    with torch.no_grad():
        sequential(x)
    for h in hooks:
        h.remove()
    return seen


# Design document 003 ("Discriminator", "Generator"); the same networks serve vanilla_gan.py and lsgan.py.
MLP_003_G = [("Linear", (B, 1024)), ("ReLU", (B, 1024)), ("Linear", (B, 1024)), ("ReLU", (B, 1024)),
             ("Linear", (B, 784)), ("Tanh", (B, 784))]
MLP_003_D = [("Flatten", (B, 784)), ("Linear", (B, 256)), ("LeakyReLU", (B, 256)), ("Linear", (B, 256)),
             ("LeakyReLU", (B, 256)), ("Linear", (B, 1))]
# Design document 002: z = 64, G 64 -> 256 -> 784 with LeakyReLU, D 784 -> 128 -> 1 (a logit instead of Tanh).
MLP_002_FLAGS = ["--z-dim", "64", "--g-hidden", "256", "--d-hidden", "128", "--g-act", "leaky"]
MLP_002_G = [("Linear", (B, 256)), ("LeakyReLU", (B, 256)), ("Linear", (B, 784)), ("Tanh", (B, 784))]
MLP_002_D = [("Flatten", (B, 784)), ("Linear", (B, 128)), ("LeakyReLU", (B, 128)), ("Linear", (B, 1))]
# Design document 003 ("DCGAN Generator": InfoGAN appendix C.1, "DCGAN Discriminator").
DCGAN_003_G = [("Linear", (B, 1024)), ("ReLU", (B, 1024)), ("BatchNorm1d", (B, 1024)),
               ("Linear", (B, 6272)), ("ReLU", (B, 6272)), ("BatchNorm1d", (B, 6272)),
               ("Unflatten", (B, 128, 7, 7)),
               ("ConvTranspose2d", (B, 64, 14, 14)), ("ReLU", (B, 64, 14, 14)), ("BatchNorm2d", (B, 64, 14, 14)),
               ("ConvTranspose2d", (B, 1, 28, 28)), ("Tanh", (B, 1, 28, 28))]
DCGAN_003_D = [("Conv2d", (B, 32, 24, 24)), ("LeakyReLU", (B, 32, 24, 24)), ("MaxPool2d", (B, 32, 12, 12)),
               ("Conv2d", (B, 64, 8, 8)), ("LeakyReLU", (B, 64, 8, 8)), ("MaxPool2d", (B, 64, 4, 4)),
               ("Flatten", (B, 1024)), ("Linear", (B, 1024)), ("LeakyReLU", (B, 1024)), ("Linear", (B, 1))]


@pytest.mark.parametrize("script, flags, g_table, d_table", [
    ("vanilla_gan", [], MLP_003_G, MLP_003_D),
    ("vanilla_gan", MLP_002_FLAGS, MLP_002_G, MLP_002_D),
    ("lsgan", [], MLP_003_G, MLP_003_D),
    ("lsgan", MLP_002_FLAGS, MLP_002_G, MLP_002_D),
    ("dcgan_mnist", [], DCGAN_003_G, DCGAN_003_D),
])
def test_layer_shapes_match_the_design_documents(script, flags, g_table, d_table):
    module = importlib.import_module(script)
    args = module.parse_args(flags + ["--device", "cpu"])
    G, D, _, _ = module.build(args, torch.device("cpu"))
    z = torch.randn(B, args.z_dim)
    assert layer_shapes(G.net, z) == g_table
    assert G(z).shape == (B, 1, 28, 28)
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    assert layer_shapes(D.net, x) == d_table
    assert D(x).shape == (B,)
    slopes = {m.negative_slope for m in D.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}  # 003: LeakyReLU(alpha=0.01)


def train(script, data, out, *flags):
    """Train in-process through the script's main(), as its command line does, with small batches."""
    importlib.import_module(script).main(
        ["--data", str(data), "--out", str(out), "--batch-size", "16", "--device", "cpu", *map(str, flags)])
    return torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_command_line_trains_and_writes_the_run_folder_then_generates(script, tiny_mnist, tmp_path):
    out = tmp_path / "run"
    # 256 digits in batches of 16: 16 steps an epoch, so 20 steps end epoch 1 and stop inside epoch 2.
    done = run_script(f"{script}.py", "--data", tiny_mnist, "--out", out, "--batch-size", 16, "--max-steps", 20,
                      "--device", "cpu", "--log-every", 0.01)
    assert done.returncode == 0, done.stderr
    assert "trained 20 steps" in done.stdout and "D(G(z))" in done.stdout
    assert torchvision.io.read_image(str(out / "real.png")).shape[-2:] == (242, 242)  # 8x8 grid of 28x28
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    assert (out / "progress.gif").read_bytes()[:6] == b"GIF89a"
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,time,loss_d,loss_g,d_real,d_fake" and len(rows) == 21
    assert rows[-1].startswith("20,2,")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["script"], ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (script, 20, 1, 4)

    done = run_script(f"{script}.py", "--out", out, "--generate", 70, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "wrote 70 images" in done.stdout
    images = sorted((out / "generated").glob("0*.png"))
    assert len(images) == 70 and images[-1].name == "000069.png"
    assert torchvision.io.read_image(str(images[0])).shape[-2:] == (28, 28)
    assert (out / "generated_grid.png").exists() and len(list((out / "generated").iterdir())) == 70


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_continues_bit_for_bit(script, tiny_mnist, tmp_path):
    straight = train(script, tiny_mnist, tmp_path / "a", "--max-steps", 40)
    train(script, tiny_mnist, tmp_path / "b", "--max-steps", 20)      # stops inside epoch 2
    resumed = train(script, tiny_mnist, tmp_path / "b", "--max-steps", 40, "--resume")
    for part in ("G", "D", "fixed_z", "rng"):
        a, b = straight[part], resumed[part]
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        else:
            assert torch.equal(a, b), part
    assert straight["opt_G"]["state"][0]["exp_avg"].equal(resumed["opt_G"]["state"][0]["exp_avg"])
    assert (tmp_path / "b" / "log.csv").read_text() .count("\n") == 41  # header + 40 steps, appended


def test_amp_trains_a_few_steps(tiny_mnist, tmp_path):
    ckpt = train("vanilla_gan", tiny_mnist, tmp_path / "amp", "--max-steps", 3, "--amp")
    assert ckpt["step"] == 3 and all(v.dtype == torch.float32 for v in ckpt["G"].values())


def test_ctrl_c_saves_a_checkpoint_at_a_step_boundary(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "vanilla_gan.py"), "--data", str(tiny_mnist), "--out",
                             str(out), "--batch-size", "16", "--device", "cpu", "--log-every", "0.05"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not (out / "log.csv").exists() or
                                      (out / "log.csv").read_text().count("\n") < 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    last_row = (out / "log.csv").read_text().splitlines()[-1]
    assert ckpt["step"] > 0 and last_row.startswith(f"{ckpt['step']},")


# ---- bad input: one clear line, exit status != 0, no traceback ----------------------------------------------

def error_of(script, *argv):
    """The message a bad command line ends with (main raises SystemExit with it; the interpreter prints it)."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main([*map(str, argv)])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(f"{script}.py: error: ") and "\n" not in message
    return message


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flags, expected", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--epochs", "-1"], "--epochs must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--max-steps", "0"], "--max-steps must be positive"),
    (["--device", "tpu"], "unknown device"),
    (["--generate", "3"], "no checkpoint at"),
    (["--resume"], "no checkpoint at"),
])
def test_bad_flags_end_in_one_clear_line(script, flags, expected, tiny_mnist, tmp_path):
    assert expected in error_of(script, "--data", tiny_mnist, "--out", tmp_path / "run", *flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_without_cuda(tiny_mnist, tmp_path):
    assert "CUDA is not available" in error_of("vanilla_gan", "--data", tiny_mnist, "--device", "cuda")


def test_run_folder_problems(tiny_mnist, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    assert "is a file" in error_of("lsgan", "--data", tiny_mnist, "--out", tmp_path / "file")
    train("lsgan", tiny_mnist, tmp_path / "run", "--max-steps", 2)
    assert "already holds a run" in error_of("lsgan", "--data", tiny_mnist, "--out", tmp_path / "run")
    assert "fewer than one batch" in error_of("lsgan", "--data", tiny_mnist, "--out", tmp_path / "new",
                                              "--batch-size", 1000)


def test_checkpoint_of_another_script_or_other_widths_is_refused(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    train("vanilla_gan", tiny_mnist, out, "--max-steps", 2)
    assert "not written by lsgan.py but by vanilla_gan.py" in error_of("lsgan", "--out", out, "--generate", 2)
    assert "trained with --g-hidden 1024 1024" in error_of("vanilla_gan", "--out", out, "--generate", 2,
                                                           "--g-hidden", 256)


def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    train("vanilla_gan", tiny_mnist, out, "--max-steps", 2)
    message = error_of("vanilla_gan", "--data", tiny_mnist, "--out", out, "--batch-size", 16, "--device", "cpu",
                       "--resume", "--lr", 1e30, "--max-steps", 30)
    assert "NaN" in message
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["G"].values())


def test_damaged_checkpoint_and_missing_mnist_from_the_command_line(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    train("dcgan_mnist", tiny_mnist, run, "--max-steps", 1)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])  # cut short
    done = run_script("dcgan_mnist.py", "--out", run, "--generate", 4)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"dcgan_mnist.py: error: cannot read checkpoint {run / 'checkpoint.pt'}: "
                                                "it is damaged or not a checkpoint (RuntimeError)"]

    # No MNIST and no way to download it (a proxy that does not exist): the message says where to put it.
    offline = dict(os.environ, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    done = run_script("vanilla_gan.py", "--data", tmp_path / "nothing", "--out", tmp_path / "x", env=offline)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert f"MNIST is not in {tmp_path / 'nothing' / 'MNIST' / 'raw'}" in done.stderr
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)


def test_dcgan_samples_use_batch_statistics_and_leave_running_statistics_alone():
    dcgan_mnist = importlib.import_module("dcgan_mnist")
    G = dcgan_mnist.Generator()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    images = dcgan_mnist.sample(G, torch.randn(64, 96))
    assert images.shape == (64, 1, 28, 28) and images.std() > 0.01  # not the flat image eval mode gives at init
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_damaged_mnist_files_are_named(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 40)  # header cut short
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    message = error_of("vanilla_gan", "--data", tmp_path / "mnist", "--out", tmp_path / "run")
    assert f"the MNIST files in {raw} cannot be read" in message
