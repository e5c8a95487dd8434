"""Sample quality of the MNIST scripts against wall time, and their losses at iteration 3750: one command.

    pip install -r benchmarks/requirements.txt          # matplotlib, for the plots (tables are written without it)
    python benchmarks/results.py --mnist ./data         # ./data: where the MNIST scripts download MNIST

Sections (all by default; pick with --only quality losses):
- quality: vanilla_gan.py, lsgan.py and dcgan_mnist.py train on the MNIST train split under --mnist, and dcgan64.py
  on the same digits written once as 28x28 grayscale PNGs (benchmarks/cache/), which it resizes to 64x64
  (--channels 1; --cache only keeps the decoded images in RAM). Each runs with its default settings, through its
  real command line, into benchmarks/runs/<script>/ (started afresh). It stops at each checkpoint epoch (1, 2, 5,
  10, ... up to the budget; `--resume --epochs K` continues), writes --generate 5000 images and scores them with
  mnist_quality.py (read its docstring for how). Wall time is the `time` column of log.csv at the last step
  (training only; start-up, generation and scoring are not counted).
- losses: vanilla_gan.py, lsgan.py and dcgan_mnist.py with the Stanford CS231n GAN notebook's settings (batch 128,
  Adam lr 1e-3, beta1 0.5, z of size 96, its networks) stopped by --max-steps 3750; loss_d and loss_g at step 3750
  from log.csv, and their mean over steps 3701-3750 (single steps are noisy), beside the notebook's numbers. When
  the quality run of a script already passed step 3750 with exactly these settings (its defaults are the
  notebook's), its log is read instead of training again: the runs are deterministic, so the result is the same.

Outputs in benchmarks/results/ (--results to change): quality.md, quality.csv, quality_vs_time.png,
losses_<script>.png (losses, D(x), D(G(z)) against steps), samples_<script>.png (the last fixed-noise grid),
progress_<script>.gif (those grids over training, from a run folder's progress.gif where there is one),
real_mnist.png, losses_3750.md.

Expected duration on a 2-core CPU with nothing else running: printed at the start (a rough figure), and measured
per script after its first epoch. --quick is a smoke run on tiny settings (seconds to a minute), for tests.
"""

import argparse
import csv
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import mnist_quality  # noqa: E402

# Each script's budget is its default --epochs (--budget NAME=EPOCHS to change); it is scored after the epochs of
# CHECKPOINTS below the budget and at the budget. Flags beyond the defaults; rough seconds per epoch of 10,000
# digits on a 2-core CPU (only for the estimate printed at the start).
CHECKPOINTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
QUALITY = {
    "vanilla_gan": dict(flags=[], sec_per_epoch=4),
    "lsgan": dict(flags=[], sec_per_epoch=4),
    "dcgan_mnist": dict(flags=[], sec_per_epoch=26),
    "dcgan64": dict(flags=["--channels", "1", "--cache"], sec_per_epoch=400, images=True),
}
NETWORK_FLAGS = {"dcgan64": ["--channels", "1"]}  # also needed by --generate
QUICK_FLAGS = {"vanilla_gan": ["--batch-size", "16", "--g-hidden", "32", "--d-hidden", "32"],
               "lsgan": ["--batch-size", "16", "--g-hidden", "32", "--d-hidden", "32"],
               "dcgan_mnist": ["--batch-size", "16"],
               "dcgan64": ["--batch-size", "16", "--ngf", "8", "--ndf", "8", "--workers", "0"]}
QUICK_NETWORK_FLAGS = {"vanilla_gan": ["--g-hidden", "32", "--d-hidden", "32"],
                       "lsgan": ["--g-hidden", "32", "--d-hidden", "32"], "dcgan64": ["--ngf", "8", "--ndf", "8"]}

# the Stanford CS231n GAN notebook: its D and G losses at iteration 3750, and its settings
CS231N_3750 = {"vanilla_gan": (1.451, 0.8231), "lsgan": (0.239, 0.165), "dcgan_mnist": (0.9103, 1.15)}
SETTINGS_3750 = {"batch_size": 128, "lr": 1e-3, "beta1": 0.5, "z_dim": 96, "amp": False}
FLAGS_3750 = ["--batch-size", "128", "--lr", "1e-3", "--beta1", "0.5", "--z-dim", "96"]  # and no --amp
STEP_3750 = 3750
SMOOTH = 50
CSV_FIELDS = ["script", "epoch", "steps", "time_s", "n_generated", "n_fd", "distance", "floor", "confidence",
              "coverage", "classes_covered", "hist", "g_images_per_s"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", required=True,
                   help="torchvision MNIST root (MNIST/raw/*-ubyte), e.g. ./data, where the MNIST scripts download it")
    p.add_argument("--only", nargs="+", choices=["quality", "losses"], default=["quality", "losses"])
    p.add_argument("--scripts", nargs="+", choices=list(QUALITY), default=list(QUALITY),
                   help="quality section: which scripts (rows of the others are kept from an earlier quality.csv)")
    p.add_argument("--budget", nargs="+", default=[], metavar="SCRIPT=EPOCHS",
                   help="quality section: train SCRIPT for EPOCHS instead of its default --epochs")
    p.add_argument("--generate", type=int, help="images generated and scored at each checkpoint (5000; 64 --quick)")
    p.add_argument("--results", default=str(common.BENCH / "results"), help="folder for tables and plots")
    p.add_argument("--runs", default=str(common.BENCH / "runs"), help="folder for the scripts' run folders")
    p.add_argument("--cache", default=str(mnist_quality.DEFAULT_CACHE), help="classifier cache file")
    p.add_argument("--scripts-dir", default=str(common.REPO), help="folder holding the five scripts")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny networks and batches, epochs 1 and 2, 64 images, 5 steps for the losses")
    args = p.parse_args(argv)
    args.generate = args.generate or (64 if args.quick else 5000)
    if args.generate < 2:
        p.error("--generate must be at least 2")
    try:
        args.budget = {k: int(v) for k, v in (b.split("=") for b in args.budget)}
    except ValueError:
        p.error("--budget takes SCRIPT=EPOCHS, e.g. --budget dcgan64=2")
    if any(k not in QUALITY or v < 1 for k, v in args.budget.items()):
        p.error(f"--budget: SCRIPT is one of {', '.join(QUALITY)} and EPOCHS at least 1")
    return args


def default_epochs(scripts_dir, name):
    """The script's default --epochs, from its own parse_args (importing a script runs nothing)."""
    spec = importlib.util.spec_from_file_location(f"_defaults_{name}", Path(scripts_dir) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args([]).epochs


def checkpoint_epochs(args, name):
    if args.quick:
        return [1, 2]
    budget = args.budget.get(name) or default_epochs(args.scripts_dir, name)
    return [e for e in CHECKPOINTS if e < budget] + [budget]


def estimate_minutes(args, n_digits):
    """Rough minutes for the whole command on a 2-core CPU (training, plus ~20 s per checkpoint for generation)."""
    scale = n_digits / 10000
    total = 0.0
    if "quality" in args.only:
        for name in args.scripts:
            epochs = checkpoint_epochs(args, name)
            total += epochs[-1] * QUALITY[name]["sec_per_epoch"] * scale + 20 * len(epochs)
    if "losses" in args.only:  # the steps from the end of each quality run (or from 0) to 3750
        for name in CS231N_3750:
            done = checkpoint_epochs(args, name)[-1] * n_digits // 128 if name in args.scripts else 0
            total += max(0, STEP_3750 - done) * QUALITY[name]["sec_per_epoch"] / 78 + 10
    return total / 60


def export_pngs(images, folder):
    """Write uint8 digits (N, 28, 28) as 000000.png ... once (a 'complete' marker tells it was finished)."""
    folder = Path(folder)
    if (folder / "complete").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        torchvision.io.write_png(im.unsqueeze(0).contiguous(), str(folder / f"{i:06d}.png"))
    (folder / "complete").write_text(f"{len(images)}\n")
    return folder


def quality_run(name, args, data, ys, results):
    """Train name at its checkpoint epochs, generate and score at each; return the rows."""
    cfg = QUALITY[name]
    epochs = checkpoint_epochs(args, name)
    flags = cfg["flags"] + (QUICK_FLAGS[name] if args.quick else [])
    net_flags = NETWORK_FLAGS.get(name, []) + (QUICK_NETWORK_FLAGS.get(name, []) if args.quick else [])
    out = Path(args.runs) / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stdout_log = out / "stdout.txt"
    rows = []
    for k in epochs:
        common.run_script(f"{name}.py", "--data", data, "--out", out, "--epochs", k, "--log-every", 60, *flags,
                          *(["--resume"] if rows else []), log=stdout_log, scripts_dir=args.scripts_dir)
        last = common.read_log(out / "log.csv")[-1]
        gen_out = common.run_script(f"{name}.py", "--out", out, "--generate", args.generate, *net_flags,
                                    log=stdout_log, scripts_dir=args.scripts_dir)
        s = ys.score_folder(out / "generated", limit=args.generate)
        floor = ys.floor(s["n_fd"], size=64 if cfg.get("images") else None)
        rows.append(dict(script=name, epoch=k, steps=last["step"], time_s=round(last["time"], 1),
                         n_generated=s["n"], n_fd=s["n_fd"], distance=round(s["distance"], 3),
                         floor=round(floor, 3), confidence=round(s["confidence"], 4),
                         coverage=round(s["coverage"], 4), classes_covered=s["classes_covered"],
                         hist=json.dumps([round(h, 4) for h in s["hist"]]),
                         g_images_per_s=common.generated_rate(gen_out)))
        print(f"  {name} epoch {k}: step {last['step']}, {last['time']:.0f} s | distance {s['distance']:.2f} "
              f"(floor {floor:.2f}) | confidence {s['confidence']:.3f} | coverage {s['coverage']:.3f} "
              f"({s['classes_covered']}/10)", flush=True)
        if len(rows) == 1 and len(epochs) > 1:
            left = last["time"] / k * (epochs[-1] - k)
            print(f"  {name}: {last['time']:.0f} s for epoch 1, so about {left / 60:.0f} min of training to go",
                  flush=True)
    grids = sorted((out / "samples").glob("*.png"))
    shutil.copy(grids[-1], results / f"samples_{name}.png")
    if (out / "progress.gif").exists():                         # the scripts no longer animate their grids
        shutil.copy(out / "progress.gif", results / f"progress_{name}.gif")
    if name == "vanilla_gan" or not (results / "real_mnist.png").exists():
        shutil.copy(out / "real.png", results / "real_mnist.png")
    plot_losses(common.read_log(out / "log.csv"), results / f"losses_{name}.png", f"{name}.py (defaults)")
    return rows


def command_line(args):
    budget = " ".join(f"{k}={v}" for k, v in args.budget.items())
    return (f"python benchmarks/results.py --mnist {args.mnist}" + (" --quick" if args.quick else "")
            + (f" --only {' '.join(args.only)}" if len(args.only) < 2 else "")
            + (f" --scripts {' '.join(args.scripts)}" if len(args.scripts) < len(QUALITY) else "")
            + (f" --budget {budget}" if budget else ""))


def read_rows(path):
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def fmt_time(seconds):
    s = float(seconds)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def quality_markdown(rows, ys, args, machine):
    order = list(QUALITY)
    rows = sorted(rows, key=lambda r: (order.index(r["script"]), int(r["epoch"])))
    last = {r["script"]: r for r in rows}
    data_note = (f"the {ys.n_train + ys.n_ref} digits of the MNIST train split under `--mnist`; its test split holds "
                 "the same digits" if ys.same_digits else "the MNIST train split under `--mnist`")
    real = ys.real
    n_fd = int(rows[0]["n_fd"]) if rows else ys.h
    floor_text = f"{ys.floor(n_fd):.2f}"
    header = ["script", "epochs", "steps", "wall time", "distance (lower is better)", "real-vs-real floor",
              "confidence", "coverage", "classes >= 5%"]
    table = [[f"`{r['script']}.py`", r["epoch"], r["steps"], fmt_time(r["time_s"]), f"{float(r['distance']):.2f}",
              f"{float(r['floor']):.2f}", f"{float(r['confidence']):.3f}", f"{float(r['coverage']):.3f}",
              f"{r['classes_covered']}/10"] for r in last.values()]
    table.append(["real digits (half B)", "", "", "", floor_text, floor_text, f"{real['confidence']:.3f}",
                  f"{real['coverage']:.3f}", f"{real['classes_covered']}/10"])
    all_table = [[f"`{r['script']}.py`", r["epoch"], r["steps"], fmt_time(r["time_s"]), f"{float(r['distance']):.2f}",
                  f"{float(r['confidence']):.3f}", f"{float(r['coverage']):.3f}"] for r in rows]
    n_gen = rows[0]["n_generated"] if rows else args.generate
    lines = [
        "## Sample quality on MNIST\n",
        f"Machine: {common.machine_line(machine)}.\n",
        f"Data: {data_note}. The scripts train on all of them with their default settings (dcgan64.py on the same "
        "digits resized to 64x64, grayscale). "
        + ("Both splits holding the same digits is what a root gives when the 10,000 official test digits are copied "
           "into its train split; figures on the 60,000 training digits would differ. " if ys.same_digits else "")
        + f"Each checkpoint scores {n_gen} generated images with `benchmarks/mnist_quality.py`: {ys.describe()}. "
        f"Distance = Frechet distance of the classifier's 128-d features (n={n_fd} generated vs {n_fd} real, "
        f"against a fixed half of {ys.h} real digits); "
        "the floor is the same distance for real digits it never saw (for dcgan64.py: real digits resized to "
        "64x64 and back, as its images are). These are not Inception FIDs and are not comparable with them.\n",
        f"Command: `{command_line(args)}`\n",
        "### At the end of each budget\n",
        common.md_table(header, table),
        "### Quality against training time\n",
        common.md_table(["script", "epochs", "steps", "wall time", "distance", "confidence", "coverage"], all_table),
    ]
    if (Path(args.results) / "quality_vs_time.png").exists():
        lines.append("![quality against wall time](quality_vs_time.png)\n")
    lines.append("### Samples (fixed noise, last epoch) and real digits\n")
    cells = [f"![{s}](samples_{s}.png)" for s in last]
    lines.append(common.md_table([f"`{s}.py`" for s in last] + ["real"], [cells + ["![real](real_mnist.png)"]]))
    return "\n".join(lines)


def plot_quality(rows, path, floor):
    if not common.have_matplotlib():
        print("matplotlib is not installed: no quality_vs_time.png (pip install -r benchmarks/requirements.txt)")
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in QUALITY:
        rs = [r for r in rows if r["script"] == name]
        if not rs:
            continue
        t = [max(float(r["time_s"]), 1e-3) for r in rs]
        for ax, key in zip(axes, ("distance", "confidence", "coverage")):
            ax.plot(t, [float(r[key]) for r in rs], "o-", label=f"{name}.py")
            for x, r in zip(t, rs):
                ax.annotate(str(r["epoch"]), (x, float(r[key])), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].axhline(floor, color="gray", ls="--", label="real vs real")
    axes[0].set_yscale("log")
    axes[1].set_ylim(0, 1.02)
    axes[2].set_ylim(0, 1.02)
    for ax, title in zip(axes, ("Frechet distance (classifier features, lower is better)",
                                "mean classifier confidence", "class coverage (normalised entropy)")):
        ax.set_xscale("log")
        ax.set_xlabel("training wall time (s), labels = epochs")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(log, path, title):
    if not common.have_matplotlib() or not log:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in log]

    def smooth(key):
        v = torch.tensor([r[key] for r in log], dtype=torch.float64)
        w = min(SMOOTH, len(v))
        c = torch.cat([torch.zeros(1, dtype=torch.float64), v.cumsum(0)])
        return [(c[i + 1] - c[max(0, i + 1 - w)]).item() / min(i + 1, w) for i in range(len(v))]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, keys, names in ((axes[0], ("loss_d", "loss_g"), ("loss of D", "loss of G")),
                            (axes[1], ("d_real", "d_fake"), ("D(x)", "D(G(z))"))):
        for key, label in zip(keys, names):
            line, = ax.plot(steps, [r[key] for r in log], alpha=0.2, lw=0.6)
            ax.plot(steps, smooth(key), color=line.get_color(), label=f"{label} (mean of {SMOOTH} steps)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"{title}: losses", fontsize=10)
    axes[1].set_title(f"{title}: discriminator outputs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def losses_section(args, data, machine):
    """D and G losses at step 3750 (5 with --quick) with the CS231n notebook's settings, beside its numbers."""
    target = 5 if args.quick else STEP_3750
    results = Path(args.results)
    rows = []
    for name, (cs231n_d, cs231n_g) in CS231N_3750.items():
        quality_out, out = Path(args.runs) / name, Path(args.runs) / f"{name}_step{target}"
        reusable = False
        if (quality_out / "checkpoint.pt").is_file() and not args.quick:
            ck_args = torch.load(quality_out / "checkpoint.pt", map_location="cpu", weights_only=True)["args"]
            reusable = all(ck_args.get(k) == v for k, v in SETTINGS_3750.items())
        if reusable and common.read_log(quality_out / "log.csv")[-1]["step"] >= target:
            log, source = common.read_log(quality_out / "log.csv"), f"the quality run of `{name}.py`"
        else:
            # a quality run with these settings that stopped earlier is continued (resume is exact), else a new run
            if out.exists():
                shutil.rmtree(out)
            if reusable:
                shutil.copytree(quality_out, out, ignore=shutil.ignore_patterns("generated"))
            common.run_script(f"{name}.py", "--data", data, "--out", out, "--epochs", 100000, "--max-steps", target,
                              "--log-every", 60, *FLAGS_3750, *(QUICK_NETWORK_FLAGS.get(name, []) if args.quick else []),
                              *(["--resume"] if reusable else []), log=out.parent / f"{out.name}.txt",
                              scripts_dir=args.scripts_dir)
            log = common.read_log(out / "log.csv")
            source = (f"the quality run of `{name}.py`, continued by `--resume --max-steps {target}`" if reusable
                      else f"`{name}.py --max-steps {target}`")
        at = next(r for r in log if r["step"] == target)
        window = [r for r in log if target - SMOOTH < r["step"] <= target]
        mean_d = sum(r["loss_d"] for r in window) / len(window)
        mean_g = sum(r["loss_g"] for r in window) / len(window)
        rows.append([f"`{name}.py`", f"{cs231n_d}", f"{cs231n_g}", f"{at['loss_d']:.4f}", f"{at['loss_g']:.4f}",
                     f"{mean_d:.4f}", f"{mean_g:.4f}", source])
        print(f"  {name} step {target}: D {at['loss_d']:.4f} G {at['loss_g']:.4f} "
              f"(mean of steps {target - len(window) + 1}-{target}: D {mean_d:.4f} G {mean_g:.4f}); "
              f"CS231n: D {cs231n_d} G {cs231n_g}", flush=True)
    text = "\n".join([
        f"## Losses at iteration {target}, beside the CS231n GAN notebook\n",
        f"Machine: {common.machine_line(machine)}.\n",
        "Settings as in the Stanford CS231n GAN notebook: batch 128, Adam lr 1e-3, beta1 0.5, z of size 96 "
        "(N(0, I) here), its networks; data: the MNIST train split under `--mnist` (the notebook trained on MNIST's "
        "training digits). D's loss is the mean over real plus the mean over fake (LSGAN: half of each "
        "squared error), G's the non-saturating or least-squares loss, as in the notebook. One step's losses are "
        "noisy, so the mean of the "
        f"{SMOOTH} steps ending at {target} is given too.\n",
        f"Command: `{command_line(args)}`\n",
        common.md_table(["script", "CS231n: D", "CS231n: G", f"ours: D at {target}", f"ours: G at {target}",
                         f"ours: D, mean of {SMOOTH}", f"ours: G, mean of {SMOOTH}", "read from"], rows),
    ])
    (results / f"losses_{target}.md").write_text(text)
    print(f"wrote {results / f'losses_{target}.md'}")


def main(argv=None):
    args = parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    machine = common.machine_info()
    print(common.machine_line(machine))
    try:
        train_x, _ = mnist_quality.load_mnist(args.mnist, train=True)
    except (RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f"results.py: error: cannot read MNIST under {args.mnist}: {e}")
    if not args.quick:
        print(f"rough duration on a 2-core CPU with nothing else running: "
              f"{estimate_minutes(args, len(train_x)):.0f} min (much less on a GPU)", flush=True)
    t0 = time.perf_counter()
    data = str(Path(args.mnist).resolve())
    if "quality" in args.only:
        ys = mnist_quality.Yardstick(args.mnist, cache=args.cache, steps=30 if args.quick else
                                     mnist_quality.TRAIN_STEPS)
        print(ys.describe(), flush=True)
        csv_path = results / "quality.csv"
        rows = [r for r in read_rows(csv_path) if r["script"] not in args.scripts]
        for name in args.scripts:
            print(f"quality: {name}.py", flush=True)
            script_data = data
            if QUALITY[name].get("images"):
                key = mnist_quality.digest(train_x)[:12]
                script_data = str(export_pngs(train_x, Path(args.cache).parent / f"mnist-png-{key}"))
            rows += quality_run(name, args, script_data, ys, results)
            write_rows(csv_path, rows)
        plot_quality(rows, results / "quality_vs_time.png", ys.floor(int(rows[0]["n_fd"]) if rows else None))
        (results / "quality.md").write_text(quality_markdown(rows, ys, args, machine))
        print(f"wrote {results / 'quality.md'} and {csv_path}")
    if "losses" in args.only:
        print("losses at iteration 3750", flush=True)
        losses_section(args, data, machine)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
