"""How often dcgan64.py and pytorch/examples' dcgan/main.py fail from the start on the MNIST digits at 64x64.

    git clone https://github.com/pytorch/examples ../examples
    python benchmarks/failure_rate.py --examples ../examples --mnist ./data --seeds 1-16 --peer-seeds 1-16
    python benchmarks/failure_rate.py --examples ../examples --mnist ./data --seeds 1-16 --peer-seeds \\
        --variant fixed --ours ../study/dcgan64_fixed.py          # the same measurement of a changed script
    python benchmarks/failure_rate.py ... --variant paper --flags="--lr-g 2e-4"   # extra flags for our runs

Both train the 1x64x64 networks (z of 100, ngf = ndf = 64) in fp32 with batch 128 on the same 9,984 digits (an
epoch is 78 steps), each seed for --steps optimizer steps, OMP_NUM_THREADS=--threads each and --jobs runs at a
time. The peer runs unmodified (`--dataset mnist`, CPU); it has no step limit, so it is stopped once its output
shows step --steps + 1 (its sample grid of the first batch of an epoch is then written). Ours (--ours, default
the repo's dcgan64.py) runs with --cache --workers 0 --max-steps --steps.

A run is DEAD when D(G(z)) (our log.csv's d_fake; the peer's first D(G(z)) value, taken during D's step like
ours) has a median below --dead-below over its last --window steps (the median, so that the single steps where G
fools D in a dead or collapsed run do not count): D tells (nearly) every fake apart; the results say
how the criterion was checked against the sample grids.
Failure rate: dead runs / runs, with a 95% Clopper-Pearson interval. The early-warning rule (--warn-*) is
evaluated on every run: D(G(z)) averaged over the last --warn-window steps below --warn-below at any step from
--warn-from on; its margins are the statistic's lowest value over alive runs (any step from --warn-from to
--steps) and its highest over dead runs (lowest value up to --warn-by).
How far each of our runs got: benchmarks/mnist_quality.py's distance of --score samples of its last G (the same z
for every run, BatchNorm on the batch's statistics) to real digits; lower is better. The table gives the mean over
the alive runs of a variant, to compare how fast variants learn at equal steps. The peer's runs are not scored: they
keep no G at step --steps.

Writes results/failure_rate.{md,csv} (one row per run) and each run's last sample grid, cropped to its first 64
samples and halved, as results/failure_rate/<variant>_seed<S>_steps<N>_threads<T>.png. Finished runs are kept in --work (rows.csv and
a folder per run) and not trained again, so the command can be re-run to add seeds or variants, also while
another is running (rows.csv is appended to). Text below a
`## Notes` line of an existing failure_rate.md is kept.
"""
import argparse
import csv
import functools
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import learning_dcgan64  # noqa: E402
import mnist_quality  # noqa: E402

PEER = "peer"
PEER_LINE = re.compile(r"^\[(\d+)/\d+\]\[(\d+)/(\d+)\] Loss_D: (\S+) Loss_G: (\S+) D\(x\): (\S+) "
                       r"D\(G\(z\)\): (\S+) / \S+")
LOG_COLUMNS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake"]
COLUMNS = ["implementation", "variant", "script", "flags", "seed", "steps", "threads", "outcome", "d_fake_end", "d_real_end",
           "loss_g_end", "warn_step", "warn_low", "alive_low", "distance"]
NOTES = "\n## Notes"


def seeds(text):
    """'1-4' or '7' -> [1, 2, 3, 4] or [7]"""
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", required=True, help="a checkout of github.com/pytorch/examples")
    p.add_argument("--mnist", required=True, help="torchvision MNIST root (MNIST/raw/), e.g. ./data")
    p.add_argument("--ours", default=str(common.REPO / "dcgan64.py"), help="our script (a changed copy to compare)")
    p.add_argument("--variant", default="default", help="name of our runs in the tables")
    p.add_argument("--flags", default="", help="extra flags for our runs, one string")
    p.add_argument("--seeds", nargs="*", type=seeds, default=[list(range(1, 17))], help="our seeds, e.g. 1-16")
    p.add_argument("--peer-seeds", nargs="*", type=seeds, help="the peer's seeds (default: --seeds; none: no peer)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each run")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    p.add_argument("--window", type=int, default=40, help="dead: D(G(z)) over the last WINDOW steps ...")
    p.add_argument("--dead-below", type=float, default=0.015, help="... has a median below this")
    p.add_argument("--warn-window", type=int, default=20, help="early warning: D(G(z)) over WINDOW steps ...")
    p.add_argument("--warn-below", type=float, default=0.02, help="... averages below this ...")
    p.add_argument("--warn-from", type=int, default=100, help="... at a step from this one on")
    p.add_argument("--warn-by", type=int, default=130, help="a dead run must be warned of by this step")
    p.add_argument("--score", type=int, default=2000, help="samples of each of our runs' last G scored (0: none)")
    p.add_argument("--work", default=str(common.BENCH / "runs" / "failure_rate"), help="run folders")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    args = p.parse_args(argv)
    args.seeds = sorted({s for group in args.seeds for s in group})
    args.peer_seeds = args.seeds if args.peer_seeds is None else sorted({s for g in args.peer_seeds for s in g})
    return args


# ---- the runs -----------------------------------------------------------------------------------------------
def parse_peer(lines):
    """The peer's per-step lines -> rows of LOG_COLUMNS (1-based steps across epochs)."""
    rows = []
    for line in lines:
        if m := PEER_LINE.match(line):
            epoch, i, n = int(m[1]), int(m[2]), int(m[3])
            rows.append(dict(zip(LOG_COLUMNS, [epoch * n + i + 1, epoch + 1, *map(float, m.groups()[3:])])))
    return rows


def train_peer(main_py, root, out, seed, args, env):
    """dcgan/main.py until its line of step --steps + 1; its log.csv; the grid of step --steps' epoch."""
    cmd = [sys.executable, str(main_py), "--dataset", "mnist", "--dataroot", str(root), "--batchSize", "128",
           "--workers", "2", "--niter", str(args.steps // 78 + 2), "--outf", str(out), "--manualSeed", str(seed)]
    lines = []
    with subprocess.Popen(cmd, cwd=main_py.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**env, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:                                # stderr too: one pipe cannot fill up unread
            lines.append(line)
            if [r for r in parse_peer([line]) if r["step"] > args.steps]:
                proc.terminate()                                # step --steps is done, and the grid before it
                break
    (out / "stdout.txt").write_text("".join(lines))
    log = parse_peer(lines)
    if len(log) <= args.steps:
        raise common.ScriptFailed(f"{' '.join(cmd)} stopped at step {len(log)}:\n{''.join(lines[-10:])}")
    write_log(out / "log.csv", log[:args.steps])
    return out / f"fake_samples_epoch_{log[args.steps - 1]['epoch'] - 1:03d}.png"  # written before step + 1


def train_ours(pngs, out, seed, args, env):
    """--ours until step --steps; its log.csv and newest sample grid."""
    with open(out / "stdout.txt", "w") as log:
        subprocess.run([sys.executable, args.ours, "--data", pngs, "--channels", "1", "--cache", "--out", out,
                        "--batch-size", "128", "--seed", str(seed), "--max-steps", str(args.steps), "--epochs",
                        "1000000", "--log-every", "60", "--workers", "0", *shlex.split(args.flags)], check=True,
                       env=env, stdout=log, stderr=subprocess.STDOUT)
    return max((out / "samples").glob("*.png"), key=os.path.getmtime)


def write_log(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def small_grid(src, dst):
    """The grid's first 8 rows (64 samples; the peer's holds 128), gray, at half size."""
    grid = torchvision.io.decode_image(str(src), mode=torchvision.io.ImageReadMode.GRAY)
    grid = grid[:, :grid.shape[2]]
    torchvision.io.write_png(TF.resize(grid, [grid.shape[1] // 2], antialias=True), str(dst))


# ---- classification -----------------------------------------------------------------------------------------
def window_means(d_fake, w):
    """{step: mean of d_fake over steps step-w+1 .. step} for every step with w steps before it (1-based)."""
    return {i + 1: sum(d_fake[i + 1 - w:i + 1]) / w for i in range(w - 1, len(d_fake))}


def classify(log, steps, args):
    """The statistics of one run's log (rows with step, d_fake, d_real, loss_g) up to `steps`."""
    log = log[:steps]
    tail = log[-args.window:]
    end = {k: statistics.median(r[k] for r in tail) for k in ("d_fake", "d_real", "loss_g")}
    warn = {s: v for s, v in window_means([r["d_fake"] for r in log], args.warn_window).items()
            if s >= args.warn_from}
    fired = [s for s, v in warn.items() if v < args.warn_below]
    return dict(outcome="dead" if end["d_fake"] < args.dead_below else "alive",
                d_fake_end=round(end["d_fake"], 5), d_real_end=round(end["d_real"], 5),
                loss_g_end=round(end["loss_g"], 3), warn_step=fired[0] if fired else "",
                warn_low=round(min(v for s, v in warn.items() if s <= args.warn_by), 5),
                alive_low=round(min(warn.values()), 5))


@functools.cache
def script_module(path):
    """The script a run was trained with, as it was then (a copy of dcgan64.py may differ from the repo's)."""
    spec = importlib.util.spec_from_file_location(f"ours_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distance(row, args, yardstick):
    """mnist_quality's distance of --score samples of our run's last G, kept in the run folder once computed."""
    done = Path(args.work) / run_name(row) / "score.json"
    if row["implementation"] == PEER or not args.score:
        return ""
    if not done.is_file():
        G = script_module(row["script"]).Generator(channels=1)
        G.load_state_dict(torch.load(done.parent / "checkpoint.pt", map_location="cpu", weights_only=True)["G"])
        done.write_text(json.dumps(yardstick().score(learning_dcgan64.draw(G, args.score, 500))))
    return round(json.loads(done.read_text())["distance"], 1)


def clopper_pearson(k, n, level=0.95):
    """Exact binomial interval for k successes of n, by bisection on the binomial tail (no scipy)."""
    def tail(p, upper):                                         # P(X >= k) or P(X <= k) for X ~ Bin(n, p)
        ks = range(k, n + 1) if upper else range(0, k + 1)
        return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in ks)

    def solve(upper):
        lo, hi = 0.0, 1.0
        for _ in range(60):                                     # tail(p, True) rises with p, tail(p, False) falls
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (tail(mid, upper) < (1 - level) / 2) == upper else (lo, mid)
        return (lo + hi) / 2
    return (solve(True) if k else 0.0), (solve(False) if k < n else 1.0)


# ---- bookkeeping and the report -----------------------------------------------------------------------------
def read_rows(path):
    """The runs recorded in path, the last row of each (variant, seed, steps, threads)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:                           # columns added since the header was written
        return list({key(r): {k: v for k, v in r.items() if k is not None} for r in csv.DictReader(f)}.values())


def key(row):
    return row["variant"], int(row["seed"]), int(row["steps"]), int(row["threads"])


def write_rows(path, rows, mode="w"):
    """rows to path; mode "a" appends them (the header when the file is new): commands may run side by side."""
    new = mode == "w" or not path.is_file()
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["implementation"] == PEER, r["variant"], int(r["seed"]))))


def summary(rows):
    """[implementation, variant, flags, steps, threads, seeds, dead, rate with interval, dead seeds] per group."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in ("implementation", "variant", "flags", "steps", "threads")), []).append(r)
    table = []
    for (impl, variant, flags, steps, threads), rs in sorted(groups.items()):
        dead = sorted(int(r["seed"]) for r in rs if r["outcome"] == "dead")
        lo, hi = clopper_pearson(len(dead), len(rs))
        scores = [float(r["distance"]) for r in rs if r["outcome"] == "alive" and r.get("distance")]
        table.append([impl, variant, f"`{flags}`" if flags else "", len(rs), len(dead),
                      f"{len(dead) / len(rs):.0%} [{lo:.0%}, {hi:.0%}]", steps, threads,
                      ", ".join(map(str, dead)) or "none",
                      f"{statistics.mean(scores):.0f} ({min(scores):.0f}-{max(scores):.0f})" if scores else ""])
    return table


def write_markdown(path, rows, args, capabilities):
    notes = path.read_text().partition(NOTES)[2] if path.is_file() else ""
    with open(path, "w") as f:
        f.write("## How often a DCGAN at 64x64 fails from the start: dcgan64.py and pytorch/examples on MNIST\n\n")
        f.write(f"Machine: {common.machine_line({**common.machine_info(), 'torch_threads': args.threads})}.\n\nCPU capabilities: {capabilities}.\n\n")
        f.write(f"Tables written by: `python benchmarks/failure_rate.py --examples ../examples --mnist ./data "
                f"--window {args.window} --dead-below {args.dead_below} --warn-window {args.warn_window} --warn-below "
                f"{args.warn_below} --warn-from {args.warn_from} --warn-by {args.warn_by}` (runs: a command per "
                f"--variant, --ours, --flags, --steps). 9,984 MNIST digits at 64x64, batch 128, fp32, {args.jobs} runs at "
                f"a time with OMP_NUM_THREADS as in the table. Dead: the median of D(G(z)) below {args.dead_below} over "
                f"the last {args.window} steps. Rate: dead / seeds with its 95% Clopper-Pearson interval.\n\n")
        f.write(common.md_table(["implementation", "variant", "flags", "seeds", "dead", "failure rate [95%]",
                                 "steps", "threads", "dead seeds", "distance, alive: mean (range)"], summary(rows)))
        f.write(f"\nEarly warning: D(G(z)) averaged over the last {args.warn_window} steps below {args.warn_below} "
                f"at any step from {args.warn_from} on. Per variant: the statistic's lowest value over alive runs (step "
                f"{args.warn_from} to their last), the highest over dead runs of their lowest value up to step "
                f"{args.warn_by}, and the runs it fired on.\n\n")
        for variant in sorted({r["variant"] for r in rows}):
            alive = [r for r in rows if r["variant"] == variant and r["outcome"] == "alive"]
            dead = [r for r in rows if r["variant"] == variant and r["outcome"] == "dead"]
            f.write(f"- {variant}: lowest alive {min((float(r['alive_low']) for r in alive), default=math.nan):.4f}, "
                    f"highest dead {max((float(r['warn_low']) for r in dead), default=math.nan):.4f}; fired on "
                    f"{sum(bool(r['warn_step']) for r in dead)}/{len(dead)} dead runs and "
                    f"{sum(bool(r['warn_step']) for r in alive)}/{len(alive)} alive runs.\n")
        f.write(f"{NOTES}{notes}" if notes else "")


def run_name(row):
    return f"{row['variant']}_seed{row['seed']}_steps{row['steps']}_threads{row['threads']}"


def with_stats(row, args, yardstick):
    """A run's row with the statistics of its log.csv (the criterion is applied anew whenever tables are written)
    and its score."""
    log = common.read_log(Path(args.work) / run_name(row) / "log.csv")
    return {**row, **classify(log, int(row["steps"]), args), "distance": distance(row, args, yardstick)}


def run(job, args, root, pngs, main_py, env, yardstick):
    impl, seed = job
    row = dict(implementation=impl, variant=PEER if impl == PEER else args.variant,
               script=main_py if impl == PEER else Path(args.ours).resolve(), flags="" if impl == PEER else args.flags, seed=seed, steps=args.steps, threads=args.threads)
    out = Path(args.work) / run_name(row)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    grid = train_peer(main_py, root, out, seed, args, env) if impl == PEER else train_ours(pngs, out, seed, args, env)
    small_grid(grid, Path(args.results) / "failure_rate" / f"{out.name}.png")
    return with_stats(row, args, yardstick)


def main(argv=None):
    args = parse_args(argv)
    main_py = (Path(args.examples) / "dcgan" / "main.py").resolve()
    if args.peer_seeds and not main_py.is_file():
        raise SystemExit(f"failure_rate.py: error: no dcgan/main.py in {args.examples}")
    capabilities = ", ".join(k for k, v in torch.cpu.get_capabilities().items() if v is True
                             and k.startswith(("avx", "amx")))
    print(common.machine_line(), f"\nCPU capabilities: {capabilities}", flush=True)
    work, res = Path(args.work), Path(args.results)
    (res / "failure_rate").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    root, pngs, _ = learning_dcgan64.prepare_digits(args.mnist, work, 128)
    done = {key(r) for r in read_rows(work / "rows.csv")}
    jobs = [(impl, s) for impl, ss in (("dcgan64.py", args.seeds), (PEER, args.peer_seeds)) for s in ss
            if ((PEER if impl == PEER else args.variant), s, args.steps, args.threads) not in done]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    yardstick = functools.cache(lambda: mnist_quality.Yardstick(args.mnist))  # made on first use
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in as_completed([pool.submit(run, job, args, root, pngs, main_py, env, yardstick) for job in jobs]):
            row = future.result()
            print(" ".join(f"{k}={row[k]}" for k in ("variant", "seed", "outcome", "d_fake_end", "warn_step")),
                  flush=True)
            write_rows(work / "rows.csv", [row], mode="a")
    rows = [with_stats(r, args, yardstick) for r in read_rows(work / "rows.csv")]
    write_rows(res / "failure_rate.csv", rows)
    write_markdown(res / "failure_rate.md", rows, args, capabilities)
    print((res / "failure_rate.md").read_text())


if __name__ == "__main__":
    main()
