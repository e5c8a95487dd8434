"""tools/report.py on run folders made here: log.csv rows and fixed-noise grids written to order (a healthy
run, one where D wins for a known stretch of steps, one whose samples collapse at a known epoch, damaged
ones), and once through the command line on a run lsgan.py trained. Only the tests marked extras need
matplotlib (tools/requirements.txt): `python -m pytest -q tests -m extras` runs them.
"""
import contextlib
import csv
import importlib
import io
import math
import re
import shutil
import sys

import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from helpers import REPO, error_of, run_script

sys.path.insert(0, str(REPO / "tools"))
import report  # noqa: E402

HEALTHY = "no stretch where D won outright, no fall in the samples' diversity"
D_WINS = [0.01 if 150 <= step <= 400 else 0.3 for step in range(1, 701)]  # D(G(z)) of steps 1 to 700


def write_run(folder, d_fake, grids):
    """A run folder: log.csv with one row per value of d_fake (steps 1, 2, ...), and samples/epoch_NNNN.png
    (from 1) of each grid, (64, C, S, S) in [0, 1], as the scripts save them."""
    (folder / "samples").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    with open(folder / "log.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["step", "epoch", "time", "loss_d", "loss_g", "d_real", "d_fake"])
        for step, p in enumerate(d_fake, 1):
            p = min(max(p + 0.02 * torch.randn((), generator=g).item(), 0.001), 0.999)  # a noisy mean of D
            rows.writerow([step, 1 + step // 100, step / 10, 0.7, -math.log(p), 0.7, p])
    for epoch, grid in enumerate(grids, 1):
        save_image(grid, folder / "samples" / f"epoch_{epoch:04d}.png", nrow=8)
    return folder


def diverse(n=5, size=28, channels=1):
    """n grids of 64 different random samples."""
    g = torch.Generator().manual_seed(1)
    return [torch.rand(64, channels, size, size, generator=g) for _ in range(n)]


def report_lines(folder, *flags):
    """What report.py prints for the run folder, line by line."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        report.main([str(folder), *flags])
    return out.getvalue().splitlines()


def test_a_healthy_run_has_nothing_to_report(tmp_path):
    run = write_run(tmp_path / "run", [0.3] * 600, diverse())
    with open(run / "log.csv", "a") as f:
        f.write("601,7,60.")                                # a row the run is still writing
    assert report_lines(run, "--no-plot") == [HEALTHY]


def test_the_stretch_where_d_won_is_named(tmp_path):
    run = write_run(tmp_path / "run", D_WINS, diverse())
    lines = report_lines(run, "--no-plot", "--window", "100")
    assert len(lines) == 1, lines
    first, last, d_fake = re.fullmatch(r"D won outright from step (\d+) to step (\d+) \(D\(G\(z\)\) averaged "
                                       r"([\d.]+); G's loss [\d.]+\)", lines[0]).groups()
    assert 150 - 100 < int(first) <= 150 and 400 <= int(last) < 400 + 100   # windows reach past the stretch
    assert float(d_fake) < 0.05


def test_the_epoch_the_samples_collapsed_at_is_named(tmp_path):
    grids = diverse(6, channels=3)
    grids[3] = grids[3][:1].expand(64, -1, -1, -1)          # epoch 4: all 64 cells the same image
    run = write_run(tmp_path / "run", [0.3] * 300, grids)
    lines = report_lines(run, "--no-plot")
    assert len(lines) == 1 and re.fullmatch(r"samples' diversity fell to 0\.0000 at epoch 4 \(best so far "
                                            r"0\.\d+\)", lines[0]), lines
    # the cells are cut out where save_image put them: the diversity is that of the samples, to 8-bit rounding
    with Image.open(run / "samples" / "epoch_0001.png") as png:
        assert report.diversity(png) == pytest.approx(grids[0].std(dim=0).mean().item(), abs=1e-3)


def test_progress_gif_has_a_frame_per_grid_at_most_600_pixels(tmp_path):
    smooth = torch.linspace(0, 1, 256).expand(3, 256, 256)  # 8x8 cells of 256 px: a grid of 2066 px a side
    run = write_run(tmp_path / "run", [0.3] * 10, [smooth * torch.rand(64, 1, 1, 1) for _ in range(2)])
    report_lines(run, "--no-plot")
    with Image.open(run / "progress.gif") as gif:
        assert gif.n_frames == 2 and max(gif.size) == 600 and gif.info["duration"] == 200 and gif.info["loop"] == 0


@pytest.mark.parametrize("remove", ["", "log.csv", "samples"])
def test_bad_input_is_one_line(tmp_path, remove):
    run = write_run(tmp_path / "run", [0.3] * 10, diverse(1))
    shutil.rmtree(run / remove) if (run / remove).is_dir() else (run / remove).unlink()
    assert error_of("report", run, "--no-plot").startswith(f"report.py: error: no {run / remove} ")


def test_without_matplotlib_it_says_what_to_install(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", [0.3] * 10, diverse(1))
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # `import matplotlib` now raises ImportError
    assert "pip install -r tools/requirements.txt" in error_of("report", run)
    assert not (run / "progress.gif").exists()              # it stops before writing anything


def test_command_line_on_a_run_lsgan_trained(tiny_mnist, tmp_path):
    out = tmp_path / "lsgan"                                # trained in-process: one interpreter start less
    importlib.import_module("lsgan").main([str(a) for a in (
        "--data", tiny_mnist, "--out", out, "--epochs", 2, "--batch-size", 16, "--device", "cpu")])
    result = run_script("tools/report.py", out, "--no-plot")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert all(line == HEALTHY or line.startswith(("D won outright from step", "samples' diversity fell to"))
               for line in result.stdout.splitlines()) and result.stdout
    with Image.open(out / "progress.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (242, 242)  # 8 * (28 + 2) + 2: small grids are left alone


@pytest.mark.extras
def test_curves_png(tmp_path):
    run = write_run(tmp_path / "run", D_WINS, diverse(2))
    assert report_lines(run)[0].startswith("D won outright from step")
    with Image.open(run / "curves.png") as png:
        assert png.format == "PNG" and png.size == (1000, 700)


# ---- damaged or unexpected run contents: one line and exit status 1, or the report as promised ---

@pytest.mark.parametrize("junk", [b"7,1,0.7,\xff\xfe,1,1,1\n",  # bytes that are not UTF-8
                                  b"\0" * 300 + b"\n",          # what a crash leaves in a file
                                  b"99999999999999999999999,1,1,1,1,1,1\n",  # more than int64
                                  b"7,1,0.7,nan,nan,nan,nan\n"])  # the NaN losses a run stops at
def test_rows_that_are_not_numbers_are_skipped(tmp_path, junk):
    run = write_run(tmp_path / "run", D_WINS, diverse(1))
    lines = (run / "log.csv").read_bytes().splitlines(keepends=True)
    (run / "log.csv").write_bytes(b"".join([*lines[:50], junk, *lines[50:]]))  # before D's stretch
    assert report_lines(run, "--no-plot")[0].startswith("D won outright from step")


@pytest.mark.parametrize("text", [b"", b"\0" * 4096, b"1,1,0.1,0.7,0.7,0.7,0.3\n"])  # no header
def test_a_log_without_its_header_is_one_line(tmp_path, text):
    run = write_run(tmp_path / "run", [0.3] * 10, diverse(1))
    (run / "log.csv").write_bytes(text)
    message = error_of("report", run, "--no-plot")
    assert "does not start with the header of the scripts' log.csv" in message


def odd_file(kind, grid):
    """A file in samples/ that is not a grid of the run (bytes), from one that is (grid, bytes)."""
    png = io.BytesIO()
    size = {"another size": (530, 530), "not a grid": (100, 50)}.get(kind, (1, 1))
    Image.new("RGB", size).save(png, "PNG")
    odd = {"a copy": grid, "cut short": grid[:len(grid) // 2], "empty": b"", "not a PNG": b"notes"}
    return odd.get(kind, png.getvalue())


ODD = ["cut short", "empty", "not a PNG", "not a grid", "another size"]  # samples/epoch_0002.png


@pytest.mark.parametrize("name, kind", [("epoch_0002 copy.png", "a copy"),
                                        *(("epoch_0002.png", kind) for kind in ODD)])
def test_files_in_samples_that_are_not_its_grids_are_left_out(tmp_path, capsys, name, kind):
    grids = diverse(3)
    grids[2] = grids[2][:1].expand(64, -1, -1, -1)          # epoch 3: collapsed, still found
    run = write_run(tmp_path / "run", [0.3] * 10, grids)
    grid = (run / "samples" / "epoch_0001.png").read_bytes()
    (run / "samples" / name).write_bytes(odd_file(kind, grid))
    own = {path: path.read_bytes() for path in (run / "samples").iterdir()}
    fell = report_lines(run, "--no-plot")
    assert fell[0].startswith("samples' diversity fell to 0.0000 at epoch 3")
    assert capsys.readouterr().err.startswith(f"report.py: left out {run / 'samples' / name}: ")
    with Image.open(run / "progress.gif") as gif:
        assert gif.n_frames == 2 + (kind == "a copy")
    assert own == {path: path.read_bytes() for path in (run / "samples").iterdir()}  # as they were


@pytest.mark.parametrize("flags, expected", [
    (["--below", "nan"], "--below nan: give a number"),
    (["--window", "0"], "--window 0: give a number of steps, 1 or more"),
])
def test_bad_flags_are_one_line(tmp_path, flags, expected):
    run = write_run(tmp_path / "run", [0.3] * 10, diverse(1))
    assert expected in error_of("report", run, "--no-plot", *flags)


@pytest.mark.extras
def test_a_window_longer_than_the_log_is_plotted(tmp_path):
    run = write_run(tmp_path / "run", [0.3] * 10, diverse(1))
    assert report_lines(run, "--window", str(10**30)) == [HEALTHY]


@pytest.mark.parametrize("where", ["progress.gif", "a" * 300])  # a folder in its place; a long name
def test_paths_the_os_refuses_are_one_line(tmp_path, where):
    run = write_run(tmp_path / "run", [0.3] * 10, diverse(1))
    if where == "progress.gif":
        (run / where).mkdir()
    message = error_of("report", run if where == "progress.gif" else run / where, "--no-plot")
    assert message.endswith(("Is a directory", "File name too long"))
