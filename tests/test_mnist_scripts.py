"""Tests of the three MNIST scripts: vanilla_gan.py, lsgan.py, dcgan_mnist.py.

Layer shapes are checked against the networks' published tables (the README shows them); training, resume,
generation and every bad input run the scripts' real entry point (main, or the command line in a subprocess) on a
tiny MNIST in IDX format.
"""
import contextlib
import csv
import importlib
import io
import os
import signal
import time
import urllib.request

import pytest
import torch
import torchvision

from helpers import (error_of, layer_shapes, load_checkpoint, logged_steps, run_script, same_weights, start_script,
                     wait_for_steps)

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
    assert layer_shapes(G, z, with_types=True)[:len(g_table)] == g_table  # then a reshape to (B, 1, 28, 28)
    assert G(z).shape == (B, 1, 28, 28)
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    assert layer_shapes(D, x, with_types=True) == d_table + [("Flatten", (B,))]  # the logits as (B,)
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
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,time,loss_d,loss_g,d_real,d_fake" and len(rows) == 21
    assert rows[-1].startswith("20,2,")
    ckpt = load_checkpoint(out)
    assert (ckpt["script"], ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (script, 20, 1, 4)

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
    for part in ("G", "D", "fixed_z"):
        a, b = straight[part], resumed[part]
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        else:
            assert torch.equal(a, b), part
    assert straight["opt_G"]["state"][0]["exp_avg"].equal(resumed["opt_G"]["state"][0]["exp_avg"])
    rows = [[line.split(",")[:2] + line.split(",")[3:] for line in (tmp_path / run / "log.csv").read_text().splitlines()]
            for run in ("a", "b")]                              # every column but the time
    assert len(rows[1]) == 25 and rows[0] == rows[1]            # header + 24 steps, appended; the same losses


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


# ---- resuming, stops and kills -----------------------------------------------------------------------------
# 256 digits: an epoch is 16 steps at batch 16.

@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_with_another_batch_size_is_refused_in_one_line(script, tiny_mnist, tmp_path):
    train(script, tiny_mnist, tmp_path / "run", "--max-steps", 2)
    message = error_of(script, "--data", tiny_mnist, "--out", tmp_path / "run", "--resume", "--batch-size", 64)
    assert message == (f"{script}.py: error: {tmp_path / 'run' / 'checkpoint.pt'} was trained with --batch-size 16, "
                       "not 64; leave the flag out to go on with the run's")


# ---- when training goes wrong: warnings, and epoch checkpoints to roll back to ---------------------------------
# The code is the same in the three scripts (test_shared_code.py); vanilla_gan.py stands for them.

@pytest.mark.parametrize("lr, warned", [(0.01, True), (0.0002, False)])
def test_warning_when_d_wins_and_none_on_a_healthy_run(lr, warned, tiny_mnist, tmp_path, capsys, monkeypatch):
    """At lr 0.01 D wins at once; at 0.0002 the run is healthy. D's window is cut from 300 steps to 40 so that 128
    steps (8 epochs) show it: the healthy run faces the same shorter, more sensitive window and must stay quiet."""
    monkeypatch.setattr(importlib.import_module("vanilla_gan"), "D_WINS_STEPS", 40)
    train("vanilla_gan", tiny_mnist, tmp_path / "run", "--max-steps", 128, "--lr", lr, "--log-every", 0.001)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    if warned:
        assert len(warnings) == 1 and warnings[0].startswith("warning: D is winning outright: D(G(z)) averaged ")
        assert warnings[0].endswith("G learns little; see the README")
    else:
        assert warnings == []


def test_the_last_epochs_checkpoints_are_kept_and_resume_rolls_back_to_one(tiny_mnist, tmp_path):
    """5 epochs of 16 steps keep epochs 3-5; resuming from epoch 3 to step 64 gives the 64 steps straight bit for
    bit, cuts log.csv back to step 48 before going on, and drops the abandoned epoch 5."""
    run, straight = tmp_path / "run", train("vanilla_gan", tiny_mnist, tmp_path / "straight", "--max-steps", 64)
    train("vanilla_gan", tiny_mnist, run, "--max-steps", 80)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch_000{e}.pt" for e in (3, 4, 5)]
    epoch_3 = run / "checkpoints" / "epoch_0003.pt"
    resumed = train("vanilla_gan", tiny_mnist, run, "--max-steps", 64, "--resume", epoch_3)
    assert resumed["step"] == 64 and same_weights(straight, resumed)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0003.pt", "epoch_0004.pt"]
    assert logged_steps(run) == list(range(1, 65))
    without_time = [[row[:2] + row[3:] for row in csv.reader(open(folder / "log.csv"))][:65] for folder in
                    (run, tmp_path / "straight")]                # the rows of steps 1-48 kept, 49-64 trained again
    assert without_time[0] == without_time[1]


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
    kept = (out / "log.csv").read_bytes()[:load_checkpoint(out)["log_bytes"]]  # what the resume cuts log.csv to
    assert kept.decode().splitlines()[-1].startswith(f"{saved},")
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
    else:                                                      # a scheduler; twice, as under a launcher that passes
        os.killpg(proc.pid, signal.SIGTERM)                    # it on: every signal only asks for the stop, the
        time.sleep(0.01)                                       # second must not kill the run
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    ckpt = load_checkpoint(out)
    assert ckpt["step"] > 0 and logged_steps(out) == list(range(1, ckpt["step"] + 1))
    assert f"trained {ckpt['step']} steps" in stdout
    grid = max((out / "samples").iterdir())                    # written after the checkpoint, not before
    assert os.stat(out / "checkpoint.pt").st_mtime_ns <= os.stat(grid).st_mtime_ns


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
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--max-steps", "0"], "--max-steps must be positive"),
    (["--device", "tpu"], "unknown device"),
    (["--generate", "3"], "no checkpoint at"),
    (["--resume"], "no checkpoint at"),
])
def test_bad_flags_end_in_one_clear_line(script, flags, expected, tiny_mnist, tmp_path):
    assert expected in error_of(script, "--data", tiny_mnist, "--out", tmp_path / "run", *flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_without_cuda(tiny_mnist, tmp_path):
    assert "cuda: not available on this machine" in error_of("vanilla_gan", "--data", tiny_mnist, "--device", "cuda")


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
    assert "is not a checkpoint of lsgan.py but of vanilla_gan.py" in error_of("lsgan", "--out", out, "--generate", 2)
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
    assert f"no readable MNIST in {raw}" in message


# ---- devices and precision: decided from the resolved device; tested on CPU with torch's answers patched --------

def test_z_is_drawn_on_the_cpu_whatever_the_device_in_training_and_generation(tiny_mnist, tmp_path):
    """z comes from a CPU generator, seeded by --seed (and the step, in training), and is then moved: the same z on
    every device, and a checkpoint needs no noise state. (Drawn on the device, a seed gave other z on a GPU.)"""
    vanilla_gan = importlib.import_module("vanilla_gan")
    args = vanilla_gan.parse_args(["--z-dim", "5"])
    rng, expected = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert vanilla_gan.noise(4, args, torch.device("meta"), rng).device.type == "meta"  # a device without numbers
    torch.randn(4, 5, generator=expected)
    assert torch.equal(rng.get_state(), expected.get_state())  # the numbers were drawn on the CPU all the same
    out = tmp_path / "run"
    ckpt = train("vanilla_gan", tiny_mnist, out, "--max-steps", 2, "--seed", 7)  # batch 16
    assert torch.equal(ckpt["fixed_z"], torch.randn(64, 96, generator=torch.Generator().manual_seed(7)))
    assert "rng" not in ckpt                                    # each step's z from (--seed, step) alone
    vanilla_gan.main(["--out", str(out), "--generate", "3", "--seed", "5", "--device", "cpu"])
    G = vanilla_gan.Generator()
    G.load_state_dict(ckpt["G"])
    with torch.no_grad():                                      # chunks of max(64, --batch-size 128) z
        first = (G(torch.randn(128, 96, generator=torch.Generator().manual_seed(5)))[:3] + 1) / 2
    as_png = first.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)  # as save_image rounds
    written = torch.stack([torchvision.io.read_image(str(out / "generated" / f"{i:06d}.png")) for i in range(3)])
    assert torch.equal(written[:, :1], as_png)


def precision_of(script, device, amp, monkeypatch, capability=None):
    """(autocast dtype, line said) of --amp for a device, with CUDA's and MPS's answers patched. (train() makes the
    gradient scaler from the dtype, enabled for float16 only: test_float16_with_a_gradient_scaler... runs it.)"""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    module = importlib.import_module(script)
    with contextlib.redirect_stdout(io.StringIO()) as said:
        dtype = module.setup(module.parse_args(["--device", device, "--amp", *amp]))[1]
    return dtype, said.getvalue()


@pytest.mark.parametrize("script", SCRIPTS)
def test_amp_chooses_bfloat16_or_float16_with_a_scaler_from_the_device(script, monkeypatch):
    dtype, said = precision_of(script, "cuda", [], monkeypatch, capability=(7, 5))  # a T4
    assert dtype == torch.float16
    assert said == "--amp: float16 autocast with a gradient scaler (cuda, compute capability 7.5 has no native " \
                   "bfloat16)\n"
    dtype, said = precision_of(script, "cuda", [], monkeypatch, capability=(8, 0))  # an A100
    assert dtype == torch.bfloat16 and said == "--amp: bfloat16 autocast\n"
    assert precision_of(script, "cuda", ["bf16"], monkeypatch, capability=(7, 0))[0] == torch.bfloat16  # forced
    module = importlib.import_module(script)
    for fp32, bf16, expected, said in ((1.0, 0.5, torch.bfloat16, "2.0x faster than float32 here; training in "
                                        "bfloat16 autocast"),
                                       (1.0, 1.4, None, "1.4x slower than float32 here; training in float32"),
                                       (1.0, 0.97, None, "1.0x faster than float32 here; training in float32")):
        monkeypatch.setattr(module, "step_seconds", lambda args, device, dtype: bf16 if dtype else fp32)
        assert precision_of(script, "cpu", [], monkeypatch) == (expected, f"--amp: bfloat16 is {said}\n")
    monkeypatch.setattr(module, "step_seconds", None)          # forced: nothing timed
    assert precision_of(script, "cpu", ["bf16"], monkeypatch)[0] == torch.bfloat16
    assert precision_of(script, "cpu", ["fp16"], monkeypatch)[0] == torch.float16
    with pytest.raises(SystemExit, match=f"^{script}.py: error: --amp needs a cpu or cuda device, not mps$"):
        precision_of(script, "mps", [], monkeypatch)


def test_float16_with_a_gradient_scaler_trains_on_cpu_and_its_state_is_resumed(tiny_mnist, tmp_path):
    small = ["--g-hidden", 32, "--d-hidden", 32, "--amp", "fp16"]  # CPUs emulate float16: tiny networks
    ckpt = train("vanilla_gan", tiny_mnist, tmp_path / "run", "--max-steps", 2, *small)
    assert ckpt["scaler"]["scale"] == 65536.0 and ckpt["scaler"]["_growth_tracker"] == 2  # two steps without inf
    assert all(v.dtype == torch.float32 for v in ckpt["G"].values())
    ckpt = train("vanilla_gan", tiny_mnist, tmp_path / "run", "--max-steps", 3, "--resume", *small)
    assert ckpt["step"] == 3 and ckpt["scaler"]["_growth_tracker"] == 3  # the scaler went on from its state


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_adam_is_fused_on_every_device(script, device, monkeypatch):
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)  # the networks stay on the CPU
    module = importlib.import_module(script)
    _, _, opt_G, opt_D = module.build(module.parse_args([]), torch.device(device))
    assert opt_G.defaults["fused"] is True and opt_D.defaults["fused"] is True


def test_dcgan_mnist_is_channels_last_on_cpu_and_cuda_but_not_on_mps(monkeypatch):
    layouts = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: layouts.append(kwargs["memory_format"])
                        or self)                                # the networks stay on the CPU
    dcgan_mnist = importlib.import_module("dcgan_mnist")
    for device in ("cpu", "cuda", "mps"):
        dcgan_mnist.build(dcgan_mnist.parse_args([]), torch.device(device))
    assert layouts == [torch.channels_last] * 4 + [torch.contiguous_format] * 2  # G and D on each device


def test_device_auto_takes_cuda_and_cuda_n_is_made_current_first(monkeypatch):
    vanilla_gan = importlib.import_module("vanilla_gan")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    made_current = []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    device_of = lambda name: vanilla_gan.setup(vanilla_gan.parse_args(["--device", name]))  # noqa: E731
    assert device_of("auto") == (torch.device("cuda"), None)   # None: float32, no --amp
    assert device_of("cuda:1") == (torch.device("cuda:1"), None)
    assert made_current == [torch.device("cuda"), torch.device("cuda:1")]  # each made current before it is used
    assert "cuda:2: not available" in pytest.raises(SystemExit, device_of, "cuda:2").value.code
