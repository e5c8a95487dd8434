"""Fast tests of the measuring tools in benchmarks/ on tiny inputs (the benchmarks themselves are not run here).

results.py and speed.py run against tests/fake_gan_script.py copied under the five scripts' names: it follows the
scripts' command-line contract in milliseconds, so these tests check the tools, not the GANs.
"""
import csv
import math
import shutil
import types

import pytest
import torch
import torchvision

from helpers import REPO, bar_digits  # first: it puts benchmarks/ on sys.path
import common
import baseline_dcgan64
import bf16_gradients
import ceilings
import decode
import learning_dcgan64
import mnist_quality
import notebook_choices
import peer_dcgan64
import results
import speed
import synthetic

SCRIPTS = ["vanilla_gan", "lsgan", "dcgan_mnist", "dcgan64", "dcgan256"]


def random_spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_identical_statistics_is_zero():
    s = random_spd(16, 0)
    mu = torch.randn(16, dtype=torch.float64)
    assert mnist_quality.frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form():
    d = 16
    s1 = random_spd(d, 1)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64)
    # S2 = 4 S1: Tr(S1) + Tr(4 S1) - 2 Tr(2 S1) = Tr(S1); plus |mu1 - mu2|^2 = 16 * 0.25
    assert mnist_quality.frechet_distance(mu1, s1, mu2, 4 * s1) == pytest.approx(4 + s1.trace().item(), rel=1e-9)
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2
    a, b = torch.rand(d, dtype=torch.float64) + 0.1, torch.rand(d, dtype=torch.float64) + 0.1
    expected = 4 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert mnist_quality.frechet_distance(mu1, a.diag(), mu2, b.diag()) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_from_shifted_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 4, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    d = mnist_quality.frechet_distance(*mnist_quality.gaussian_stats(x), *mnist_quality.gaussian_stats(y))
    assert d == pytest.approx(1.0, abs=0.05)


def test_coverage_of_one_class_is_zero_and_of_all_classes_even_is_one():
    one = torch.nn.functional.one_hot(torch.full((50,), 3), 10).double()
    even = torch.nn.functional.one_hot(torch.arange(50) % 10, 10).double()
    assert mnist_quality.coverage(one)[0] == 0 and mnist_quality.coverage(one)[2] == 1
    entropy, hist, covered = mnist_quality.coverage(even)
    assert entropy == pytest.approx(1.0) and covered == 10 and hist == [0.1] * 10


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        torchvision.io.write_png(im.reshape(1, *im.shape[-2:]).contiguous(), str(folder / f"{i:06d}.png"))
    torchvision.io.write_png(images[0].reshape(1, *images.shape[-2:]), str(folder / "grid.png"))  # ignored
    return folder


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    """A tiny MNIST whose classes stay apart under the classifier's 2-pixel shifts (tiny_mnist's bars do not)."""
    return synthetic.write_mnist(tmp_path_factory.mktemp("patterns"), n_per_class=26)


@pytest.fixture(scope="module")
def yardstick(patterns, tmp_path_factory):
    return mnist_quality.Yardstick(patterns, cache=tmp_path_factory.mktemp("cache") / "cls.pt", steps=60, log=None)


def test_classifier_trains_on_tiny_mnist_and_scores_folders(yardstick, tmp_path):
    images, labels = synthetic.digit_patterns(26)  # the same digits as in the yardstick's MNIST
    assert yardstick.same_digits and yardstick.n_train + yardstick.n_ref == len(images)
    assert yardstick.accuracy > 0.9
    balanced = yardstick.score_folder(write_folder(tmp_path / "balanced", images[:100]))
    one_class = yardstick.score_folder(write_folder(tmp_path / "ones", images[labels == 1]))
    assert balanced["n"] == 100 and balanced["coverage"] > 0.9 and balanced["classes_covered"] == 10
    assert one_class["coverage"] < 0.2 and one_class["classes_covered"] == 1
    assert balanced["distance"] < one_class["distance"]
    assert 0 <= balanced["floor"] < one_class["distance"] and balanced["confidence"] > 0.5
    # 64x64 images (dcgan64.py's size) are resized to 28x28
    big = torch.nn.functional.interpolate(images[:100, None].float(), size=(64, 64), mode="bilinear")
    scores64 = yardstick.score_folder(write_folder(tmp_path / "big", big.round().to(torch.uint8)))
    assert scores64["coverage"] > 0.9
    assert math.isfinite(yardstick.floor(size=64))


def test_classifier_cache_is_keyed_by_the_training_data(tmp_path):
    root_a = synthetic.write_mnist(tmp_path / "a", n_per_class=10)
    cache = tmp_path / "cls.pt"
    said = []
    mnist_quality.Yardstick(root_a, cache=cache, steps=5, log=said.append)
    assert any("training" in s for s in said)
    said.clear()
    mnist_quality.Yardstick(root_a, cache=cache, steps=5, log=said.append)
    assert said == []  # loaded from the cache
    root_b = synthetic.write_mnist(tmp_path / "b", n_per_class=10, seed=1)
    mnist_quality.Yardstick(root_b, cache=cache, steps=5, log=said.append)
    assert any("training" in s for s in said)  # other digits: trained again


def test_mnist_quality_command_line(tiny_mnist, tmp_path, capsys):
    images, _ = bar_digits()
    folder = write_folder(tmp_path / "gen", images[:50])
    mnist_quality.main(["--data", str(tiny_mnist), "--cache", str(tmp_path / "c.pt"), "--classifier-steps", "5",
                        str(folder)])
    out = capsys.readouterr().out
    assert "floor (real vs real)" in out and f"{folder}: 50 images, distance" in out
    with pytest.raises(SystemExit, match="no numbered PNGs"):
        mnist_quality.main(["--data", str(tiny_mnist), "--cache", str(tmp_path / "c.pt"), "--classifier-steps", "5",
                            str(tmp_path)])


@pytest.fixture
def fake_scripts(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name in SCRIPTS:
        shutil.copy(REPO / "tests" / "fake_gan_script.py", folder / f"{name}.py")
    return folder


def test_results_quick_run_writes_tables_and_plots(fake_scripts, tiny_mnist, tmp_path, capsys):
    out = tmp_path / "results"
    results.main(["--mnist", str(tiny_mnist), "--quick", "--scripts-dir", str(fake_scripts), "--results", str(out),
                  "--runs", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache" / "cls.pt")])
    with open(out / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["script"], r["epoch"]) for r in rows] == [(s, e) for s in SCRIPTS[:4] for e in ("1", "2")]
    assert all(r["n_generated"] == "64" and 0 <= float(r["coverage"]) <= 1 for r in rows)
    assert [r["steps"] for r in rows[:2]] == ["4", "8"]  # resumed to epoch 2
    quality = (out / "quality.md").read_text()
    assert "`dcgan64.py`" in quality and "real digits (half B)" in quality
    losses = (out / "losses_5.md").read_text()
    assert "| `lsgan.py` | 0.239 | 0.165 | 1.3000 | 0.8000 |" in losses
    for name in SCRIPTS[:4]:
        assert (out / f"samples_{name}.png").is_file() and (out / f"progress_{name}.gif").is_file()


def test_results_budget_defaults_to_the_scripts_epochs(fake_scripts):
    args = results.parse_args(["--mnist", "x", "--scripts-dir", str(fake_scripts), "--budget", "lsgan=7"])
    assert results.checkpoint_epochs(args, "vanilla_gan") == [1, 2, 3]  # the fake's default --epochs is 3
    assert results.checkpoint_epochs(args, "lsgan") == [1, 2, 5, 7]


def test_speed_quick_run_measures_every_script(fake_scripts, tmp_path, capsys):
    out = tmp_path / "results"
    assert speed.main(["--quick", "--scripts-dir", str(fake_scripts), "--results", str(out)]) == 0
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["script"] for r in rows] == SCRIPTS
    # the fake logs 0.01 s per step: 100 batches/s
    assert all(float(r["train_images_per_s"]) == pytest.approx(100 * int(r["batch"]), rel=0.01) for r in rows)
    assert all(float(r["g_images_per_s"]) == 12345 and int(r["peak_rss_mib"]) > 0 for r in rows)
    md = (out / "speed.md").read_text()
    assert "torch " + torch.__version__ in md and "`dcgan256.py` | 2 | fp32" in md


def test_baseline_comparison_runs_both_steps(capsys):
    baseline_dcgan64.main(["--batch-size", "2", "--width", "4", "--warmup", "1", "--steps", "1"])
    out = capsys.readouterr().out
    assert "plain tutorial-style step:" in out and "dcgan64.py train_step:" in out
    assert "GFLOP per image" in out and "steps/s" in out


def test_decode_quick_run_compares_every_variant_and_draft_mode_stays_close(tmp_path):
    photos = synthetic.write_image_folder(tmp_path / "photos", n=3)  # 178x218, CelebA's size
    decoders = decode.dcgan64.decode_image
    rows = decode.main(["--data", str(photos), "--quick", "--results", str(tmp_path)])
    assert decode.dcgan64.decode_image is decoders  # restored after each PIL-path call
    table = (tmp_path / "decode.md").read_text()
    assert all(f"| {size}x{size} | {variant} |" in table for size in (64, 256) for variant in decode.VARIANTS)
    assert "at 64: 3 at 1/2; at 256: 3 at full size" in table and all(r["images_per_s"] > 0 for r in rows)
    draft = {r["size"]: r for r in rows if r["variant"] == "(c) PIL + draft"}
    assert 0 < draft[64]["mean_diff"] < 1.5 and draft[64]["max_diff"] <= 8  # half-scale decoding, a few levels off
    assert draft[256]["max_diff"] == 0  # no reduction possible: the copy gives the PIL path's pixels exactly


# dcgan/main.py of pytorch/examples as the benchmark sees it: the arguments it is given and one line a step, in
# main.py's own format, here 0.05 s apart (10 steps, 40 images of batch 4).
FAKE_PEER = """import argparse, time
p = argparse.ArgumentParser()
for flag in ("--dataset", "--dataroot", "--batchSize", "--workers", "--niter", "--outf", "--manualSeed"):
    p.add_argument(flag)
opt = p.parse_args()
assert (opt.dataset, opt.batchSize, opt.workers, opt.niter) == ("folder", "4", "2", "1")
for i in range(10):
    time.sleep(0.05)
    print('[%d/%d][%d/%d] Loss_D: %.4f Loss_G: %.4f D(x): %.4f D(G(z)): %.4f / %.4f'
          % (0, 1, i, 10, 1.0, 1.0, 0.5, 0.5, 0.5))
"""


def test_peer_benchmark_times_the_peers_steps_from_its_output(tmp_path):
    (tmp_path / "examples" / "dcgan").mkdir(parents=True)
    (tmp_path / "examples" / "dcgan" / "main.py").write_text(FAKE_PEER)
    assert peer_dcgan64.link_photos(synthetic.write_image_folder(tmp_path / "photos", n=3), tmp_path / "root", 40) == 3
    assert len(list((tmp_path / "root" / "photos").iterdir())) == 40
    args = peer_dcgan64.parse_args(["--examples", "x", "--images", "y", "--batch-size", "4", "--warmup", "2",
                                    "--steps", "6"])
    rate = peer_dcgan64.peer_rate(tmp_path / "examples" / "dcgan" / "main.py", tmp_path / "root", tmp_path, args)
    assert rate == pytest.approx(4 / 0.05, rel=0.3)             # 6 steps of 4 images from the end of step 2 to 8
    assert peer_dcgan64.variant_flags("fp32") == [] and peer_dcgan64.variant_flags("amp+cache") == ["--amp", "--cache"]


def test_notebook_choices_are_xavier_uniform_layers_and_a_uniform_prior():
    args = notebook_choices.dcgan_mnist.parse_args(["--device", "cpu"])
    G, D, _, _ = notebook_choices.notebook_build(args, torch.device("cpu"))
    for m in [*G.modules(), *D.modules()]:
        if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d)):  # Xavier's bound: sqrt(6 / (fan_in + fan_out))
            fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
    z = notebook_choices.notebook_noise(1000, args, "cpu")
    assert z.shape == (1000, args.z_dim) and z.min() >= -1 and z.max() <= 1 and z.min() < -0.99


# dcgan/main.py of pytorch/examples run with --dataset mnist, as learning_dcgan64.py sees it: a line a step in
# main.py's format (2 epochs of 3 steps, 0.05 s apart) and G's weights after each epoch under main.py's layer
# names (main.K), here those of a dcgan64.py Generator made from the epoch's number as seed.
FAKE_MNIST_PEER = """import argparse, sys, time, torch
p = argparse.ArgumentParser()
for flag in ("--dataset", "--dataroot", "--batchSize", "--workers", "--niter", "--outf", "--manualSeed"):
    p.add_argument(flag)
opt = p.parse_args()
assert (opt.dataset, opt.batchSize, opt.niter) == ("mnist", "8", "2")
sys.path.insert(0, {repo!r})
import dcgan64
for epoch in range(2):
    for i in range(3):
        time.sleep(0.05)
        print('[%d/%d][%d/%d] Loss_D: 1.0 Loss_G: 1.0' % (epoch, 2, i, 3))
    torch.manual_seed(epoch)
    state = dcgan64.Generator(channels=1).state_dict()
    torch.save({{"main." + k: v for k, v in state.items()}}, f"{{opt.outf}}/netG_epoch_{{epoch}}.pth")
"""


def test_learning_benchmark_scores_the_peers_epochs_and_our_steps(patterns, yardstick, tmp_path):
    main_py = tmp_path / "examples" / "dcgan" / "main.py"
    main_py.parent.mkdir(parents=True)
    main_py.write_text(FAKE_MNIST_PEER.format(repo=str(REPO)))
    args = learning_dcgan64.parse_args(["--examples", "x", "--mnist", str(patterns), "--batch-size", "8", "--workers",
                                        "0", "--epochs-at", "1", "2", "--generate", "16", "--results",
                                        str(tmp_path / "results")])
    root, pngs, n = learning_dcgan64.prepare_digits(patterns, tmp_path / "work", 8)
    assert n == 256 and len(list(pngs.glob("*.png"))) == 256     # 260 digits cut to 32 whole batches of 8
    assert len(mnist_quality.load_mnist(root, train=True)[0]) == 256

    (tmp_path / "peer").mkdir()
    ends = learning_dcgan64.train_peer(main_py, root, tmp_path / "peer", 1, args)
    assert sorted(ends) == [1, 2, 3, 4, 5, 6] and ends[1] == 0  # 1-based steps across epochs, from step 1's end
    assert ends[6] >= 0.25                                      # 5 steps of 0.05 s after step 1 (more on a busy CPU)
    peer_g = learning_dcgan64.peer_generator(tmp_path / "peer", 2)  # after 2 epochs: netG_epoch_1.pth
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(peer_g.state_dict().values(),
                                                  learning_dcgan64.dcgan64.Generator(channels=1).state_dict().values()))

    (tmp_path / "ours").mkdir()
    ours = list(learning_dcgan64.train_ours(pngs, tmp_path / "ours", 1, False, [1, 2], args))
    assert [step for step, _, _ in ours] == [1, 2] and ours[0][2] == 0 and ours[1][2] > 0
    assert not torch.equal(ours[0][1][0].weight, ours[1][1][0].weight)  # a step was trained in between

    assert torch.equal(learning_dcgan64.draw(peer_g, 16, 8), learning_dcgan64.draw(peer_g, 16, 8))  # the same z
    rows = [learning_dcgan64.score(yardstick, peer_g, "peer", 1, 6, ends[6], args),
            *(learning_dcgan64.score(yardstick, g, "fp32", 1, step, wall, args) for step, g, wall in ours)]
    assert (tmp_path / "results" / "learning_dcgan64" / "fp32_seed1_step2.png").is_file()
    learning_dcgan64.write_markdown(tmp_path / "l.md", rows, args, common.machine_info(), "avx2", n, yardstick)
    table = (tmp_path / "l.md").read_text()
    assert "| pytorch/examples dcgan/main.py | 6 |" in table and "| dcgan64.py | 2 |" in table


def test_bf16_gradients_come_back_to_fp32_when_every_layer_is_kept_in_fp32(patterns, capsys):
    torch.manual_seed(0)
    G, D = bf16_gradients.dcgan64.Generator(ngf=8, channels=1), bf16_gradients.dcgan64.Discriminator(ndf=8, channels=1)
    x, z = bf16_gradients.real_batches(patterns, 4, 1)[0], torch.randn(4, 100, 1, 1)
    ref = bf16_gradients.gradients(G, D, x, z, amp=False)
    layers = list(G)
    with bf16_gradients.in_fp32((G, D), bf16_gradients.everything):
        assert all(isinstance(m, bf16_gradients.InFP32) for m in [*G, *D])
        wrapped = bf16_gradients.gradients(G, D, x, z, amp=True)
    assert list(G) == layers                                # the layers are given back
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ref, wrapped))
    bf16 = bf16_gradients.gradients(G, D, x, z, amp=True)
    assert 1e-4 < bf16_gradients.compare(bf16[0], ref[0])[0] < 0.5  # bf16 moves D's gradient, a little
    bf16_gradients.main(["--mnist", str(patterns), "--batch-size", "4", "--width", "8"])
    out = capsys.readouterr().out
    assert all(f"| {name} |" in out for name in ["other batch", *bf16_gradients.VARIANTS])


def test_ceilings_quick_run_measures_an_mlp_and_the_256_networks(tmp_path):
    ceilings.main(["--quick", "--scripts", "lsgan", "dcgan256", "--batch-size", "2", "--batch-sizes-256", "1",
                   "--results", str(tmp_path)])
    table = (tmp_path / "ceilings.md").read_text()
    for kind in ("fp32", "bf16"):
        assert f"| `lsgan.py` | 2 | {kind} |" in table and f"| `dcgan256.py` | 1 | {kind} |" in table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| `")]
    # images/s, "N% of <ceiling GFLOP/s>": positive, but not bounded by 100% (the quick run's small ceilings can be
    # slower than a step's larger products, and emulated bf16 has no meaningful ceiling)
    assert all(float(r[3]) > 0 and float(r[6].split("% of ")[0]) >= 0 and float(r[6].split("% of ")[1]) > 0
               for r in rows)
    assert [r[8].endswith("x) |") for r in rows] == [False, False, True, True]  # plain step: photo networks only


# failure_rate.py's scripts as it sees them: per-step statistics (D(G(z)) 0.001 for a dead seed 1, 0.3 otherwise)
# and a sample grid copied from GRID, in milliseconds. The peer prints its line for a step, then writes its grid at
# the first batch of each epoch (3 steps here); ours takes --lr-d only to tell a variant's flags reach it.
FAKE_FAILING_PEER = """import argparse, shutil
p = argparse.ArgumentParser()
for flag in ("--dataset", "--dataroot", "--batchSize", "--workers", "--niter", "--outf", "--manualSeed"):
    p.add_argument(flag)
opt = p.parse_args()
for step in range(100):
    epoch, i = divmod(step, 3)
    print('[%d/%d][%d/%d] Loss_D: 0.1 Loss_G: 5.0 D(x): 0.99 D(G(z)): %.4f / 0.0001'
          % (epoch, 9, i, 3, 0.001 if opt.manualSeed == "1" else 0.3), flush=True)
    if i == 0:
        shutil.copy({grid!r}, f"{{opt.outf}}/fake_samples_epoch_{{epoch:03d}}.png")
"""
FAKE_FAILING_OURS = """import argparse, pathlib, shutil
p = argparse.ArgumentParser()
for flag in ("--data", "--channels", "--out", "--batch-size", "--seed", "--max-steps", "--epochs", "--log-every",
             "--workers", "--lr-d"):
    p.add_argument(flag)
p.add_argument("--cache", action="store_true")
a = p.parse_args()
out = pathlib.Path(a.out)
(out / "samples").mkdir()
shutil.copy({grid!r}, out / "samples" / "epoch_0001.png")
d_fake = 0.001 if a.seed == "1" and not a.lr_d else 0.3
rows = [f"{{s}},1,0.1,0.1,5.0,0.99,{{d_fake}}" for s in range(1, int(a.max_steps) + 1)]
(out / "log.csv").write_text("\\n".join(["step,epoch,time,loss_d,loss_g,d_real,d_fake", *rows]) + "\\n")
"""


def test_failure_rate_classifies_runs_from_d_of_g_of_z_and_adds_variants(tiny_mnist, tmp_path):
    import failure_rate
    lo, hi = failure_rate.clopper_pearson(0, 16)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 16), abs=1e-9)  # closed form when none failed
    assert failure_rate.clopper_pearson(16, 16)[0] == pytest.approx(0.025 ** (1 / 16), abs=1e-9)
    assert failure_rate.clopper_pearson(5, 16) == pytest.approx((0.1102, 0.5866), abs=1e-4)  # tables' values
    assert failure_rate.seeds("3-5") == [3, 4, 5] and failure_rate.seeds("7") == [7]
    line = "[1/25][4/78] Loss_D: 0.5000 Loss_G: 7.7000 D(x): 0.9900 D(G(z)): 0.0040 / 0.0010\n"
    assert failure_rate.parse_peer(["Using device: cpu\n", line]) == [
        dict(step=83, epoch=2, loss_d=0.5, loss_g=7.7, d_real=0.99, d_fake=0.004)]  # D(G(z)) of D's step

    torchvision.utils.save_image(torch.rand(128, 1, 8, 8), tmp_path / "peer.png")  # 16 rows of 8 samples
    torchvision.utils.save_image(torch.rand(64, 1, 8, 8), tmp_path / "ours.png")
    main_py = tmp_path / "examples" / "dcgan" / "main.py"
    main_py.parent.mkdir(parents=True)
    main_py.write_text(FAKE_FAILING_PEER.format(grid=str(tmp_path / "peer.png")))
    (tmp_path / "ours.py").write_text(FAKE_FAILING_OURS.format(grid=str(tmp_path / "ours.png")))
    common_args = ["--examples", str(tmp_path / "examples"), "--mnist", str(tiny_mnist), "--ours",
                   str(tmp_path / "ours.py"), "--steps", "4", "--window", "2", "--warn-window", "2", "--warn-from",
                   "2", "--warn-by", "3", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "res"),
                   "--threads", "1", "--jobs", "2", "--score", "0"]  # the fakes keep no G (scoring: the test below)
    failure_rate.main([*common_args, "--seeds", "1-2"])
    with open(tmp_path / "work" / "peer_seed1_steps4_threads1" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]  # stopped after step 5 was printed
    for run in ("default_seed1", "default_seed2", "peer_seed1", "peer_seed2"):  # the first 64 samples, halved
        grid = tmp_path / "res" / "failure_rate" / f"{run}_steps4_threads1.png"
        assert torchvision.io.decode_image(str(grid)).shape[1:] == (41, 41)
    (tmp_path / "res" / "failure_rate.md").write_text((tmp_path / "res" / "failure_rate.md").read_text()
                                                      + "\n## Notes\n\nseen on the grids\n")
    failure_rate.main([*common_args, "--seeds", "1-2", "--peer-seeds", "--variant", "ttur", "--flags=--lr-d 1e-4"])
    with open(tmp_path / "res" / "failure_rate.csv") as f:
        rows = {(r["variant"], r["seed"]): r for r in csv.DictReader(f)}
    assert len(rows) == 6 and rows["default", "1"]["outcome"] == rows["peer", "1"]["outcome"] == "dead"
    assert rows["default", "1"]["warn_step"] == "2" and rows["default", "2"]["warn_step"] == ""
    assert rows["ttur", "1"]["outcome"] == "alive" and rows["ttur", "1"]["flags"] == "--lr-d 1e-4"
    md = (tmp_path / "res" / "failure_rate.md").read_text()
    assert "| dcgan64.py | default |  | 2 | 1 | 50% [1%, 99%] | 4 | 1 | 1 |  |" in md
    assert "| dcgan64.py | ttur | `--lr-d 1e-4` | 2 | 0 | 0% [0%, 84%] | 4 | 1 | none |" in md
    assert "| peer | peer |  | 2 | 1 |" in md and "- default: lowest alive 0.3000, highest dead 0.0010; fired on 1/1 dead " \
        "runs and 0/1 alive runs." in md
    assert md.endswith("## Notes\n\nseen on the grids\n")       # kept when the tables are written again



def test_failure_rate_scores_the_last_g_of_our_runs_with_the_script_it_was_trained_with(tmp_path):
    import failure_rate
    run = dict(implementation="dcgan64.py", variant="v", script=str(REPO / "dcgan64.py"), seed=1, steps=4, threads=1)
    (tmp_path / "v_seed1_steps4_threads1").mkdir()
    G = learning_dcgan64.dcgan64.Generator(channels=1)
    torch.save({"G": G.state_dict()}, tmp_path / "v_seed1_steps4_threads1" / "checkpoint.pt")
    scored = []
    def yardstick():
        return types.SimpleNamespace(score=lambda images: scored.append(images) or {"distance": 12.34})
    args = types.SimpleNamespace(work=tmp_path, score=600)
    assert failure_rate.distance(run, args, yardstick) == 12.3
    assert scored[0].shape == (600, 1, 64, 64) and scored[0].dtype == torch.uint8  # as --generate's PNGs hold them
    assert failure_rate.distance(run, args, None) == 12.3       # kept in the run folder: not scored again
    assert failure_rate.distance({**run, "implementation": "peer"}, args, None) == ""


def test_failure_rate_reads_rows_appended_with_a_column_its_header_lacks(tmp_path):
    import failure_rate
    (tmp_path / "rows.csv").write_text("implementation,variant,script,flags,seed,steps,threads\n"
                                       "peer,peer,main.py,,1,200,2,12.5\n")  # a newer row: one more column
    assert failure_rate.read_rows(tmp_path / "rows.csv") == [dict(
        implementation="peer", variant="peer", script="main.py", flags="", seed="1", steps="200", threads="2")]
