"""Tests of the three MNIST scripts: vanilla_gan.py, lsgan.py, dcgan_mnist.py.

Layer shapes are checked against the networks' published tables (the README shows them); training, resume,
generation and every bad input run the scripts' real entry point (main, or the command line in a subprocess) on a
tiny MNIST in IDX format.
"""
import contextlib
import csv
import importlib
import os
import signal
import time
import urllib.request

import pytest
import torch
import torchvision

from helpers import (error_of, layer_shapes, load_checkpoint, logged_steps, run_script, same_weights, start_script,
                     time_limit, wait_for_steps)

SCRIPTS = ["vanilla_gan", "lsgan", "dcgan_mnist"]
B = 5  # batch size of the shape tests


# The Stanford CS231n GAN notebook's MLPs ("Discriminator", "Generator"); they serve vanilla_gan.py and lsgan.py.
CS231N_MLP_G = [("Linear", (B, 1024)), ("ReLU", (B, 1024)), ("Linear", (B, 1024)), ("ReLU", (B, 1024)),
             ("Linear", (B, 784)), ("Tanh", (B, 784))]
CS231N_MLP_D = [("Flatten", (B, 784)), ("Linear", (B, 256)), ("LeakyReLU", (B, 256)), ("Linear", (B, 256)),
             ("LeakyReLU", (B, 256)), ("Linear", (B, 1))]
# The "Simple GAN" of giakou4/gans: z = 64, G 64 -> 256 -> 784 with LeakyReLU, D 784 -> 128 -> 1 (a logit, not Tanh).
SIMPLE_GAN_FLAGS = ["--z-dim", "64", "--g-hidden", "256", "--d-hidden", "128", "--g-act", "leaky"]
SIMPLE_GAN_G = [("Linear", (B, 256)), ("LeakyReLU", (B, 256)), ("Linear", (B, 784)), ("Tanh", (B, 784))]
SIMPLE_GAN_D = [("Flatten", (B, 784)), ("Linear", (B, 128)), ("LeakyReLU", (B, 128)), ("Linear", (B, 1))]
# The CS231n notebook's "DCGAN Generator" (InfoGAN appendix C.1) and "DCGAN Discriminator".
CS231N_DCGAN_G = [("Linear", (B, 1024)), ("ReLU", (B, 1024)), ("BatchNorm1d", (B, 1024)),
               ("Linear", (B, 6272)), ("ReLU", (B, 6272)), ("BatchNorm1d", (B, 6272)),
               ("Unflatten", (B, 128, 7, 7)),
               ("ConvTranspose2d", (B, 64, 14, 14)), ("ReLU", (B, 64, 14, 14)), ("BatchNorm2d", (B, 64, 14, 14)),
               ("ConvTranspose2d", (B, 1, 28, 28)), ("Tanh", (B, 1, 28, 28))]
CS231N_DCGAN_D = [("Conv2d", (B, 32, 24, 24)), ("LeakyReLU", (B, 32, 24, 24)), ("MaxPool2d", (B, 32, 12, 12)),
               ("Conv2d", (B, 64, 8, 8)), ("LeakyReLU", (B, 64, 8, 8)), ("MaxPool2d", (B, 64, 4, 4)),
               ("Flatten", (B, 1024)), ("Linear", (B, 1024)), ("LeakyReLU", (B, 1024)), ("Linear", (B, 1))]


@pytest.mark.parametrize("script, flags, g_table, d_table", [
    ("vanilla_gan", [], CS231N_MLP_G, CS231N_MLP_D),
    ("vanilla_gan", SIMPLE_GAN_FLAGS, SIMPLE_GAN_G, SIMPLE_GAN_D),
    ("lsgan", [], CS231N_MLP_G, CS231N_MLP_D),
    ("lsgan", SIMPLE_GAN_FLAGS, SIMPLE_GAN_G, SIMPLE_GAN_D),
    ("dcgan_mnist", [], CS231N_DCGAN_G, CS231N_DCGAN_D),
])
def test_layer_shapes_match_the_published_tables(script, flags, g_table, d_table):
    module = importlib.import_module(script)
    args = module.parse_args(flags + ["--device", "cpu"])
    G, D, _, _ = module.build(args, torch.device("cpu"))
    z = torch.randn(B, args.z_dim)
    assert layer_shapes(G.net, z, with_types=True) == g_table
    assert G(z).shape == (B, 1, 28, 28)
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    assert layer_shapes(D.net, x, with_types=True) == d_table
    assert D(x).shape == (B,)
    slopes = {m.negative_slope for m in D.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}  # the notebook's LeakyReLU(alpha=0.01)


def train(script, data, out, *flags):
    """Train in-process through the script's main(), as its command line does, with small batches."""
    importlib.import_module(script).main(
        ["--data", str(data), "--out", str(out), "--batch-size", "16", "--device", "cpu", *map(str, flags)])
    return load_checkpoint(out)


@pytest.mark.parametrize("script", SCRIPTS)
def test_command_line_trains_and_writes_the_run_folder_then_generates(script, tiny_mnist, tmp_path, capsys):
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
    ckpt = load_checkpoint(out)
    assert (ckpt["script"], ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (script, 20, 1, 4)

    importlib.import_module(script).main(["--out", str(out), "--generate", "70", "--device", "cpu"])
    assert "wrote 70 images" in capsys.readouterr().out
    images = sorted((out / "generated").glob("0*.png"))
    assert len(images) == 70 and images[-1].name == "000069.png"
    assert torchvision.io.read_image(str(images[0])).shape[-2:] == (28, 28)
    assert (out / "generated_grid.png").exists() and len(list((out / "generated").iterdir())) == 70


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_continues_bit_for_bit(script, tiny_mnist, tmp_path):
    straight = train(script, tiny_mnist, tmp_path / "a", "--max-steps", 24)
    train(script, tiny_mnist, tmp_path / "b", "--max-steps", 20)      # stops inside epoch 2
    resumed = train(script, tiny_mnist, tmp_path / "b", "--max-steps", 24, "--resume")
    for part in ("G", "D", "fixed_z", "rng"):
        a, b = straight[part], resumed[part]
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        else:
            assert torch.equal(a, b), part
    assert straight["opt_G"]["state"][0]["exp_avg"].equal(resumed["opt_G"]["state"][0]["exp_avg"])
    assert (tmp_path / "b" / "log.csv").read_text().count("\n") == 25  # header + 24 steps, appended


def test_amp_trains_a_few_steps(tiny_mnist, tmp_path):
    ckpt = train("vanilla_gan", tiny_mnist, tmp_path / "amp", "--max-steps", 3, "--amp")
    assert ckpt["step"] == 3 and all(v.dtype == torch.float32 for v in ckpt["G"].values())


def test_ctrl_c_saves_a_checkpoint_at_a_step_boundary(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    proc = start_script("vanilla_gan.py", "--data", tiny_mnist, "--out", out, "--batch-size", 16, "--device", "cpu",
                        "--log-every", 0.05)
    wait_for_steps(proc, out, 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    ckpt = load_checkpoint(out)
    last_row = (out / "log.csv").read_text().splitlines()[-1]
    assert ckpt["step"] > 0 and last_row.startswith(f"{ckpt['step']},")


# ---- the position in the data, stops and kills -------------------------------------------------------------
# 256 digits: an epoch is 16 steps at batch 16 and 4 at batch 64 (64 x 4 = 256, nothing left over).

@pytest.mark.parametrize("script", SCRIPTS)
def test_epoch_batches_use_the_rest_of_the_epoch_once_whatever_the_split(script):
    epoch_batches = importlib.import_module(script).epoch_batches
    n, seed, epoch = 103, 7, 2
    order = epoch_batches(n, 1, seed, epoch, 0).flatten()      # the epoch's order: one sample a step
    assert sorted(order.tolist()) == list(range(n))
    assert torch.equal(order, epoch_batches(n, 1, seed, epoch, 0).flatten())  # from (seed, epoch) alone
    assert not torch.equal(order, epoch_batches(n, 1, seed, epoch + 1, 0).flatten())
    for batch_size, world in [(1, 1), (4, 1), (16, 1), (5, 2), (3, 3), (8, 4), (103, 1), (60, 2)]:
        per_step = batch_size * world
        for seen in sorted({0, 1, 16, 37, 80, 102, 103, max(0, n - per_step), max(0, n - per_step - 1)}):
            steps = (n - seen) // per_step                     # what is left after them is less than a step
            single = epoch_batches(n, per_step, seed, epoch, seen)  # one process taking every rank's share
            assert single.shape == (steps, per_step)
            assert torch.equal(single.flatten(), order[seen:seen + steps * per_step]), (batch_size, world, seen)
            ranks = [epoch_batches(n, batch_size, seed, epoch, seen, rank, world) for rank in range(world)]
            assert all(b.shape == (steps, batch_size) for b in ranks)
            for k in range(steps):                             # step k: the ranks share single's batch k
                assert sorted(torch.cat([b[k] for b in ranks]).tolist()) == sorted(single[k].tolist())
    # 10 steps at batch 16, then batch 64 from sample 160: the epoch's order, no sample twice, none skipped
    before, after = epoch_batches(256, 16, seed, epoch, 0)[:10], epoch_batches(256, 64, seed, epoch, 160)
    full = epoch_batches(256, 1, seed, epoch, 0).flatten()
    assert torch.equal(torch.cat([before.flatten(), after.flatten()]), full[:160 + 64])


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_with_another_batch_size_goes_on_from_the_same_sample(script, tiny_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    train(script, tiny_mnist, out, "--max-steps", 10)          # 160 samples into epoch 1
    capsys.readouterr()
    with time_limit(60):                                       # (the code before looped forever here)
        ckpt = train(script, tiny_mnist, out, "--resume", "--batch-size", 64, "--max-steps", 13)
    # Step 11 takes samples 160-223 and ends epoch 1 (32 are left, less than a step); 12 and 13 begin epoch 2.
    assert (ckpt["step"], ckpt["epoch"], ckpt["seen"]) == (13, 1, 128)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resuming with")]
    assert len(notes) == 1 and "64" in notes[0] and "16" in notes[0] and "160" in notes[0], notes
    with open(out / "log.csv", newline="") as f:
        epochs = [int(row[1]) for row in list(csv.reader(f))[1:]]
    assert logged_steps(out) == list(range(1, 14)) and epochs == [1] * 11 + [2] * 2
    # Back to batch 16: --epochs 2 ends at the end of epoch 2, 8 steps later (samples 128-255).
    with time_limit(60):
        ckpt = train(script, tiny_mnist, out, "--resume", "--epochs", 2)
    assert (ckpt["step"], ckpt["epoch"], ckpt["seen"]) == (21, 2, 0)
    assert logged_steps(out) == list(range(1, 22))
    assert sum(line.startswith("resuming with") for line in capsys.readouterr().out.splitlines()) == 1


# ---- when training goes wrong: warnings, and epoch checkpoints to roll back to ---------------------------------
# The code is the same in all five scripts (test_shared_code.py); vanilla_gan.py stands for them.

@pytest.mark.parametrize("lr, warned", [(0.01, True), (0.0002, False)])
def test_warnings_when_d_wins_and_the_samples_collapse_and_none_on_a_healthy_run(lr, warned, tiny_mnist, tmp_path,
                                                                                capsys, monkeypatch):
    """At lr 0.01 D wins at once and G's samples all become the same image; at the default 0.0002 the run is
    healthy. D's window is cut from 300 steps to 40 so that 128 steps (8 epochs) show it: the healthy run faces
    the same shorter, more sensitive window and must stay quiet."""
    monkeypatch.setattr(importlib.import_module("vanilla_gan"), "D_WINS_STEPS", 40)
    train("vanilla_gan", tiny_mnist, tmp_path / "run", "--max-steps", 128, "--lr", lr, "--log-every", 0.001)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    if warned:
        assert [w.split(":")[1] for w in warnings] == [" the samples have collapsed", " D is winning outright"]
        assert all(w.endswith('see "When training goes wrong" in the README of this script\'s repository')
                   for w in warnings)
    else:
        assert warnings == []
    with open(tmp_path / "run" / "diversity.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "epoch", "diversity"] and [int(r[0]) for r in rows[1:]] == list(range(16, 129, 16))
    assert (float(rows[-1][2]) < 1 / 255) == warned


def test_the_last_epochs_checkpoints_are_kept_and_resume_rolls_back_to_one(tiny_mnist, tmp_path):
    """5 epochs of 16 steps keep epochs 3-5; resuming from epoch 3 to step 64 gives the 64 steps straight bit for
    bit, cuts log.csv and diversity.csv back to step 48 before going on, and drops the abandoned epoch 5."""
    run, straight = tmp_path / "run", train("vanilla_gan", tiny_mnist, tmp_path / "straight", "--max-steps", 64)
    train("vanilla_gan", tiny_mnist, run, "--max-steps", 80)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch_000{e}.pt" for e in (3, 4, 5)]
    epoch_3 = run / "checkpoints" / "epoch_0003.pt"
    resumed = train("vanilla_gan", tiny_mnist, run, "--max-steps", 64, "--resume", epoch_3)
    assert resumed["step"] == 64 and same_weights(straight, resumed)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0003.pt", "epoch_0004.pt"]
    assert logged_steps(run) == list(range(1, 65))
    assert (run / "diversity.csv").read_text().splitlines()[1:] == (
        tmp_path / "straight" / "diversity.csv").read_text().splitlines()[1:]


def test_log_after_a_hard_kill_holds_each_step_once(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    proc = start_script("vanilla_gan.py", "--data", tiny_mnist, "--out", out, "--batch-size", 16, "--device", "cpu",
                        "--log-every", 0.01)
    wait_for_steps(proc, out, 20)                              # past the checkpoint at the end of epoch 1
    proc.send_signal(signal.SIGSTOP)                           # frozen: the log and the checkpoint stay as they are
    for _ in range(100):                                       # until the log has steps the checkpoint has not
        if logged_steps(out)[-1] > load_checkpoint(out)["step"]:
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
    proc.kill()
    proc.communicate()
    saved, logged = load_checkpoint(out)["step"], logged_steps(out)
    assert saved % 16 == 0 and logged[-1] > saved
    epochs = saved // 16 + 2                                   # through the steps logged after the checkpoint
    train("vanilla_gan", tiny_mnist, out, "--resume", "--epochs", epochs, "--log-every", 0.01)
    assert logged_steps(out) == list(range(1, 16 * epochs + 1))


@pytest.mark.parametrize("target", ["process", "process group"])
def test_sigterm_saves_a_checkpoint_at_a_step_boundary_and_exits_0(target, tiny_mnist, tmp_path):
    out = tmp_path / "run"
    proc = start_script("vanilla_gan.py", "--data", tiny_mnist, "--out", out, "--batch-size", 16, "--device", "cpu",
                        "--log-every", 0.01, start_new_session=True)
    wait_for_steps(proc, out, 4)
    if target == "process":                                    # kill PID
        proc.send_signal(signal.SIGTERM)
    else:                                                      # a scheduler; twice, as torchrun's children get it
        os.killpg(proc.pid, signal.SIGTERM)                    # (directly and through torchrun): the second one,
        time.sleep(0.01)                                       # within a second, must not kill the run
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    ckpt = load_checkpoint(out)
    assert ckpt["step"] > 0 and logged_steps(out) == list(range(1, ckpt["step"] + 1))
    assert f"trained {ckpt['step']} steps" in stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate_writes_exactly_n_images_and_the_grid_beside_them(script, tiny_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    train(script, tiny_mnist, out, "--max-steps", 1)
    importlib.import_module(script).main(["--out", str(out), "--generate", "70", "--batch-size", "16",
                                          "--device", "cpu"])
    assert "wrote 70 images" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "generated").iterdir()) == [f"{i:06d}.png" for i in range(70)]
    assert torchvision.io.read_image(str(out / "generated_grid.png")).shape[-2:] == (242, 242)  # 8x8 of 28x28
    first, later = (torchvision.io.read_image(str(out / "generated" / f"{i:06d}.png")) for i in (0, 64))
    assert not torch.equal(first, later)                       # images of the second chunk are new ones


# ---- bad input: one clear line, exit status != 0, no traceback ----------------------------------------------

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
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["G"].values())


def test_damaged_checkpoint_from_the_command_line(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    train("dcgan_mnist", tiny_mnist, run, "--max-steps", 1)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])  # cut short
    done = run_script("dcgan_mnist.py", "--out", run, "--generate", 4)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"dcgan_mnist.py: error: cannot read checkpoint {run / 'checkpoint.pt'}: "
                                                "it is damaged or not a checkpoint (RuntimeError)"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_mnist_without_network_is_one_short_line(script, tmp_path, monkeypatch):
    """Every download goes to a proxy that does not exist; --data is given as a user types it, relative."""
    offline = {"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"}
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(urllib.request.ProxyHandler(offline)))
    monkeypatch.chdir(tmp_path)
    message = error_of(script, "--data", "nothing", "--out", "run", "--device", "cpu")
    assert os.path.join("nothing", "MNIST", "raw") in message, message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert len(message) < 250, message


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
