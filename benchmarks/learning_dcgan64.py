"""dcgan64.py against pytorch/examples' dcgan/main.py on the MNIST digits at 64x64: quality at equal steps and time.

    git clone https://github.com/pytorch/examples ../examples
    python benchmarks/learning_dcgan64.py --examples ../examples --mnist ./data --seeds 1 2 3 --peer-seeds 1

Both train the 1x64x64 networks (ngf = ndf = 64, z of 100) on the same digits with the same batch size and
DataLoader workers, each from its own seed. The peer runs unmodified from the checkout given (`--dataset mnist`,
which resizes the 28x28 digits to 64x64). It has no step limit and saves G after every epoch, so the digits are
cut to a whole number of batches (9,984 of 10,000 at batch 128: an epoch is 78 steps for both) and quality is
measured at epoch ends (--epochs-at, default 3 6 10 13: steps 234, 468, 780, 1014). dcgan64.py reads the same
digits written as PNGs (`--channels 1`; it resizes them to 64x64), stopped at those steps with --max-steps and
continued with --resume; it runs in fp32 and with --amp (the peer has no bf16 mode).

Score: G's weights at each of those steps (the peer's netG_epoch_N.pth, our checkpoint.pt) are loaded into
dcgan64.py's Generator (the peer's layers are the same, in the same order) and draw --generate digits from the
same z in fp32, with BatchNorm on batch statistics as both implementations sample; they are scored by
mnist_quality.py's Yardstick (digit-classifier Frechet distance, lower is better, and the floor real digits
reach). Wall time at step N: the end of step N minus the end of step 1 (so the first step's one-off start-up is
left out of both): from log.csv's `time` for ours, from the moment the peer's per-step line reaches this
process for the peer (PYTHONUNBUFFERED). Run on an otherwise idle machine: runs take turns, never overlap.

Writes results/learning_dcgan64.{md,csv,png} (quality against steps and against wall time, one figure) and the
64-sample grids of each run at each step as results/learning_dcgan64/<run>_step<N>.png. Finished runs are kept in
--work (rows.csv) and not trained again, so a command with more seeds adds to them.
"""
import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import mnist_quality  # noqa: E402
import results  # noqa: E402
import synthetic  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan64  # noqa: E402

PEER = "peer"
PEER_STEP = re.compile(r"^\[(\d+)/\d+\]\[(\d+)/(\d+)\] Loss_D")
COLUMNS = ["run", "seed", "step", "wall_s", "distance", "floor", "confidence", "coverage", "classes_covered"]
LABELS = {PEER: "pytorch/examples dcgan/main.py", "fp32": "dcgan64.py", "amp": "dcgan64.py --amp"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", required=True, help="a checkout of github.com/pytorch/examples")
    p.add_argument("--mnist", required=True, help="torchvision MNIST root (MNIST/raw/), e.g. ./data")
    p.add_argument("--runs", nargs="+", default=[PEER, "fp32", "amp"], choices=[PEER, "fp32", "amp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds of our runs")
    p.add_argument("--peer-seeds", nargs="+", type=int, help="seeds of the peer's runs (default: --seeds)")
    p.add_argument("--epochs-at", nargs="+", type=int, default=[3, 6, 10, 13], help="measure at these epoch ends")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, for both")
    p.add_argument("--generate", type=int, default=5000, help="digits drawn to score each point")
    p.add_argument("--work", default=str(common.BENCH / "runs" / "learning_dcgan64"), help="run folders")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    p.add_argument("--cache", default=str(mnist_quality.DEFAULT_CACHE), help="the digit classifier's cache file")
    args = p.parse_args(argv)
    args.peer_seeds = args.peer_seeds or args.seeds
    return args


# ---- the two implementations, trained --------------------------------------------------------------------
def train_peer(main_py, root, out, seed, args):
    """Run dcgan/main.py for the last of --epochs-at epochs; return {step: seconds since the end of step 1}."""
    cmd = [sys.executable, str(main_py), "--dataset", "mnist", "--dataroot", str(root), "--batchSize",
           str(args.batch_size), "--workers", str(args.workers), "--niter", str(max(args.epochs_at)),
           "--outf", str(out), "--manualSeed", str(seed)]
    ends, log = {}, []
    with subprocess.Popen(cmd, cwd=main_py.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:                                # stderr too: one pipe cannot fill up unread
            log.append(line)
            if m := PEER_STEP.match(line):
                ends[int(m[1]) * int(m[3]) + int(m[2]) + 1] = time.perf_counter()  # 1-based step has ended
    (out / "stdout.txt").write_text("".join(log))
    if proc.returncode != 0:
        raise common.ScriptFailed(f"{' '.join(cmd)} exited with {proc.returncode}:\n{''.join(log[-10:])}")
    return {step: t - ends[1] for step, t in ends.items()}


def peer_generator(out, epoch):
    """The peer's G after `epoch` epochs, in dcgan64.py's Generator: its `main.K` layers are our `net.K`."""
    state = torch.load(out / f"netG_epoch_{epoch - 1}.pth", map_location="cpu", weights_only=True)
    G = dcgan64.Generator(channels=1)
    G.load_state_dict({k.removeprefix("main."): v for k, v in state.items()})  # strict: every layer matches
    return G


def train_ours(pngs, out, seed, amp, steps, args):
    """dcgan64.py up to each of `steps` in turn; yield (step, G, seconds since the end of step 1)."""
    for i, step in enumerate(steps):
        common.run_script("dcgan64.py", "--data", pngs, "--channels", 1, "--out", out, "--batch-size",
                          args.batch_size, "--workers", args.workers, "--seed", seed, "--epochs", 10 ** 6,
                          "--max-steps", step, "--log-every", 60, *(["--amp"] if amp else []),
                          *(["--resume"] if i else []), log=out / "stdout.txt")
        times = {row["step"]: row["time"] for row in common.read_log(out / "log.csv")}
        G = dcgan64.Generator(channels=1)
        G.load_state_dict(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["G"])
        yield step, G, times[step] - times[1]


# ---- scoring -----------------------------------------------------------------------------------------------
def draw(G, n, batch_size):
    """n digits (uint8, (n, 1, 64, 64)) from the same z for every G, fp32, as PNG files would hold them."""
    rng = torch.Generator().manual_seed(0)
    chunks = []
    for start in range(0, n, batch_size):
        z = torch.randn(batch_size, 100, 1, 1, generator=rng)
        x = dcgan64.sample(G, z)[:n - start]                    # BatchNorm on this batch's statistics
        chunks.append(((x + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8))  # as save_image rounds
    return torch.cat(chunks)


def score(ys, G, run, seed, step, wall, args):
    images = draw(G, args.generate, args.batch_size)
    grids = Path(args.results) / "learning_dcgan64"
    grids.mkdir(parents=True, exist_ok=True)
    save_image(images[:64].float() / 255, grids / f"{run}_seed{seed}_step{step}.png", nrow=8)
    s = ys.score(images)
    floor = ys.floor(s["n_fd"], size=64)
    print(f"  {run} seed {seed} step {step}: {wall:.0f} s | distance {s['distance']:.1f} (floor {floor:.1f}) | "
          f"confidence {s['confidence']:.3f} | {s['classes_covered']}/10 classes", flush=True)
    return dict(run=run, seed=seed, step=step, wall_s=round(wall, 1), distance=round(s["distance"], 2),
                floor=round(floor, 2), confidence=round(s["confidence"], 4), coverage=round(s["coverage"], 4),
                classes_covered=s["classes_covered"])


# ---- data, bookkeeping, report -----------------------------------------------------------------------------
def prepare_digits(mnist, work, batch_size):
    """A whole number of batches of the train split: as an MNIST root for the peer, as PNGs for us."""
    images, labels = mnist_quality.load_mnist(mnist, train=True)
    n = len(images) // batch_size * batch_size
    root = work / "digits"
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        synthetic.write_mnist(root, digits=(images[:n], labels[:n]))
    return root, results.export_pngs(images[:n], work / "digits_png"), n


def read_rows(path):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (v if k == "run" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)


def by_point(rows):
    """{(run, step): [rows of each seed]}"""
    points = {}
    for r in sorted(rows, key=lambda r: (list(LABELS).index(r["run"]), r["step"], r["seed"])):
        points.setdefault((r["run"], int(r["step"])), []).append(r)
    return points


def write_markdown(path, rows, args, machine, capabilities, n_digits, ys):
    table = []
    for (run, step), rs in by_point(rows).items():
        d = [r["distance"] for r in rs]
        table.append([LABELS[run], step, f"{statistics.median(r['wall_s'] for r in rs):.0f}",
                      f"{statistics.mean(d):.1f}", " / ".join(f"{x:.1f}" for x in d),
                      f"{statistics.mean(r['confidence'] for r in rs):.3f}",
                      " / ".join(str(int(r["classes_covered"])) for r in rs), f"{rs[0]['floor']:.1f}"])
    with open(path, "w") as f:
        f.write("## dcgan64.py against pytorch/examples' dcgan/main.py: learning on the MNIST digits at 64x64\n\n")
        f.write(f"Machine: {common.machine_line(machine)}.\n\nCPU capabilities: {capabilities}.\n\n")
        f.write(f"Command: `python benchmarks/learning_dcgan64.py --examples ../examples --mnist ./data --runs "
                f"{' '.join(args.runs)} --seeds {' '.join(map(str, args.seeds))} --peer-seeds "
                f"{' '.join(map(str, args.peer_seeds))} --epochs-at {' '.join(map(str, args.epochs_at))}`\n\n")
        f.write(f"{n_digits} digits, batch {args.batch_size}, {args.workers} DataLoader workers each; scored on "
                f"{args.generate} digits from the same z (fp32). {ys.describe()}. Distance: lower is better; "
                f"mean over the seeds, then each seed's. Wall time: median over the seeds, seconds from the end of "
                f"step 1.\n\n")
        f.write(common.md_table(["run", "step", "wall s", "distance (mean)", "distance per seed", "confidence",
                                 "classes >= 5%, per seed", "floor"], table))


def plot(path, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = {PEER: "tab:gray", "fp32": "tab:blue", "amp": "tab:orange"}
    points = by_point(rows)
    for run in LABELS:
        steps = sorted(step for r, step in points if r == run)
        if not steps:
            continue
        mean = [statistics.mean(r["distance"] for r in points[run, s]) for s in steps]
        wall = [statistics.median(r["wall_s"] for r in points[run, s]) for s in steps]
        seeds = len(points[run, steps[0]])
        for ax, x in zip(axes, (steps, wall)):
            ax.plot(x, mean, "o-", color=colours[run], label=f"{LABELS[run]} ({seeds} seed{'s' * (seeds > 1)})")
            for s, xx in zip(steps, x):                         # each seed, as a dot
                ax.plot([xx] * len(points[run, s]), [r["distance"] for r in points[run, s]], ".",
                        color=colours[run], alpha=0.4)
    floor = rows[0]["floor"]
    for ax, label in zip(axes, ("optimizer steps (batch 128)", "wall time, s (this machine)")):
        ax.axhline(floor, color="k", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("digit-classifier distance (lower is better)")
    axes[0].legend()
    axes[1].text(0.02, 0.03, "dotted: real digits (floor)", transform=axes[1].transAxes, fontsize=8)
    fig.suptitle("DCGAN 64x64 on the MNIST digits: dcgan64.py and pytorch/examples, same data and batch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    main_py = (Path(args.examples) / "dcgan" / "main.py").resolve()
    if PEER in args.runs and not main_py.is_file():
        raise SystemExit(f"learning_dcgan64.py: error: no dcgan/main.py in {args.examples}")
    machine = common.machine_info()
    capabilities = ", ".join(k for k, v in torch.cpu.get_capabilities().items() if v is True
                             and k.startswith(("avx", "amx")))
    print(common.machine_line(machine), f"\nCPU capabilities: {capabilities}", flush=True)
    work, res = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    root, pngs, n_digits = prepare_digits(args.mnist, work, args.batch_size)
    steps = [e * (n_digits // args.batch_size) for e in args.epochs_at]
    ys = mnist_quality.Yardstick(args.mnist, cache=Path(args.cache))
    rows = read_rows(work / "rows.csv")
    for run in args.runs:
        for seed in (args.peer_seeds if run == PEER else args.seeds):
            if {int(r["step"]) for r in rows if r["run"] == run and r["seed"] == seed} >= set(steps):
                continue                                        # done by an earlier command
            rows = [r for r in rows if not (r["run"] == run and r["seed"] == seed)]
            out = work / f"{run}_seed{seed}"
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            print(f"{LABELS[run]}, seed {seed}: to step {steps[-1]}", flush=True)
            if run == PEER:
                ends = train_peer(main_py, root, out, seed, args)
                done = [(s, peer_generator(out, e), ends[s]) for e, s in zip(args.epochs_at, steps)]
            else:
                done = train_ours(pngs, out, seed, run == "amp", steps, args)
            for step, G, wall in done:
                rows.append(score(ys, G, run, seed, step, wall, args))
                write_rows(work / "rows.csv", rows)
    write_rows(res / "learning_dcgan64.csv", rows)
    write_markdown(res / "learning_dcgan64.md", rows, args, machine, capabilities, n_digits, ys)
    if common.have_matplotlib():
        plot(res / "learning_dcgan64.png", rows)
    print((res / "learning_dcgan64.md").read_text())


if __name__ == "__main__":
    main()
