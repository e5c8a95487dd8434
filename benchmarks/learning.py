"""Does it learn as well as pytorch/examples at equal steps and time, and how often does a run fail?

    python benchmarks/learning.py --examples ../examples --data ./data --seeds 1-3 \\
        --steps 1014 --score-at 234 468 780 1014 --ours default= amp=--amp
    python benchmarks/learning.py --examples ../examples --data ./lfw-128 --seeds 1-3 \\
        --steps 309 --score-at 206 --ours default=--amp "paper=--amp --lr-g 2e-4"

Time on a 2-core CPU: a step takes about 1.5 s for the peer and 1 s for dcgan64.py (faces: 2.4 s
and 1.1 s with --amp), a score a minute: about 2 hours a command; minutes on a GPU.

--data is an MNIST root (digits at 64x64, grayscale, scored by `quality.py digits`) or a folder
of faces, one folder per person (scored by `quality.py faces`). Both train the DCGAN networks
(ngf = ndf = 64, z of 100) on the same images cut to whole batches of 128, --workers each. The
peer, dcgan/main.py of the checkout, runs unmodified (--dataset mnist, or folder on links to the
photos) and is ended after --steps; it saves G at epoch ends only, so it is scored at the
--score-at steps that end an epoch. dcgan64.py runs each --ours variant (NAME=FLAGS) to each
--score-at step (--max-steps, then --resume). Score: --generate samples from the same z in fp32,
BatchNorm on batch statistics as both sample, against real images (lower is better; the floor is
real images'). Wall time: end of step N minus end of step 1 (log.csv; the peer's step lines).
Dead: the median of D(G(z)) over the last --window steps below --dead-below; the failure rate
with its 95% Clopper-Pearson interval (on faces, runs with one lr swing past step 100, then settle:
judge them after 200). Runs stay in --work. Writes results/<--name>.{md,csv,png}, <--name>/ grids.
"""

import math
import shlex
import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.utils import save_image

import common
import dcgan64  # noqa: E402 (common puts the scripts on sys.path)
import quality

PEER = "peer"
COLUMNS = ["run", "flags", "seed", "step", "wall_s", "distance", "floor", "outcome", "d_fake_end"]


def seeds(text):
    """ "1-16" -> [1, ..., 16], "7" -> [7]"""
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def parse_args(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--examples", help="a checkout of github.com/pytorch/examples: the peer")
    p.add_argument("--data", required=True, help="MNIST root (./data) or a folder of face photos")
    p.add_argument("--ours", nargs="+", default=["default="], help="NAME=FLAGS of dcgan64.py")
    p.add_argument("--script", default="dcgan64.py", help="ours: dcgan64.py or a copy of it")
    p.add_argument("--seeds", nargs="+", type=seeds, default=[[1]], help="e.g. 1-16 20")
    p.add_argument("--peer-seeds", nargs="*", type=seeds, help="default: --seeds; none: no peer")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each run")
    p.add_argument("--score-at", nargs="*", type=int, help="score at these steps and --steps")
    p.add_argument("--generate", type=int, default=2000, help="samples scored at each step")
    p.add_argument("--window", type=int, default=40, help="dead: D(G(z)) over WINDOW last steps")
    p.add_argument("--dead-below", type=float, default=0.015, help="... has a median below this")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of each run")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    p.add_argument("--name", help="of the results (default: learning_digits or learning_faces)")
    p.add_argument("--work", help="run folders (default: benchmarks/runs/<--name>)")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    args = p.parse_args(argv)
    args.faces = not (Path(args.data) / "MNIST" / "raw").is_dir()
    args.name = args.name or f"learning_{'faces' if args.faces else 'digits'}"
    args.work = Path(args.work or common.BENCH / "runs" / args.name)
    args.seeds = sorted({s for group in args.seeds for s in group})
    peer = args.seeds if args.peer_seeds is None else [s for g in args.peer_seeds for s in g]
    args.peer_seeds = sorted(set(peer))
    args.score_at = sorted(set(args.score_at or []) | {args.steps})
    args.ours = dict(v.partition("=")[::2] for v in args.ours)
    args.main_py = Path(args.examples or "").resolve() / "dcgan" / "main.py"
    if args.peer_seeds and not args.main_py.is_file():
        p.error(f"--examples {args.examples} holds no dcgan/main.py (or give --peer-seeds alone)")
    return args


# ---- data, runs ---------------------------------------------------------------------------------
def prepare(args):
    """The images in whole batches: (the peer's flags, our --data, steps an epoch)."""
    root = args.work / "data"
    if args.faces:
        n, _ = common.link_photos(args.data, root, multiple=128)
        return ["--dataset", "folder", "--dataroot", root], root / "photos", n // 128
    images, labels = quality.load_mnist(args.data, train=True)
    n = len(images) // 128 * 128
    common.write_mnist(root, digits=(images[:n], labels[:n]))
    pngs = common.export_pngs(images[:n], root / "png")
    return ["--dataset", "mnist", "--dataroot", root], pngs, n // 128


def train_peer(out, seed, data, name, epoch, args):
    """dcgan/main.py to --steps; yields (step, G, wall seconds) at the --score-at epoch ends."""
    flags = [*data[0], "--batchSize", 128, "--workers", args.workers, "--outf", out]
    flags += ["--niter", args.steps // epoch + 1, "--manualSeed", seed]
    log = common.run_peer(args.main_py, flags, args.steps, out / "stdout.txt")
    common.write_csv(out / "log.csv", log, common.LOG_COLUMNS)
    for step in (s for s in args.score_at if s % epoch == 0):
        state = torch.load(out / f"netG_epoch_{step // epoch - 1}.pth", weights_only=True)
        G = generator(args)
        G.load_state_dict({k.removeprefix("main."): v for k, v in state.items()})  # main.K: net.K
        yield step, G, log[step - 1]["time"]


def train_ours(out, seed, data, name, epoch, args):
    """dcgan64.py to each --score-at step in turn; yields (step, G, wall seconds)."""
    channels = ["--channels", 3 if args.faces else 1]
    for i, step in enumerate(args.score_at):
        common.run_script(
            args.script, "--data", data[1], *channels, "--out", out, "--seed", seed,
            "--batch-size", 128, "--workers", args.workers, "--epochs", 10**6, "--max-steps", step,
            "--log-every", 60, *shlex.split(args.ours[name]), *["--resume"] * bool(i),
            log=out / "stdout.txt",
        )  # fmt: skip
        times = {r["step"]: r["time"] for r in common.read_log(out / "log.csv")}
        G = generator(args)
        G.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["G"])
        yield step, G, times[step] - times[1]


def generator(args):
    return dcgan64.Generator(channels=3 if args.faces else 1)


def draw(G, n, batch=500):
    """n samples (uint8, as --generate's PNGs hold them) from the same z for every G, in fp32."""
    rng, chunks = torch.Generator().manual_seed(0), []
    for start in range(0, n, batch):  # BatchNorm on the statistics of batches of up to 500
        x = dcgan64.sample(G, torch.randn(min(batch, n), 100, 1, 1, generator=rng))[: n - start]
        chunks.append(((x + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def run(job, data, epoch, args, ys):
    """One run: trained, scored at --score-at, classified from its log; its rows."""
    name, seed = job
    out = args.work / f"{name}_seed{seed}"
    shutil.rmtree(out, ignore_errors=True)  # the scripts make it anew
    train = train_peer if name == PEER else train_ours
    points = train(out, seed, data, name, epoch, args)
    rows = []
    for step, G, wall in points:
        row = dict(run=name, flags=args.ours.get(name, ""), seed=seed, step=step)
        row["wall_s"] = round(wall, 1)
        if args.generate:
            images = draw(G, args.generate)
            grid = Path(args.results) / args.name / f"{name}_seed{seed}_step{step}.png"
            grid.parent.mkdir(parents=True, exist_ok=True)
            save_image(images[:64].float() / 255, grid, nrow=8)
            s = ys.score(images)
            floor = ys.floor(s["n_fd"], size=None if args.faces else 64)
            row.update(distance=round(s["distance"], 2), floor=round(floor, 2))
        rows.append(row)
    log = common.read_log(out / "log.csv")[: args.steps]
    if not rows or rows[-1]["step"] != args.steps:  # the peer's last step, between its epoch ends
        wall = log[-1]["time"] - log[0]["time"]
        rows.append(dict(run=name, flags="", seed=seed, step=args.steps, wall_s=round(wall, 1)))
    d_fake = statistics.median(r["d_fake"] for r in log[-args.window :])
    dead = "dead" if d_fake < args.dead_below else "alive"
    return [{**r, "outcome": dead, "d_fake_end": round(d_fake, 4)} for r in rows]


# ---- the report ---------------------------------------------------------------------------------
def clopper_pearson(k, n, level=0.95):
    """Exact binomial interval for k successes of n, by bisection on the binomial tail."""

    def tail(p, upper):  # P(X >= k) or P(X <= k) for X ~ Bin(n, p)
        ks = range(k, n + 1) if upper else range(0, k + 1)
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in ks)

    def solve(upper):
        lo, hi = 0.0, 1.0
        for _ in range(60):  # tail(p, True) rises with p, tail(p, False) falls
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (tail(mid, upper) < (1 - level) / 2) == upper else (lo, mid)
        return (lo + hi) / 2

    return (solve(True) if k else 0.0), (solve(False) if k < n else 1.0)


def by(rows, *keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def report(rows, args, describe):
    """The two tables: quality at each step (and wall time), failures per variant."""
    order = lambda key: (key[0] != PEER, key[0], *key[1:])  # noqa: E731
    learning = []
    for (name, step), rs in sorted(by(rows, "run", "step").items(), key=lambda kv: order(kv[0])):
        d = [float(r["distance"]) for r in rs if r.get("distance", "") != ""]
        wall = statistics.median(float(r["wall_s"]) for r in rs)
        mean = f"{statistics.mean(d):.1f}" if d else ""
        learning.append([name, step, f"{wall:.0f}", mean, " / ".join(f"{x:.1f}" for x in d)])
    failures = []
    for (name, flags), rs in sorted(by(rows, "run", "flags").items(), key=lambda kv: order(kv[0])):
        last = [r for r in rs if int(r["step"]) == max(int(x["step"]) for x in rs)]
        dead = sorted(int(r["seed"]) for r in last if r["outcome"] == "dead")
        lo, hi = clopper_pearson(len(dead), len(last))
        alive = [float(r["distance"] or "nan") for r in last if r["outcome"] == "alive"]
        alive = [x for x in alive if x == x]  # scored
        spread = alive and f"{statistics.mean(alive):.0f} ({min(alive):.0f}-{max(alive):.0f})"
        failures.append([name, f"`{flags}`" if flags else "", len(last), len(dead),
                         f"{len(dead) / len(last):.0%} [{lo:.0%}, {hi:.0%}]",
                         ", ".join(map(str, dead)) or "none", spread or ""])  # fmt: skip
    data = "faces" if args.faces else "MNIST digits at 64x64, grayscale"
    return "\n".join([
        f"## dcgan64.py and pytorch/examples' dcgan/main.py on {data}\n",
        f"Machine: {common.machine_line()}.\n",
        f"Command: `python benchmarks/learning.py --data {args.data} ...` (runs: one command per "
        f"variant or seed range; the tables are written from every run in {args.work}).\n",
        f"Batch 128, fp32 unless the flags say otherwise. Scores: {describe}; lower is better. "
        f"Dead: the median of D(G(z)) over the last {args.window} steps below {args.dead_below}.\n",
        "### Quality at equal steps and wall time\n",
        common.md_table(["run", "step", "wall s", "distance (mean)", "per seed"], learning),
        "### Runs that fail from the start\n",
        common.md_table(["run", "flags", "seeds", "dead", "failure rate [95%]", "dead seeds",
                         "distance at the end, alive: mean (range)"], failures),
    ])  # fmt: skip


def plot(path, rows):
    """Distance (mean over the seeds) against steps and against wall time (median)."""
    curves = {}
    for (name,), rs in by([r for r in rows if r.get("distance")], "run").items():
        points = sorted(by(rs, "step").items())
        mean = [statistics.mean(float(r["distance"]) for r in p) for _, p in points]
        wall = [statistics.median(float(r["wall_s"]) for r in p) for _, p in points]
        curves[f"{name} ({len(points[0][1])} seeds)"] = [s for (s,), _ in points], wall, mean
    floor = float(rows[0].get("floor") or "nan")
    panels = [(label, "distance (lower is better)", {k: (c[i], c[2]) for k, c in curves.items()},
               floor) for i, label in enumerate(["steps (batch 128)", "wall time, s"])]  # fmt: skip
    common.plot(path, panels, "dcgan64.py and pytorch/examples' dcgan/main.py")


def main(argv=None):
    args = parse_args(argv)
    print(common.machine_line(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    epoch = data[2]
    kept = args.work / f"rows_steps{args.steps}.csv"
    rows = common.read_csv(kept) if kept.is_file() else []
    done = {(r["run"], int(r["seed"])) for r in rows}
    jobs = [(PEER, s) for s in args.peer_seeds] + [(v, s) for v in args.ours for s in args.seeds]
    ys = args.generate and quality.Yardstick("faces" if args.faces else "digits", args.data)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, job, data, epoch, args, ys) for job in jobs if job not in done]
        for future in futures:
            rows += future.result()
            common.write_csv(kept, rows, COLUMNS)
            print(rows[-1], flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "step": int(r["step"]), "seed": int(r["seed"])} for r in common.read_csv(kept)]
    common.write_csv(results / f"{args.name}.csv", rows, COLUMNS)
    describe = ys.describe() if ys else "none (--generate 0)"
    (results / f"{args.name}.md").write_text(report(rows, args, describe))
    if any(r.get("distance") for r in rows):
        plot(results / f"{args.name}.png", rows)
    print((results / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
