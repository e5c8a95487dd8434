"""dcgan64.py: the networks against the PyTorch DCGAN tutorial's and the DCGAN paper's tables, and the script
through its command line on a folder of mixed images (training, --cache, --generate, --resume bit for bit, bad
input; torchrun in test_photo_reliability.py)."""
import re
import shutil
import signal

import pytest
import torch
from torch import nn

import dcgan64
from helpers import READABLE, error_of, layer_shapes, load_checkpoint, run_script, same_weights

SMALL = ("--ngf", "8", "--ndf", "8", "--batch-size", "4", "--device", "cpu", "--log-every", "100")


# The tutorial's tables (--ngf 64 --ndf 64) and the paper's figure 1 (--ngf 128 --ndf 128), after every
# (transposed) convolution.
TABLES = {
    64: ([(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), ("C", 64, 64)],
         [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1, 1, 1)]),
    128: ([(1024, 4, 4), (512, 8, 8), (256, 16, 16), (128, 32, 32), ("C", 64, 64)],
          [(128, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (1, 1, 1)]),
}


@pytest.mark.parametrize("width", [64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_networks_match_the_published_tables(width, channels):
    g_table, d_table = ([tuple(channels if v == "C" else v for v in row) for row in t] for t in TABLES[width])
    G, D = dcgan64.Generator(100, width, channels), dcgan64.Discriminator(width, channels)
    assert layer_shapes(G, torch.randn(2, 100, 1, 1), nn.ConvTranspose2d) == g_table
    assert layer_shapes(D, torch.randn(2, channels, 64, 64), nn.Conv2d) == d_table
    # The paper's guidelines: Tanh out of G, ReLU inside it; LeakyReLU(0.2) in D; a logit out of D.
    assert isinstance(G[-1], nn.Tanh) and not any(isinstance(m, nn.LeakyReLU) for m in G.modules())
    assert {m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())
    assert D(torch.randn(2, channels, 64, 64)).shape == (2,)
    # No BatchNorm right after G's output layer nor after D's input layer.
    assert not isinstance(G[-2], nn.BatchNorm2d) and not isinstance(D[1], nn.BatchNorm2d)


def test_g_act_leaky_is_the_tutorial_tables_generator():
    """--g-act leaky: the faces table's G exactly, LeakyReLU(0.2) after every layer, the output's too, no Tanh."""
    args = dcgan64.parse_args(["--g-act", "leaky", "--device", "cpu"])
    G = dcgan64.Generator(args.z_dim, args.ngf, args.channels, args.g_act)
    assert layer_shapes(G, torch.randn(2, 100, 1, 1), nn.ConvTranspose2d) == TABLES[64][0][:-1] + [(3, 64, 64)]
    acts = [m for m in G.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Tanh))]
    assert len(acts) == 5 and {type(m) for m in acts} == {nn.LeakyReLU} and {m.negative_slope for m in acts} == {0.2}
    assert isinstance(G[-1], nn.LeakyReLU)


@pytest.fixture(scope="module")
def trained(photo_folder, tmp_path_factory):
    """Two epochs on the mixed folder with DataLoader workers, then --generate."""
    out = tmp_path_factory.mktemp("dcgan64") / "run"
    result = run_script("dcgan64.py", "--data", photo_folder, "--out", out, "--epochs", "2", "--workers", "1", *SMALL)
    assert result.returncode == 0, result.stderr
    return out, result


def test_trains_on_a_folder_of_mixed_images(trained, photo_folder):
    out, result = trained
    # The truncated JPEG and the fake PNG are skipped and named; the text file is not even looked at.
    assert "truncated.jpg" in result.stdout and "not_an_image.png" in result.stdout
    assert "2 so far" in result.stdout and "notes.txt" not in result.stdout
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,time,loss_d,loss_g,d_real,d_fake"
    steps_per_epoch = (READABLE + 2) // 4                       # unreadable files are stood in for, not dropped
    assert len(rows) == 1 + 2 * steps_per_epoch
    assert re.search(r"trained 8 steps in [\d.]+ s \(\d+ images/s\)", result.stdout)
    for name in ("real.png", "samples/epoch_0001.png", "samples/epoch_0002.png", "checkpoints/epoch_0002.pt"):
        assert (out / name).stat().st_size > 0, name
    ckpt = load_checkpoint(out)
    assert (ckpt["script"], ckpt["step"], ckpt["epoch"], ckpt["batch"]) == ("dcgan64", 8, 2, 0)


def test_samples_use_batch_statistics_and_leave_g_unchanged(trained):
    """Grids and --generate use BatchNorm's batch statistics (see sample()): the images must vary and G's state,
    running statistics included, must not change. Eval mode after 8 steps gives nearly one flat image, as
    sample()'s comment says: that is checked too, so the reason for the choice stays true."""
    ckpt = load_checkpoint(trained[0])
    G = dcgan64.Generator(100, 8, 3)
    G.load_state_dict(ckpt["G"])
    z = torch.randn(64, 100, 1, 1, generator=torch.Generator().manual_seed(1))
    images = dcgan64.sample(G, z)
    spread = images.std(0).mean()                               # how much the 64 images differ
    assert images.isfinite().all() and spread > 0.02            # (G's last layer is still small after 8 steps)
    assert images.abs().mean() < 0.95                           # not saturated at -1/+1
    assert all(torch.equal(v, ckpt["G"][k]) for k, v in G.state_dict().items())
    with torch.no_grad():
        assert G.eval()(z).std(0).mean() < spread / 10


def test_generate_writes_images(trained, capsys):
    out = trained[0]
    dcgan64.main(["--out", str(out), "--generate", "5", *SMALL])
    assert re.fullmatch(rf"wrote 5 images to {re.escape(str(out / 'generated'))} and a grid of the first 5 to "
                        rf"{re.escape(str(out / 'generated_grid.png'))} \(G: \d+ images/s\)\n", capsys.readouterr().out)
    assert sorted(p.name for p in (out / "generated").iterdir()) == [f"00000{i}.png" for i in range(5)]


def test_cache_grayscale(photo_folder, tmp_path, capsys):
    dcgan64.main(["--data", str(photo_folder), "--out", str(tmp_path / "run"), "--cache", "--channels", "1",
                  "--workers", "0", "--max-steps", "2", *SMALL])
    output = capsys.readouterr().out
    assert f"cached {READABLE + 2} images" in output and "truncated.jpg" in output  # 2 stood in for
    assert load_checkpoint(tmp_path / "run")["G"]["12.weight"].shape == (8, 1, 4, 4)


def test_resume_mid_epoch_gives_the_same_weights(trained, photo_folder, tmp_path, capsys):
    """3 steps (mid-epoch: 4 steps an epoch) + --resume to 8 == the 8 steps straight of `trained` on the command
    line, bit for bit (and decoding in the training process, --workers 0, gives what DataLoader workers gave).
    In-process through main(): the command line itself is what `trained` runs."""
    common = ["--data", str(photo_folder), "--out", str(tmp_path / "run"), "--epochs", "2", "--workers", "0", *SMALL]
    dcgan64.main([*common, "--max-steps", "3"])
    assert load_checkpoint(tmp_path / "run")["batch"] == 3
    capsys.readouterr()
    dcgan64.main([*common, "--resume"])
    assert "trained 5 steps" in capsys.readouterr().out
    a, b = load_checkpoint(trained[0]), load_checkpoint(tmp_path / "run")
    assert a["step"] == b["step"] == 8 and same_weights(a, b)
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 1 + 8


def fails_with(argv, message):
    """main(argv) stops with exit status 1 and one line naming the problem."""
    assert message in error_of("dcgan64", *argv)


def test_bad_data_folders(photo_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    (tmp_path / "broken").mkdir()
    shutil.copy(photo_folder / "faces" / "truncated.jpg", tmp_path / "broken")
    shutil.copy(photo_folder / "more" / "not_an_image.png", tmp_path / "broken")
    out = ("--out", tmp_path / "run")
    fails_with(["--data", tmp_path / "missing", *out], "does not exist")
    fails_with(["--data", tmp_path / "empty", *out], "no images in")
    fails_with(["--data", tmp_path / "broken", *out], "no readable image in")
    fails_with(["--data", tmp_path / "empty" / "readme.txt", *out], "is not a folder")
    fails_with(["--data", photo_folder, "--batch-size", "64", *out, "--device", "cpu"], "fewer than one batch")


def test_bad_flags_and_devices(tmp_path):
    for flag, value in [("--batch-size", "0"), ("--lr", "-1"), ("--lr-g", "nan"), ("--epochs", "0"), ("--max-steps", "0"),
                        ("--generate", "0"), ("--ngf", "0"), ("--workers", "-1")]:
        fails_with([flag, value], "must be")
    if not torch.cuda.is_available():
        fails_with(["--device", "cuda", "--out", tmp_path], "--device cuda: not available here")
    fails_with(["--compile", "nosuchbackend"], "--compile nosuchbackend: not a torch.compile backend (")
    fails_with(["--device", "tpu", "--out", tmp_path], "unknown device 'tpu' (use auto, cpu, cuda, cuda:N or mps)")
    (tmp_path / "file").write_text("")
    fails_with(["--out", tmp_path / "file"], "is a file")


def test_bad_checkpoints(trained, photo_folder, tmp_path):
    data = ("--data", photo_folder, "--device", "cpu")
    fails_with(["--generate", "3", "--out", tmp_path / "none"], "no checkpoint at")
    fails_with(["--resume", "--out", tmp_path / "none", *data], "no checkpoint at")
    fails_with(["--out", trained[0], *data], "already holds a run")
    fails_with(["--resume", "--out", trained[0], *data, "--ngf", "8", "--ndf", "8", "--batch-size", "2"],
               "was trained with --batch-size 4, not 2; leave the flag out to go on with the run's")
    fails_with(["--generate", "3", "--out", trained[0], "--ngf", "16", "--ndf", "8"], "--ngf 8")
    fails_with(["--generate", "3", "--out", trained[0], "--ngf", "8", "--ndf", "8", "--channels", "1"],
               "--channels 3")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes((trained[0] / "checkpoint.pt").read_bytes()[:5000])
    fails_with(["--generate", "3", "--out", tmp_path / "damaged"], "damaged")
    ckpt = load_checkpoint(trained[0])
    (tmp_path / "other").mkdir()
    torch.save({**ckpt, "script": "dcgan256"}, tmp_path / "other" / "checkpoint.pt")
    fails_with(["--generate", "3", "--out", tmp_path / "other", "--ngf", "8", "--ndf", "8"],
               "is not a checkpoint of dcgan64.py but of dcgan256.py")


def test_nan_losses_stop_the_run_and_keep_the_checkpoint(trained, photo_folder, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    ckpt = load_checkpoint(out)
    ckpt["D"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in ckpt["D"].items()}
    torch.save(ckpt, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    message = error_of("dcgan64", "--data", photo_folder, "--out", out, "--resume", "--epochs", "3", "--workers", "0",
                       *SMALL)
    assert re.fullmatch(r"dcgan64.py: error: losses became NaN or infinite by step \d+; the last good checkpoint"
                        r" is kept in \S+", message), message
    assert (out / "checkpoint.pt").read_bytes() == before


def test_g_learns_at_twice_ds_rate_and_a_resume_may_lower_either(trained, photo_folder, tmp_path):
    def rates(ckpt):
        return [{g["lr"] for g in ckpt[o]["param_groups"]} for o in ("opt_G", "opt_D")]
    assert rates(load_checkpoint(trained[0])) == [{4e-4}, {2e-4}]
    shutil.copytree(trained[0], tmp_path / "run")
    dcgan64.main(["--data", str(photo_folder), "--out", str(tmp_path / "run"), "--resume", "--epochs", "3",
                  "--lr", "1e-4", "--lr-g", "3e-4", "--workers", "0", *SMALL])
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 12 and rates(ckpt) == [{3e-4}, {1e-4}]


def test_the_d_wins_warning_fires_once_d_g_z_has_stayed_low_from_step_100(capsys):
    """The rule the failure-rate study calibrated (benchmarks/learning.py; then failure_rate.py at
    375a8fb): D(G(z)) averaged below 0.02 over 20 steps, from step 100."""
    low, mixed = [0.01] * 20, [0.01] * 19 + [0.5]              # averages 0.01 and 0.0345
    assert dcgan64.warn_if_d_wins(low, 99) == low and capsys.readouterr().out == ""  # too early to tell
    assert dcgan64.warn_if_d_wins([0.5] * 30 + mixed, 150) == mixed and capsys.readouterr().out == ""
    assert dcgan64.warn_if_d_wins([0.5] * 30 + low, 100) is None  # said: the log keeps no history after it
    assert capsys.readouterr().out.startswith("warning: D has won: D(G(z)) averaged below 0.02 over 20 steps to step "
                                              "100; such runs rarely recover: restart with another --seed")



def test_a_repeat_signal_within_a_second_is_the_same_stop_and_a_later_one_stops_at_once(monkeypatch):
    """The photo scripts' promise (README, Stopping); the processes of a torchrun job get a signal twice."""
    now, raised = [100.0], []
    with dcgan64.Stopper() as stopper, monkeypatch.context() as m:
        m.setattr(dcgan64.time, "monotonic", lambda: now[0])
        m.setattr(dcgan64.signal, "signal", lambda signum, handler: None)  # the default action is not installed
        m.setattr(dcgan64.signal, "raise_signal", raised.append)
        stopper.handle(signal.SIGTERM, None)
        now[0] += 0.5
        stopper.handle(signal.SIGTERM, None)                   # passed on by torchrun: the same request
        assert stopper.asked == 100.0 and raised == []
        now[0] += 1.0
        stopper.handle(signal.SIGINT, None)                    # a second Ctrl-C: the default action, at once
        assert raised == [signal.SIGINT]
