"""How a run of any of the five scripts is going, from its run folder (finished or still training).

    python tools/report.py runs/dcgan64           # --window 100 --below 0.05 by default
    python tools/report.py runs/lsgan --no-plot   # without matplotlib (tools/requirements.txt)

It writes into the run folder:
  progress.gif  the fixed-noise grids of samples/, one frame per epoch (200 ms, looping, at most
                600 pixels a side): the same 64 z every epoch, so the animation shows the samples
                sharpen, or shrink in variety. Other files in samples/ (copies, grids a crash cut
                short) are left out, a line on stderr each.
  curves.png    log.csv against the step: (a) loss_d and loss_g, (b) D(x) (d_real) and D(G(z))
                (d_fake), each raw and faint, with their mean over the last --window steps; shaded
                red where D won outright. D's outputs are probabilities in [0, 1], except in
                lsgan.py: raw scores aimed at 1 (real) and 0 (fake), which can fall outside [0, 1].

and prints one line per sign of trouble (see "When training goes wrong" in the README):
  D won outright  D(G(z)) averaged below --below over --window steps, from step A to step B: D
                  tells every fake apart, loss_g is large and G's gradient fades. Try a lower --lr
                  (D's in the photo scripts, where --lr-g is G's; both nets' in the MNIST scripts;
                  one-sided label smoothing with real labels 0.9 is an edit of the script) and
                  restart from an epoch checkpoint from before step A:
                  --resume RUN/checkpoints/epoch_NNNN.pt.
  diversity fell  the grid's diversity (the standard deviation of each pixel across its 64 cells,
                  in [0, 1], averaged over the pixels; 0 when all cells are the same) fell below a
                  third of the run's best so far, or below one grey level: the samples collapse
                  towards a few images (mode collapse). Roll back to an epoch before it,
                  --resume RUN/checkpoints/epoch_NNNN.pt, with a lower --lr.
"""

import argparse
import csv
import itertools
import math
import re
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

COLUMNS = ["loss_d", "loss_g", "d_real", "d_fake"]  # of log.csv, besides its step
COLLAPSE = 1 / 3  # diversity below this fraction of the best so far
NROW, PAD = 8, 2  # the grids' layout: save_image(nrow=8), padding 2


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"report.py: error: {message}")


def note(message):
    """A file left out, and why: one line on stderr; the report goes on."""
    print(f"report.py: {message}", file=sys.stderr)


def read_log(path):
    """log.csv as (steps (N,), values (N, 4) in COLUMNS' order). Rows that are not numbers are
    skipped: a row still being written, bytes a crash left (NUL, not UTF-8), the NaN losses a run
    stops at."""
    steps, values = [], []
    with open(path, newline="", errors="replace") as f:
        rows = csv.DictReader(f)
        if not {"step", *COLUMNS} <= set(rows.fieldnames or ()):
            header = f"step,...,{','.join(COLUMNS)}"
            fail(f"{path} does not start with the header of the scripts' log.csv ({header})")
        for row in rows:
            try:
                value, step = [float(row[c]) for c in COLUMNS], int(row["step"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(sum(value)) and 0 <= step < 2**63:
                steps.append(step)
                values.append(value)
    return torch.tensor(steps), torch.tensor(values).view(-1, len(COLUMNS))


def trailing_mean(x, window):
    """The mean of x (N,) over each value and the window - 1 before it (fewer in the first ones):
    (N,)."""
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), x.double().cumsum(0)])
    end = torch.arange(1, len(x) + 1)
    start = (end - min(window, len(x))).clamp(min=0)
    return ((sums[end] - sums[start]) / (end - start)).to(x.dtype)


def d_won(steps, values, window, below):
    """Maximal stretches of steps covered by windows where D(G(z)) averaged below `below`:
    [(first, last step, mean D(G(z)), mean loss_g over the stretch)]."""
    if len(steps) < window:
        return []
    means = trailing_mean(values[:, 3], window)[window - 1 :]  # window j: rows j .. j + window - 1
    bad = (means < below).float()
    # A step is in a stretch when any window holding it is bad: the max over the `window` windows
    # ending at it.
    padded = torch.nn.functional.pad(bad, (window - 1, window - 1))
    covered = padded.unfold(0, window, 1).amax(1).bool()
    stretches = []
    for won, rows in itertools.groupby(range(len(steps)), key=lambda i: covered[i].item()):
        if won:
            rows = list(rows)
            d_fake, loss_g = values[rows[0] : rows[-1] + 1, [3, 1]].mean(0).tolist()
            stretches.append((steps[rows[0]].item(), steps[rows[-1]].item(), d_fake, loss_g))
    return stretches


def diversity(grid):
    """The diversity of a grid image of save_image(nrow=8): std of each pixel across the cells,
    averaged."""
    width, height = grid.size
    size = (width - PAD) // NROW - PAD  # width = 8 * (size + 2) + 2
    if size < 1 or NROW * (size + PAD) + PAD != width or (height - PAD) % (size + PAD):
        raise ValueError(f"{width}x{height}, not a grid of save_image(nrow={NROW}, padding={PAD})")
    pixels = pil_to_tensor(grid.convert("RGB"))[:, PAD:, PAD:].float() / 255  # (3, H - 2, W - 2)
    step = size + PAD
    cells = pixels.unfold(1, size, step).unfold(2, size, step)  # (3, rows, 8, size, size)
    return cells.flatten(1, 2).std(dim=1).mean().item()


def grids(folder):
    """progress.gif from samples/epoch_NNNN.png; returns [(epoch, diversity)] by epoch. Other files
    are left out, saying so: copies (epoch_0003 copy.png), grids a crash cut short, other sizes."""
    frames, found, size = [], [], None
    paths = sorted((folder / "samples").glob("*.png"))
    grid_name = re.compile(r"epoch_[0-9]+\.png")
    epochs = {path: int(path.stem[6:]) for path in paths if grid_name.fullmatch(path.name)}
    for path in sorted(set(paths) - set(epochs)):
        note(f"left out {path}: not named epoch_NNNN.png as the scripts name their grids")
    for path in sorted(epochs, key=epochs.get):
        try:
            with Image.open(path) as grid:
                value, frame = diversity(grid), grid.convert("RGB")
            if frame.size != (size or frame.size):
                raise ValueError(f"{frame.size} pixels, the first grid {size}")
        except Exception as e:  # PIL: OSError, SyntaxError, ValueError
            note(f"left out {path}: {e}")
            continue
        found.append((epochs[path], value))
        size = frame.size
        frame.thumbnail((600, 600))  # keeps the aspect; smaller grids are left alone
        frames.append(frame)
    if not frames:
        samples = folder / "samples"
        fail(f"no grids in {samples} yet (samples/epoch_NNNN.png is written at each epoch's end)")
    gif = folder / "progress.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
    return found


def falls(found):
    """[(epoch, diversity, best before it)] of the epochs where the diversity fell (COLLAPSE, or
    one grey level)."""
    fallen, best = [], 0.0
    for epoch, value in found:
        if value < max(COLLAPSE * best, 1 / 255):
            fallen.append((epoch, value, best))
        best = max(best, value)
    return fallen


def plot(plt, folder, steps, values, args, stretches):
    """curves.png: (a) the losses, (b) D(x) and D(G(z)), raw and faint with their moving average;
    D's stretches of outright wins shaded, and the line it won below."""
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(10, 7), constrained_layout=True)
    fig.suptitle(str(folder))
    label = f"D wins below {args.below}"
    axes[1].axhline(args.below, color="tab:red", linestyle="--", linewidth=0.8, label=label)
    for ax, columns, title in zip(axes, ([0, 1], [2, 3]), ("(a) losses", "(b) D's mean output")):
        for c, colour in zip(columns, ("tab:blue", "tab:orange")):
            ax.plot(steps, values[:, c], color=colour, alpha=0.25, linewidth=0.6)
            mean = trailing_mean(values[:, c], args.window)
            label = f"{COLUMNS[c]} (mean of the last {args.window} steps)"
            ax.plot(steps, mean, color=colour, label=label)
        for first, last, *_ in stretches:
            ax.axvspan(first, last, color="tab:red", alpha=0.15)
        ax.set_title(title, loc="left")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    axes[1].set_ylabel("D(x) = d_real, D(G(z)) = d_fake")
    axes[1].set_xlabel("step" + (" (red: D won outright)" if stretches else ""))
    fig.savefig(folder / "curves.png", dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("run", type=Path, help="a script's run folder (holds log.csv and samples/)")
    p.add_argument("--window", type=int, default=100, help="steps per mean (D(G(z)), the plot)")
    p.add_argument("--below", type=float, default=0.05, help="D won if mean D(G(z)) is below it")
    p.add_argument("--no-plot", action="store_true", help="no curves.png (it needs matplotlib)")
    args = p.parse_args(argv)
    if args.window < 1:
        fail(f"--window {args.window}: give a number of steps, 1 or more")
    if math.isnan(args.below):
        fail("--below nan: give a number, e.g. 0.05")
    try:
        report(args)
    except OSError as e:  # a folder for a file, a long name
        fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))


def report(args):
    for need in ("", "log.csv", "samples"):
        path = args.run / need
        if not path.exists():
            fail(f"no {path} (give the run folder of one of the scripts, e.g. runs/dcgan64)")
    if not args.no_plot:
        hint = "pip install -r tools/requirements.txt (or pass --no-plot)"
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            fail(f"curves.png needs matplotlib: {hint}")

    steps, values = read_log(args.run / "log.csv")
    stretches = d_won(steps, values, args.window, args.below)
    fallen = falls(grids(args.run))
    if not args.no_plot:
        plot(plt, args.run, steps, values, args, stretches)
    for first, last, d_fake, loss_g in stretches:
        means = f"D(G(z)) averaged {d_fake:.3f}; G's loss {loss_g:.2f}"
        print(f"D won outright from step {first} to step {last} ({means})")
    for epoch, value, best in fallen:
        print(f"samples' diversity fell to {value:.4f} at epoch {epoch} (best so far {best:.4f})")
    if not stretches and not fallen:
        print("no stretch where D won outright, no fall in the samples' diversity")


if __name__ == "__main__":
    main()
