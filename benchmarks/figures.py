"""The README's figures of the MNIST scripts: sample quality against training time, and samples.

    python benchmarks/figures.py --mnist ./data          # ./data: where the MNIST scripts put MNIST

Time: about 40 min on a 2-core CPU with --budget dcgan64=1 (its default 5 epochs add 15 more),
a few minutes on a GPU; the first lines print an estimate.

vanilla_gan.py, lsgan.py and dcgan_mnist.py train on the MNIST train split with their defaults,
and dcgan64.py on the same digits as 28x28 PNGs (--channels 1; it resizes them to 64x64), each
through its command line into benchmarks/runs/<script>/. Each stops after 1, 2, 5, 10, 20, 50, ...
epochs up to its default --epochs (--budget SCRIPT=EPOCHS to change; --resume continues), writes
--generate 5000 images and scores them with `quality.py digits`. Wall time: log.csv's `time` at
the last step (training only). The speed and learning figures come from speed.py and learning.py.
Writes results/quality.md, quality.csv, quality_vs_time.png, samples_<script>.png (the last
fixed-noise grid) and real_mnist.png.
"""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path


import common
import quality

CHECKPOINTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
SCRIPTS = {
    "vanilla_gan": 4,
    "lsgan": 4,
    "dcgan_mnist": 26,
    "dcgan64": 400,
}  # s an epoch, 2-core CPU
QUICK = {"vanilla_gan": ["--g-hidden", "32", "--d-hidden", "32"], "dcgan64": ["--ngf", "8"]}
QUICK["lsgan"], QUICK["dcgan64"] = QUICK["vanilla_gan"], ["--ngf", "8", "--ndf", "8"]
COLUMNS = ["script", "epoch", "steps", "time_s", "n_fd", "distance", "floor", "confidence"]
COLUMNS += ["coverage", "classes_covered", "hist"]


def parse_args(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--mnist", required=True, help="torchvision MNIST root, e.g. ./data")
    p.add_argument("--scripts", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    p.add_argument("--budget", nargs="+", default=[], metavar="SCRIPT=EPOCHS")
    p.add_argument("--generate", type=int, help="images scored at each checkpoint (5000)")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    p.add_argument("--runs", default=str(common.BENCH / "runs"), help="the scripts' run folders")
    p.add_argument("--cache", help="the digit classifier's cache file")
    p.add_argument("--scripts-dir", default=str(common.REPO), help="folder holding the scripts")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny networks, epochs 1 and 2")
    args = p.parse_args(argv)
    args.generate = args.generate or (64 if args.quick else 5000)
    try:
        args.budget = {k: int(v) for k, v in (b.split("=") for b in args.budget)}
    except ValueError:
        p.error("--budget takes SCRIPT=EPOCHS, e.g. --budget dcgan64=2")
    return args


def checkpoint_epochs(args, name):
    """1, 2, 5, ... below the budget (the script's own default --epochs unless told), and it."""
    if args.quick:
        return [1, 2]
    if name not in args.budget:
        path = Path(args.scripts_dir) / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_defaults_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # importing a script runs nothing
        args.budget[name] = module.parse_args([]).epochs
    return [e for e in CHECKPOINTS if e < args.budget[name]] + [args.budget[name]]


def quality_run(name, data, ys, args):
    """Train name to each checkpoint epoch in turn, generate and score; its rows."""
    out, rows = Path(args.runs) / name, []
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    flags = (["--channels", "1"] if name == "dcgan64" else []) + QUICK.get(name, []) * args.quick
    train = (["--batch-size", "16"] + ["--workers", "0"] * (name == "dcgan64")) * args.quick
    train += ["--cache"] * (name == "dcgan64")
    for epochs in checkpoint_epochs(args, name):
        run = ["--data", data, "--out", out, "--epochs", epochs, "--log-every", 60, *flags, *train]
        common.run_script(f"{name}.py", *run, *["--resume"] * bool(rows),
                          log=out / "stdout.txt", scripts_dir=args.scripts_dir)  # fmt: skip
        common.run_script(f"{name}.py", "--out", out, "--generate", args.generate, *flags,
                          log=out / "stdout.txt", scripts_dir=args.scripts_dir)  # fmt: skip
        last = common.read_log(out / "log.csv")[-1]
        s = ys.score(quality.read_folder(out / "generated", 1, args.generate))
        floor = ys.floor(s["n_fd"], size=64 if name == "dcgan64" else None)
        row = {**s, "floor": round(floor, 3), "hist": json.dumps([round(h, 4) for h in s["hist"]])}
        rows.append({**row, "script": name, "epoch": epochs, "steps": last["step"]})
        rows[-1]["time_s"] = round(last["time"], 1)
        print(quality.format_scores(f"  {name} epoch {epochs}, {last['time']:.0f} s", s))
    results = Path(args.results)
    shutil.copy(sorted((out / "samples").glob("*.png"))[-1], results / f"samples_{name}.png")
    if name == "vanilla_gan" or not (results / "real_mnist.png").exists():
        shutil.copy(out / "real.png", results / "real_mnist.png")
    return rows


def markdown(rows, ys, command):
    real = {**ys.real, "epoch": "", "steps": "", "time_s": "", "floor": ys.floor(ys.real["n_fd"])}
    name = lambda r: "real digits (half B)" if r is real else f"`{r['script']}.py`"  # noqa: E731
    table = [[name(r), r["epoch"], r["steps"], r["time_s"] and f"{float(r['time_s']):.0f} s",
              *(f"{float(r[k]):.2f}" for k in ("distance", "floor")),
              *(f"{float(r[k]):.3f}" for k in ("confidence", "coverage")),
              f"{r['classes_covered']}/10"] for r in [*rows, real]]  # fmt: skip
    header = ["script", "epochs", "steps", "wall time", "distance", "floor", "confidence"]
    names = list(dict.fromkeys(r["script"] for r in rows))
    samples = [f"![{s}](samples_{s}.png)" for s in names] + ["![real](real_mnist.png)"]
    return "\n".join([
        "## Sample quality on MNIST\n",
        f"Machine: {common.machine_line()}.\n",
        f"Command: `{command}`\n",
        f"Scores of {rows[0]['n_fd'] if rows else ''} generated digits against as many real ones: "
        f"{ys.describe()}. Not Inception FIDs.\n",
        common.md_table(header + ["coverage", "classes >= 5%"], table),
        "![quality against wall time](quality_vs_time.png)\n",
        common.md_table([f"`{s}.py`" for s in names] + ["real"], [samples]),
    ])  # fmt: skip


def plot(rows, path, floor):
    """Distance, confidence and coverage against training wall time, a line a script."""
    panels = []
    for key, dotted in (("distance", floor), ("confidence", None), ("coverage", None)):
        lines = {f"{name}.py": [[], []] for name in dict.fromkeys(r["script"] for r in rows)}
        for r in rows:
            lines[f"{r['script']}.py"][0].append(max(float(r["time_s"]), 1e-3))
            lines[f"{r['script']}.py"][1].append(float(r[key]))
        panels.append(("training wall time, s", key, lines, dotted))
    common.plot(path, panels, "MNIST scripts: quality against training time")


def main(argv=None):
    args = parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    print(common.machine_line())
    digits, _ = quality.load_mnist(args.mnist, train=True)
    minutes = sum(SCRIPTS[s] * checkpoint_epochs(args, s)[-1] for s in args.scripts) / 60
    print(f"rough duration on a 2-core CPU: {minutes * len(digits) / 10000:.0f} min", flush=True)
    ys = quality.Yardstick("digits", args.mnist, cache=args.cache, steps=30 if args.quick else None)
    kept = results / "quality.csv"
    rows = common.read_csv(kept) if kept.exists() else []
    rows = [r for r in rows if r["script"] not in args.scripts]  # others: from an earlier command
    key = hashlib.sha256(digits.numpy().tobytes()).hexdigest()[:12]
    pngs = common.export_pngs(digits, Path(args.runs) / f"mnist-png-{key}")
    for name in args.scripts:
        data = pngs if name == "dcgan64" else Path(args.mnist).resolve()
        rows += quality_run(name, data, ys, args)
        common.write_csv(kept, rows, COLUMNS)
    rows.sort(key=lambda r: (list(SCRIPTS).index(r["script"]), int(r["epoch"])))
    if rows:
        plot(rows, results / "quality_vs_time.png", ys.floor(int(rows[0]["n_fd"])))
    budget = " --budget " + " ".join(f"{k}={v}" for k, v in args.budget.items())
    command = f"python benchmarks/figures.py --mnist {args.mnist}" + budget * bool(args.budget)
    (results / "quality.md").write_text(markdown(rows, ys, command + " --quick" * args.quick))
    print(f"wrote {results / 'quality.md'}")


if __name__ == "__main__":
    main()
