"""Fast tests of the tools in benchmarks/, through their command lines, on tiny inputs.

figures.py and speed.py run against tests/fake_gan_script.py copied under the five scripts' names,
and learning.py and speed.py against fakes of pytorch/examples' dcgan/main.py that print its lines
and write its files: these tests check the tools, not the GANs.
"""

import csv
import shutil
import types

import pytest
import torch
import torchvision

from helpers import REPO, bar_digits  # first: it puts benchmarks/ on sys.path
import common
import figures
import learning
import quality
import speed

SCRIPTS = ["vanilla_gan", "lsgan", "dcgan_mnist", "dcgan64", "dcgan256"]


def random_spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_closed_forms():
    d, s1 = 16, random_spd(16, 1)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64)
    assert quality.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)
    # S2 = 4 S1: Tr(S1) + Tr(4 S1) - 2 Tr(2 S1) = Tr(S1); plus |mu1 - mu2|^2 = 16 * 0.25
    expected = 4 + s1.trace().item()
    assert quality.frechet_distance(mu1, s1, mu2, 4 * s1) == pytest.approx(expected, rel=1e-9)
    a, b = torch.rand(d, dtype=torch.float64) + 0.1, torch.rand(d, dtype=torch.float64) + 0.1
    expected = 4 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()  # diagonal: sum of (sqrt a - sqrt b)^2
    assert quality.frechet_distance(mu1, a.diag(), mu2, b.diag()) == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 4, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0, 0, 0])
    sampled = quality.frechet_distance(*quality.gaussian_stats(x), *quality.gaussian_stats(y))
    assert sampled == pytest.approx(1.0, abs=0.05)


def test_coverage_of_one_class_is_zero_and_of_all_classes_even_is_one():
    one = torch.nn.functional.one_hot(torch.full((50,), 3), 10).double()
    even = torch.nn.functional.one_hot(torch.arange(50) % 10, 10).double()
    assert quality.coverage(one)[0] == 0 and quality.coverage(one)[2] == 1
    assert quality.coverage(even) == (pytest.approx(1.0), [0.1] * 10, 10)


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        torchvision.io.write_png(
            im.reshape(-1, *im.shape[-2:]).contiguous(), str(folder / f"{i:06d}.png")
        )
    torchvision.io.write_png(images[0].reshape(-1, *images.shape[-2:]), str(folder / "grid.png"))
    return folder


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    """A tiny MNIST whose classes stay apart under the classifier's shifts (bar_digits' do not)."""
    return common.write_mnist(tmp_path_factory.mktemp("patterns"), n_per_class=26)


@pytest.fixture
def small_nets(tmp_path, monkeypatch):
    """quality.py's networks trained for a few steps, cached in tmp_path."""
    monkeypatch.setattr(quality, "CACHE", tmp_path / "cache")
    monkeypatch.setitem(quality.MODES["digits"], "steps", 60)
    monkeypatch.setitem(quality.MODES["faces"], "steps", 30)


def test_quality_digits_scores_folders_from_the_command_line(
    patterns, small_nets, tmp_path, capsys
):
    images, labels = common.digit_patterns(26)
    balanced = write_folder(tmp_path / "balanced", images[:100])
    ones = write_folder(tmp_path / "ones", images[labels == 1])
    big = torch.nn.functional.interpolate(
        images[:100, None].float(), size=(64, 64), mode="bilinear"
    )
    big = write_folder(tmp_path / "big", big.round().to(torch.uint8))  # dcgan64.py's size
    quality.main(["digits", "--data", str(patterns), str(balanced), str(ones), str(big)])
    out = capsys.readouterr().out
    assert "training the digits network on 104 images" in out and "both splits" in out
    scores = {line.split(":")[0]: line for line in out.splitlines() if " images, distance " in line}
    assert "(10/10 classes" in scores[str(balanced)] and "(1/10 classes" in scores[str(ones)]
    assert "(10/10 classes" in scores[str(big)]
    distance = {k: float(v.split("distance ")[1].split()[0]) for k, v in scores.items()}
    assert distance[str(balanced)] < distance[str(ones)]
    quality.main(["digits", "--data", str(patterns), str(balanced)])
    assert "training" not in capsys.readouterr().out  # the cached network
    with pytest.raises(SystemExit, match="no numbered PNGs"):
        quality.main(["digits", "--data", str(patterns), str(tmp_path)])


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Person folders as LFW's: 4 people with 10 photos (they train the network), 30 with 2."""
    root = tmp_path_factory.mktemp("faces") / "faces"
    common.write_image_folder(root, n=10, size=(72, 72), people=4)
    common.write_image_folder(root / "others", n=2, size=(72, 72), people=30, seed=1)
    return root


def test_quality_faces_validates_and_scores_from_the_command_line(faces, small_nets, tmp_path):
    quality.main(
        ["faces", "--data", str(faces), "--validate", "--n", "24", "--results", str(tmp_path)]
    )
    table = (tmp_path / "faces_quality_validation.md").read_text()
    cells = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")]
    d = {c[0][2:]: float(c[1][:-2]) for c in cells[2:]}
    assert "4 people with 10+ photos" in table and "the 60 photos of the other 30 people" in table
    assert len(d) == 7 and d["real held-out images (half B)"] < d["uniform noise images"]
    assert "- real (varied) < 10 images repeated < 1 repeated:" in table
    with pytest.raises(SystemExit, match="one folder per person"):
        quality.main(["faces", "--data", str(faces / "others" / "person_000")])


@pytest.fixture
def fake_scripts(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name in SCRIPTS:
        shutil.copy(REPO / "tests" / "fake_gan_script.py", folder / f"{name}.py")
    return folder


def test_figures_quick_run_writes_the_table_plot_and_grids(fake_scripts, tiny_mnist, tmp_path):
    out = tmp_path / "results"
    figures.main(["--mnist", str(tiny_mnist), "--quick", "--scripts-dir", str(fake_scripts),
                  "--results", str(out), "--runs", str(tmp_path / "runs"),
                  "--cache", str(tmp_path / "cls.pt")])  # fmt: skip
    with open(out / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["script"], r["epoch"]) for r in rows] == [(s, e) for s in SCRIPTS[:4] for e in "12"]
    assert [r["steps"] for r in rows[:2]] == ["4", "8"] and all(
        0 <= float(r["coverage"]) <= 1 for r in rows
    )
    assert "| `dcgan64.py` | 2 |" in (out / "quality.md").read_text()
    assert all((out / f"samples_{name}.png").is_file() for name in SCRIPTS[:4])
    args = figures.parse_args(
        ["--mnist", "x", "--scripts-dir", str(fake_scripts), "--budget", "lsgan=7"]
    )
    assert figures.checkpoint_epochs(args, "vanilla_gan") == [
        1,
        2,
        3,
    ]  # the fake's default --epochs
    assert figures.checkpoint_epochs(args, "lsgan") == [1, 2, 5, 7]


def test_speed_quick_run_measures_every_script(fake_scripts, tmp_path):
    out = tmp_path / "results"
    speed.main(
        ["--quick", "--only", "scripts", "--scripts-dir", str(fake_scripts), "--results", str(out)]
    )
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["script"] for r in rows] == SCRIPTS
    # the fake logs 0.01 s per step: 100 batches/s
    assert all(
        float(r["train_images_per_s"]) == pytest.approx(100 * int(r["batch"]), rel=0.01)
        for r in rows
    )
    assert all(float(r["g_images_per_s"]) == 12345 and int(r["peak_rss_mib"]) > 0 for r in rows)
    assert "| dcgan256 | 2 | fp32 |" in (out / "speed.md").read_text()


# dcgan/main.py of pytorch/examples as the tools see it: the flags they give it, a line a step in its
# format, and G's weights after each epoch under its layer names (main.K), copied from the file G.
# Seed 1 is a run that D wins (D(G(z)) 0.001). Standard library only: it starts in milliseconds.
FAKE_PEER = """import argparse, os, shutil, time
p = argparse.ArgumentParser()
for flag in ("--dataset", "--dataroot", "--batchSize", "--workers", "--niter", "--outf", "--manualSeed"):
    p.add_argument(flag)
opt = p.parse_args()
os.makedirs(opt.outf, exist_ok=True)
for epoch in range(int(opt.niter)):
    for i in range({steps}):
        time.sleep(0.02)
        print('[%d/%d][%d/%d] Loss_D: 1.0 Loss_G: 2.0 D(x): 0.9 D(G(z)): %.4f / 0.2'
              % (epoch, int(opt.niter), i, {steps}, 0.001 if opt.manualSeed == "1" else 0.3), flush=True)
    shutil.copy({G!r} + "_" + opt.dataset, f"{{opt.outf}}/netG_epoch_{{epoch}}.pth")
"""
# dcgan64.py as learning.py sees it: log.csv to --max-steps (continued with --resume), G's checkpoint
FAKE_OURS = """import argparse, pathlib, shutil
p = argparse.ArgumentParser()
for flag in ("--data", "--channels", "--out", "--seed", "--batch-size", "--workers", "--epochs",
             "--max-steps", "--log-every", "--lr-g"):
    p.add_argument(flag)
p.add_argument("--resume", action="store_true")
a = p.parse_args()
out, d_fake = pathlib.Path(a.out), 0.001 if a.seed == "1" and not a.lr_g else 0.3
out.mkdir(parents=True, exist_ok=True)
start = len((out / "log.csv").read_text().splitlines()) if a.resume else 1
rows = [f"{{s}},1,{{0.1 * s}},0.1,5.0,0.99,{{d_fake}}" for s in range(start, int(a.max_steps) + 1)]
head = "" if a.resume else "step,epoch,time,loss_d,loss_g,d_real,d_fake\\n"
with open(out / "log.csv", "a") as f:
    f.write(head + "".join(r + "\\n" for r in rows))
shutil.copy({G!r} + "_ours" + a.channels, out / "checkpoint.pt")
"""


@pytest.fixture
def fake_peer_and_ours(tmp_path):
    """examples/dcgan/main.py and ours.py, as above, with G's weights for them to copy."""
    G = tmp_path / "G"
    for channels, dataset in ((1, "mnist"), (3, "folder")):
        state = learning.generator(types.SimpleNamespace(faces=channels == 3)).state_dict()
        torch.save({"main." + k: v for k, v in state.items()}, f"{G}_{dataset}")
        torch.save({"G": state}, f"{G}_ours{channels}")
    main_py = tmp_path / "examples" / "dcgan" / "main.py"
    main_py.parent.mkdir(parents=True)
    main_py.write_text(FAKE_PEER.format(G=str(G), steps=2))
    (tmp_path / "ours.py").write_text(FAKE_OURS.format(G=str(G)))
    return tmp_path / "examples", tmp_path / "ours.py"


def test_speed_times_the_peer_from_its_lines_and_ours_from_log_csv(
    fake_scripts, fake_peer_and_ours, tmp_path
):
    examples, _ = fake_peer_and_ours
    (examples / "dcgan" / "main.py").write_text(FAKE_PEER.format(G=str(tmp_path / "G"), steps=5))
    photos = common.write_image_folder(tmp_path / "photos", n=3)
    speed.main(["--only", "peer", "--quick", "--examples", str(examples), "--images",
                str(photos), "--steps", "1", "--rounds", "1", "--ours", "fp32", "amp",
                "--scripts-dir", str(fake_scripts), "--results", str(tmp_path)])  # fmt: skip
    rows = [line.split(" | ") for line in (tmp_path / "speed.md").read_text().splitlines()
            if line.startswith(("| peer", "| fp32", "| amp"))]  # fmt: skip
    rate = {r[0][2:]: float(r[1]) for r in rows}
    assert rate["peer"] == pytest.approx(128 / 0.02, rel=0.5)  # a step each 0.02 s (more when busy)
    assert (
        rate["fp32"] == pytest.approx(128 / 0.01)
        and rows[2][2] == f"{rate['amp'] / rate['peer']:.2f}x"
    )
    assert rows[1][3].endswith("of fp32 |") and rows[2][3] == " |"  # --quick: no bf16 ceiling


@pytest.mark.parametrize("kind", ["digits", "faces"])
def test_learning_scores_both_and_counts_failures(
    kind, patterns, small_nets, fake_peer_and_ours, tmp_path
):
    examples, ours = fake_peer_and_ours
    data = patterns  # 260 digits, or 324 faces: 2 batches of 128 either way
    if kind == "faces":
        data = common.write_image_folder(tmp_path / "lfw", n=12, size=(72, 72), people=22)
        common.write_image_folder(data / "others", n=2, size=(72, 72), people=30, seed=1)
    res = tmp_path / "res"
    flags = ["--examples", str(examples), "--data", str(data), "--script", str(ours), "--steps", "4", "--generate", "16", "--window", "2",
             "--work", str(tmp_path / "work"), "--results", str(res)]  # fmt: skip
    seeds = ["1-2", "--score-at", "2"] if kind == "digits" else ["1"]  # faces: fewer runs
    learning.main([*flags, "--seeds", *seeds])
    learning.main([*flags, "--seeds", "1", "--peer-seeds", "--ours", "ttur=--lr-g 4e-4"])
    with open(res / f"learning_{kind}.csv") as f:
        rows = {(r["run"], r["seed"], r["step"]): r for r in csv.DictReader(f)}
    assert len(rows) == (9 if kind == "digits" else 3)  # the second command added ttur only
    assert rows["peer", "1", "4"]["outcome"] == rows["default", "1", "4"]["outcome"] == "dead"
    assert (
        rows["ttur", "1", "4"]["outcome"] == "alive"
        and rows["ttur", "1", "4"]["flags"] == "--lr-g 4e-4"
    )
    assert float(rows["peer", "1", "4"]["wall_s"]) >= 0.04  # 3 steps of 0.02 s after step 1
    assert float(rows["default", "1", "4"]["wall_s"]) == pytest.approx(0.3)
    assert all(float(r["distance"]) >= 0 for r in rows.values())
    assert (res / f"learning_{kind}" / "peer_seed1_step4.png").is_file()
    md = (res / f"learning_{kind}.md").read_text()
    assert (
        "| ttur | `--lr-g 4e-4` | 1 | 0 | 0% [0%, 98%] | none |" in md and f"{kind} network" in md
    )
    if kind == "digits":  # G at step 2 too, the peer's from its first epoch's end
        assert "| default |  | 2 | 1 | 50% [1%, 99%] | 1 |" in md and "| peer | 2 |" in md


def test_clopper_pearson_intervals_and_seed_ranges():
    lo, hi = learning.clopper_pearson(0, 16)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 16), abs=1e-9)  # closed form
    assert learning.clopper_pearson(16, 16)[0] == pytest.approx(0.025 ** (1 / 16), abs=1e-9)
    assert learning.clopper_pearson(5, 16) == pytest.approx((0.1102, 0.5866), abs=1e-4)
    assert learning.seeds("3-5") == [3, 4, 5] and learning.seeds("7") == [7]


def test_the_peers_lines_are_read_as_log_rows(tmp_path):
    main_py = tmp_path / "main.py"
    main_py.write_text("print('Using device: cpu')\n"
                       "for i in range(5): print('[0/25][%d/78] Loss_D: 0.5000 Loss_G: 7.7000 "
                       "D(x): 0.9900 D(G(z)): 0.0040 / 0.0010' % i)\n")  # fmt: skip
    rows = common.run_peer(main_py, [], stop_after=3)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["time"] == 0
    assert rows[0] == {
        **rows[0],
        "epoch": 1,
        "loss_d": 0.5,
        "loss_g": 7.7,
        "d_real": 0.99,
        "d_fake": 0.004,
    }
