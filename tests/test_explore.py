"""tools/explore.py on tiny trained runs of each kind of script: an MLP (vanilla_gan), a DCGAN on MNIST
(dcgan_mnist), a DCGAN on photos (dcgan64), and an untrained dcgan256 for one sheet.

What is checked is what the pictures claim: a walk changes step by step and ends at the images of its two
z; the arithmetic image is that of mean(A) - mean(B) + mean(C) of the saved sheet z; the neighbours found
over many tiny chunks are the true nearest ones. Pictures are read back cell by cell (see explore.picture).
"""
import csv
import importlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from helpers import REPO, bar_digits, error_of, load_checkpoint
from common import write_mnist

sys.path.insert(0, str(REPO / "tools"))
import explore  # noqa: E402

QUANTUM = 1 / 255 + 1e-4   # a picture's pixel is its image's pixel rounded to 8 bits
TRAIN = {                  # the runs, 2 steps each, in-process through the scripts' main (their command line)
    "vanilla_gan": ["--batch-size", "16"],
    "dcgan_mnist": ["--batch-size", "16"],
    "dcgan64": ["--ngf", "8", "--ndf", "8", "--batch-size", "4", "--workers", "0"],
}


@pytest.fixture(scope="module")
def trained(tiny_mnist, photo_folder, tmp_path_factory):
    """trained(script) -> (run folder, Run) of a 2-step run of the script, trained on first use."""
    runs = {}

    def get(script):
        if script not in runs:
            out = tmp_path_factory.mktemp(script) / "run"
            data = photo_folder if script == "dcgan64" else tiny_mnist
            importlib.import_module(script).main([str(a) for a in (
                "--data", data, "--out", out, "--max-steps", 2, "--device", "cpu", "--log-every", 100,
                *TRAIN[script])])
            runs[script] = out
        return runs[script], explore.Run(runs[script], "cpu", 0)
    return get


def explore_main(*args):
    explore.main([str(a) for a in args] + ["--device", "cpu"])


def read_png(path):
    return pil_to_tensor(Image.open(path))                  # (C, H, W) uint8


def cell(png, r, c, size, labelled=True):
    """The image in cell (r, c) of a picture, at its own size (size x size), in [0, 1]."""
    k = explore.zoom(size)
    x, y = explore.corner(r, c, size * k, labelled)
    return png[:, y:y + size * k:k, x:x + size * k:k].float() / 255


def close(a, b):
    return (a - b).abs().max().item() <= QUANTUM


def test_help_lists_the_modes_and_their_sections(capsys):
    with pytest.raises(SystemExit) as done:
        explore.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "arXiv:1511.06434" in out
    for words in ("--interpolate N", "Section 6.1", "--sheet N", "--arithmetic", "Section 6.3.2", "figure 7",
                  "--nearest K", "--data", "--chunk", "--device", "--seed", "--workers"):
        assert words in out


@pytest.mark.parametrize("script", TRAIN)
def test_images_are_made_as_the_scripts_sample_makes_them(script, trained):
    """With the context's BatchNorm statistics, the context's images are the script's own samples of it, and
    an image does not depend on what else is asked for in the same call."""
    out, run = trained(script)
    G = run.module.build(run.args, torch.device("cpu"))[0]
    G.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["G"])
    own = ((run.module.sample(G, run.as_input(run.context)) + 1) / 2).clamp(0, 1)
    assert (run.images(run.context) - own).abs().max() < 2e-3
    z = run.noise(5, "samples")
    assert torch.allclose(run.images(z)[2:], run.images(z[2:]), atol=1e-5)
    assert torch.equal(run.noise(3, "samples"), z[:3])  # the first samples do not depend on how many


@pytest.mark.parametrize("script", TRAIN)
def test_interpolation_walks_step_by_step_between_its_ends(script, trained, capsys):
    out, run = trained(script)
    explore_main(out, "--interpolate", 3)
    assert "interpolation.png" in capsys.readouterr().out
    ends = torch.load(out / "explore" / "interpolation_z.pt", weights_only=True)  # start, end, start, end...
    assert ends.shape[:2] == (6, run.z_dim) and ends.shape == run.as_input(ends.flatten(1)).shape
    ends = run.images(ends.flatten(1))                      # (6, C, S, S): made in another call than the walks
    size = ends.shape[-1]
    png = read_png(out / "explore" / "interpolation.png")
    walks = torch.stack([torch.stack([cell(png, r, c, size, False) for c in range(10)]) for r in range(3)])
    assert png.shape[0] == ends.shape[1] and walks.shape[1:] == (10, *ends.shape[1:])
    assert close(walks[:, 0], ends[0::2]) and close(walks[:, -1], ends[1::2])
    steps = (walks[:, 1:] - walks[:, :-1]).abs().flatten(2).mean(2)    # (3, 9): change from image to image
    across = (walks[:, -1] - walks[:, 0]).abs().flatten(1).mean(1)     # (3,): from one end to the other
    assert (steps > 0).all() and (steps.max(1).values < across).all()
    assert Image.open(out / "explore" / "interpolation.gif").n_frames == 18  # 10 forwards, 8 back


@pytest.mark.parametrize("script", TRAIN)
def test_arithmetic_draws_the_image_of_the_mean_z_sum(script, trained, capsys):
    out, run = trained(script)
    explore_main(out, "--sheet", 12, "--arithmetic", "0, 1 - 2 + 3,4,5")
    assert "arithmetic.png" in capsys.readouterr().out
    sheet_z = torch.load(out / "explore" / "sheet_z.pt", weights_only=True)
    assert sheet_z.shape == run.as_input(run.noise(12, "samples")).shape
    assert torch.equal(sheet_z.flatten(1), run.noise(12, "samples"))
    z = sheet_z.flatten(1)
    y = z[[0, 1]].mean(0) - z[[2]].mean(0) + z[[3, 4, 5]].mean(0)
    png = read_png(out / "explore" / "arithmetic.png")
    result, size = run.images(y[None])[0], run.images(y[None]).shape[-1]
    assert close(cell(png, 3, 7, size), result)             # Y: level with the means (row 3), centre of the 3x3
    assert close(cell(png, 0, 4, size), run.images(z[3:4])[0])  # exemplar 3: first of group C (column 4)
    assert close(cell(png, 3, 2, size), run.images(z[2:3])[0])  # mean of B, a single exemplar: its own image
    around = torch.stack([cell(png, r, c, size) for r in (2, 3, 4) for c in (6, 7, 8) if (r, c) != (3, 7)])
    assert ((around - result).abs().flatten(1).amax(1) > QUANTUM).all()  # 8 perturbations of Y
    sheet_png = read_png(out / "explore" / "sheet.png")     # 12 samples: 3 rows of 4, each row a label band
    shown = size * explore.zoom(size)
    assert sheet_png.shape[1:] == (2 + 3 * (13 + shown + 2), 2 + 4 * (shown + 2))
    assert close(cell(sheet_png, 2, 1, size), run.images(z[9:10])[0])


def mnist_with_copies(root, copies, at):
    """A tiny MNIST whose training images at the indices `at` are the uint8 images `copies` (n, 28, 28)."""
    images, labels = bar_digits(100)
    images[at] = copies
    write_mnist(root, digits=(images, labels))
    return images.unsqueeze(1)                              # (100, 1, 28, 28)


def photos_with_copies(root, copies, photo_folder):
    """The photo folder with the images `copies` (n, C, 64, 64) added as copies/sample_i.png."""
    shutil.copytree(photo_folder, root)
    (root / "copies").mkdir()
    for i, image in enumerate(copies):
        Image.fromarray(image.permute(1, 2, 0).squeeze(2).numpy()).save(root / "copies" / f"sample_{i}.png")
    module = importlib.import_module("dcgan64")
    paths, images = module.find_images(root), []
    for path in paths:                                      # as training reads them, unreadable files left out
        try:
            images.append((path, module.load_image(path, copies.shape[1])))
        except Exception:
            pass
    return images


@pytest.mark.parametrize("script, workers", [("dcgan_mnist", 0), ("dcgan64", 1)])  # MNIST, photos
def test_nearest_finds_the_true_nearest_across_chunks(script, workers, trained, tmp_path, photo_folder):
    out, run = trained(script)
    samples = run.images(run.noise(8, "samples"))           # --nearest's 8 samples: the sheet's first 8
    copies = (samples * 255).round().to(torch.uint8)        # (8, C, S, S): stored in the training set
    if run.photos:
        named = photos_with_copies(tmp_path / "photos", copies, photo_folder)
        names, data = [p for p, _ in named], torch.stack([x for _, x in named])
        copy_names = [str(tmp_path / "photos" / "copies" / f"sample_{i}.png") for i in range(8)]
    else:
        at = [3, 11, 12, 40, 58, 77, 98, 99]                # in different chunks, two in one
        data = mnist_with_copies(tmp_path / "mnist", copies.squeeze(1), at)
        names = [f"MNIST training image {i}" for i in range(len(data))]
        copy_names = [names[i] for i in at]
    explore_main(out, "--nearest", 4, "--data", tmp_path / ("photos" if run.photos else "mnist"),
                 "--chunk", 3, "--workers", workers)        # many chunks of 3 images
    with open(out / "explore" / "nearest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 * 4
    # Brute force, in float64: the distances of every sample to every training image.
    d = torch.cdist(samples.flatten(1).double(), data.flatten(1).double() / 255)  # (8, N)
    for s in range(8):
        found = [r for r in rows if r["sample"] == str(s)]
        # Its own copy first, as far from it as rounding to 8 bits takes it: half a step per pixel at most.
        rounding = samples[s].numel() ** 0.5 * 0.5 / 255    # 0.05 for 28x28 digits, 0.22 for 64x64 colour
        assert found[0]["image"] == copy_names[s] and float(found[0]["distance"]) <= rounding
        best = d[s].sort().values[:4]
        assert torch.allclose(torch.tensor([float(r["distance"]) for r in found], dtype=torch.float64), best,
                              atol=1e-3)
        assert [names.index(r["image"]) for r in found] == d[s].argsort()[:4].tolist()
    png = read_png(out / "explore" / "nearest.png")         # row s: the sample, then its 4 neighbours
    size = samples.shape[-1]
    assert close(cell(png, 5, 0, size), samples[5]) and close(cell(png, 5, 1, size), copies[5] / 255)


def test_a_dcgan256_sheet(photo_folder, tmp_path, capsys):
    """dcgan256's checkpoint format and z shape, on an untrained G (training at 256x256 is slow on a CPU)."""
    module = importlib.import_module("dcgan256")
    args = module.parse_args(["--device", "cpu"])
    G = module.build(args, torch.device("cpu"))[0]
    (tmp_path / "run").mkdir()
    torch.save({"script": "dcgan256", "args": vars(args), "G": G.state_dict()}, tmp_path / "run" / "checkpoint.pt")
    explore_main(tmp_path / "run", "--sheet", 2)
    assert read_png(tmp_path / "run" / "explore" / "sheet.png").shape == (3, 2 + 13 + 256 + 2, 2 + 2 * (256 + 2))
    assert torch.load(tmp_path / "run" / "explore" / "sheet_z.pt", weights_only=True).shape == (2, 100, 1, 1)


# ---- bad input: one clear line, exit status 1, no traceback -------------------------------------------------

@pytest.mark.parametrize("flags, expected", [
    (["--sheet", "4"], "no checkpoint at {nowhere}/checkpoint.pt (give the run folder of one of the scripts"),
    (["--arithmetic", "1 - 2 + 3"], "no {run}/explore/sheet_z.pt: write a sheet first with --sheet N"),
    (["--sheet", "4", "--arithmetic", "1 + 2"], "--arithmetic '1 + 2': expected \"A - B + C\", each a comma-"),
    (["--sheet", "4", "--arithmetic", "0,1 - 2 + 9"], "--arithmetic: index 9 is not on the sheet, which has "
                                                       "samples 0 to 3"),
    (["--nearest", "3"], "--nearest needs --data"),
    (["--sheet", "0"], "--sheet must be positive, got 0"),
    ([], "nothing to do: give at least one of --interpolate, --sheet, --arithmetic, --nearest"),
    (["--sheet", "4", "--arithmetic", ""], "--arithmetic '': expected \"A - B + C\""),  # first
    (["--sheet", "1001"], "--sheet 1001: at most 1000"),      # not hours of work, nor all memory
    (["--interpolate", "101"], "--interpolate 101: at most 100"),
    (["--nearest", "101", "--data", "mnist"], "--nearest 101: at most 100"),
    (["--sheet", "4", "--seed", str(2**62)], f"--seed must be in [0, 2**62), got {2**62}"),
    (["--sheet", "4", "--device", "abacus"], "unknown device 'abacus'"),  # the script's own check, our prefix
])
def test_bad_input_is_one_clear_line(trained, tmp_path, flags, expected):
    mnist_run = trained("dcgan_mnist")[0]
    folder = tmp_path / "nowhere" if "no checkpoint" in expected else mnist_run
    shutil.rmtree(mnist_run / "explore", ignore_errors=True)
    with pytest.raises(SystemExit) as stop:
        explore.main([str(folder), *flags])
    message = str(stop.value.code)
    assert message.startswith("explore.py: error: ") and "\n" not in message
    assert expected.format(nowhere=tmp_path / "nowhere", run=mnist_run) in message


def run_copy(trained, folder, change=dict):
    """folder/run holding the checkpoint.pt of the dcgan_mnist run, changed by change(its dict)."""
    (folder / "run").mkdir()
    torch.save(change(load_checkpoint(trained("dcgan_mnist")[0])), folder / "run" / "checkpoint.pt")
    return folder / "run"


OTHER_CHECKPOINTS = {  # what checkpoint.pt may hold -> explore.py's line (None: it works)
    "a bare tensor": (lambda c: torch.zeros(3), "not a checkpoint of the scripts (KeyError)"),
    "args not a dict": (lambda c: {**c, "args": [96]}, "not a checkpoint of the scripts (TypeErr"),
    "another script's G": (lambda c: {**c, "script": "vanilla_gan"},
                           "does not fit vanilla_gan.py's Generator with the run's flags "
                           "(z_dim=96, hidden=(1024, 1024), act=relu): damaged, or another"),
    "z_dim -3": (lambda c: {**c, "args": {"z_dim": -3}}, "Generator with the run's flags (z_dim=-"),
    "no G": (lambda c: {**c, "G": None}, "(z_dim=96): damaged, or another script's (TypeError)"),
    "no flags": (lambda c: {**c, "args": {}}, None),        # from before the flags: their defaults
}


@pytest.mark.parametrize("kind", OTHER_CHECKPOINTS)
def test_a_checkpoint_of_other_contents_is_one_line(trained, tmp_path, capsys, kind):
    change, expected = OTHER_CHECKPOINTS[kind]
    run = run_copy(trained, tmp_path, change)
    saved = (run / "checkpoint.pt").read_bytes()
    if expected is None:
        explore_main(run, "--sheet", 2)
        assert (run / "explore" / "sheet.png").is_file()
    else:
        assert expected in error_of("explore", run, "--sheet", 2, "--device", "cpu")
    assert (run / "checkpoint.pt").read_bytes() == saved and not capsys.readouterr().err


@pytest.mark.parametrize("where, make, expected", [  # a path in the run folder, what is put there
    pytest.param("explore", lambda p: p.write_text("notes"), "explore: File exists", id="a file"),
    pytest.param("explore/sheet.png", Path.mkdir, "sheet.png: Is a directory", id="a folder"),
    pytest.param("explore/sheet_z.pt", lambda p: p.write_bytes(b"zz"),
                 "sheet_z.pt, which is damaged", id="garbage z"),
    pytest.param("explore/sheet_z.pt", lambda p: torch.save(torch.zeros(96), p),
                 "sheet_z.pt, which is damaged (IndexError)", id="1-D z"),
    pytest.param("explore/sheet_z.pt", lambda p: torch.save(torch.zeros(0, 96), p),
                 "holds z of shape (0, 96), not (N, 96)", id="no z"),
    pytest.param("a" * 300, lambda p: None, "File name too long", id="a run folder's long name"),
])
def test_files_the_os_or_torch_refuse_are_one_line(trained, tmp_path, where, make, expected):
    run = run_copy(trained, tmp_path)
    (run / where).parent.mkdir(exist_ok=True)
    make(run / where)
    mode = ["--arithmetic", "0 - 1 + 2"] if where.endswith(".pt") else ["--sheet", "2"]
    assert expected in error_of("explore", run / where if len(where) > 255 else run, *mode,
                                "--device", "cpu")
