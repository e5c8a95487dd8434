"""How fast is it? The five scripts, fp32 and --amp, beside pytorch/examples and the ceiling.

    python benchmarks/speed.py --mnist ./data --images ./celeba --examples ../examples

Time: about 10 min on a 2-core CPU with --no-amp (--amp on a CPU without bf16 instructions takes
far longer), a few minutes on a GPU. --only picks parts; all by default, peer with --examples.

- scripts: each script through its command line on the default device, at the batch sizes users
  use, warm-up + measured steps (--max-steps) in a fresh process: training images/s from log.csv's
  `time` after the warm-up; G images/s from --generate's `(G: X images/s)`; peak resident memory
  of the training steps (sampled every 2 ms up to the last optimizer step; DataLoader workers not
  counted) and CUDA's. Photos (--images) are linked repeatedly so that no epoch ends in a run;
  without --mnist or --images, synthetic data.
- peer: dcgan64.py (--ours: fp32, amp, cache, amp+cache, ...) beside dcgan/main.py of the
  checkout, unmodified: the same photos, batch and workers, fresh processes taking turns.
- ceiling: each script's train_step on random data against the faster of a 2048^3 matrix product
  and dcgan64.py's main convolution (MLPs: the product), measured in the same run.
Writes results/speed.md and speed.csv with the machine named.
"""

import inspect
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import common

# script: data, batch sizes, (warm-up, measured) steps, images for --generate
CONFIGS = {
    "vanilla_gan": ("mnist", [128], (5, 50), 5000),
    "lsgan": ("mnist", [128], (5, 50), 5000),
    "dcgan_mnist": ("mnist", [128], (3, 20), 5000),
    "dcgan64": ("images", [128], (2, 6), 512),
    "dcgan256": ("images", [8, 16, 32], (2, 4), 64),
}
MEMORY_TAG = "speed.py memory:"


def parse_args(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--only", nargs="+", choices=["scripts", "peer", "ceiling"])
    p.add_argument("--mnist", help="torchvision MNIST root (./data); synthetic digits without it")
    p.add_argument("--images", help="folder of photos (./celeba); synthetic photos without it")
    p.add_argument("--examples", help="a checkout of github.com/pytorch/examples: the peer")
    p.add_argument(
        "--scripts", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="S"
    )
    p.add_argument("--no-amp", action="store_true", help="fp32 only")
    p.add_argument("--ours", nargs="+", default=["fp32", "amp"], help="peer: dcgan64.py variants")
    p.add_argument("--rounds", type=int, default=2, help="peer: runs of each, taking turns")
    p.add_argument("--workers", type=int, default=2, help="peer: DataLoader workers, for both")
    p.add_argument("--steps", type=int, help="measured steps of every run (default: per script)")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    p.add_argument("--scripts-dir", default=str(common.REPO), help="folder holding the scripts")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny batches, a few steps")
    args = p.parse_args(argv)
    args.only = args.only or ["scripts", "ceiling"] + ["peer"] * bool(args.examples)
    if "peer" in args.only and not (Path(args.examples or "") / "dcgan" / "main.py").is_file():
        p.error(f"--examples {args.examples} holds no dcgan/main.py")
    return args


# `python -c PEAK_MEMORY SCRIPT ARGS` runs the script as __main__ and prints the peak resident
# memory up to its last optimizer step (sampled every 2 ms) and CUDA's; standard library only.
PEAK_MEMORY = f"""
import os, resource, runpy, sys, threading, time
path, samples, last, cuda, done = sys.argv[1], [], [0.0], [0], threading.Event()
sys.argv, sys.path[0] = sys.argv[1:], os.path.dirname(os.path.abspath(path))
def on_step(*_):
    last[0], torch = time.perf_counter(), sys.modules["torch"]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda[0] = torch.cuda.max_memory_allocated()
def poll():
    hooked = False
    while not done.wait(0.002):
        if not hooked and "torch.optim.optimizer" in sys.modules:
            sys.modules["torch.optim.optimizer"].register_optimizer_step_post_hook(on_step)
            hooked = True
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        samples.append((time.perf_counter(), rss))
threading.Thread(target=poll, daemon=True).start()
try:
    runpy.run_path(path, run_name="__main__")
finally:
    done.set()
    peak = [rss for t, rss in samples if t <= last[0]]
    peak = max(peak) if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("{MEMORY_TAG}", peak, cuda[0], flush=True)
"""


# ---- the five scripts, whole runs ---------------------------------------------------------------
def photo_folder(src, where, n):
    """where/photos/: n links to the photos of src (without src: synthetic); and their number."""
    src = src or common.write_image_folder(Path(where) / "synthetic", n=min(n, 64))
    return Path(where) / "photos", common.link_photos(src, where, n)[1]


def run_one(script, data, batch, amp, steps, n_gen, args, tmp):
    """One training run and one --generate run in fresh processes; a row of figures."""
    out, warmup = Path(tmp) / f"{script}-b{batch}-{amp}", steps[0]
    flags = ["--amp"] if amp else []
    stdout = common.run_script(
        f"{script}.py", "--data", data, "--out", out, "--batch-size", batch, "--epochs", 10**5,
        "--max-steps", sum(steps), "--log-every", 1000, *flags, scripts_dir=args.scripts_dir,
        python=(sys.executable, "-c", PEAK_MEMORY),
    )  # fmt: skip
    log = common.read_log(out / "log.csv")
    t0 = next(r["time"] for r in log if r["step"] == warmup)
    rate = batch * (log[-1]["step"] - warmup) / (log[-1]["time"] - t0)
    mem = stdout[stdout.rindex(MEMORY_TAG) :].split()
    gen = common.run_script(f"{script}.py", "--out", out, "--generate", n_gen, *flags,
                            scripts_dir=args.scripts_dir)  # fmt: skip
    g_rate = float(gen.rsplit("(G: ", 1)[1].split()[0])
    return dict(
        script=script, batch=batch, precision="bf16 autocast" if amp else "fp32",
        steps=f"{warmup}+{log[-1]['step'] - warmup}", train_images_per_s=round(rate, 1),
        g_images_per_s=g_rate, peak_rss_mib=round(int(mem[2]) / 2**20),
        cuda_peak_mib=round(int(mem[3]) / 2**20),
    )  # fmt: skip


def scripts_part(args, tmp, notes):
    runs = []
    for script in args.scripts:
        kind, batches, steps, n_gen = CONFIGS[script]
        if args.quick:
            batches, steps, n_gen = [2], (1, 2), 8
        steps = (steps[0], args.steps or steps[1])
        for amp in [False] if args.no_amp or args.quick else [False, True]:
            runs += [(script, kind, b, amp, steps, n_gen) for b in batches]
    per_run = max(b * (sum(s) + 1) for _, _, b, _, s, _ in runs)  # no epoch ends in a measured run
    mnist = args.mnist and str(Path(args.mnist).resolve())
    mnist = mnist or common.write_mnist(Path(tmp) / "mnist", n_per_class=-(-per_run // 10))
    photos, n_photos = photo_folder(args.images, Path(tmp) / "scripts", per_run)
    notes.append(f"MNIST: {args.mnist or 'synthetic digits'}; photos: {n_photos} of "
                 f"{args.images or 'synthetic photos'}, repeated by links.\n")  # fmt: skip
    rows = []
    for script, kind, batch, amp, steps, n_gen in runs:
        data = mnist if kind == "mnist" else photos
        try:
            rows.append(run_one(script, data, batch, amp, steps, n_gen, args, tmp))
        except common.ScriptFailed as e:
            notes.append(f"`{script}.py` batch {batch} amp {amp}: failed ({str(e)[-200:]}).\n")
            continue
        print(" | ".join(map(str, rows[-1].values())), flush=True)
    header = ["script", "batch", "precision", "steps", "training images/s", "G images/s"]
    header += ["peak RSS (MiB)", "peak CUDA (MiB)"]
    return header, [list(r.values()) for r in rows], rows


# ---- against pytorch/examples' dcgan/main.py ----------------------------------------------------
def peer_part(args, tmp, ceiling):
    batch, (warmup, steps) = 128, (3, args.steps or 12)
    root, n_photos = photo_folder(args.images, Path(tmp) / "peer", batch * (warmup + steps))
    main_py = (Path(args.examples) / "dcgan" / "main.py").resolve()
    variants = {v: [] if v == "fp32" else [f"--{f}" for f in v.split("+")] for v in args.ours}
    rates = {"peer": [], **{v: [] for v in variants}}
    for r in range(args.rounds):
        for name in rates:
            out = Path(tmp) / f"peer-{name}-{r}"
            if name == "peer":
                peer_args = ["--dataset", "folder", "--dataroot", root.parent, "--batchSize", batch]
                peer_args += [
                    "--workers",
                    args.workers,
                    "--niter",
                    1,
                    "--outf",
                    out,
                    "--manualSeed",
                ]
                peer_args += [1, *["--accel"] * (common.auto_device() == "cuda")]
                log = common.run_peer(main_py, peer_args, stop_after=warmup + steps)
            else:
                flags = ["--out", out, "--batch-size", batch, "--workers", args.workers, "--seed"]
                flags += [1, "--epochs", 1, "--log-every", 1000, *variants[name]]
                common.run_script(
                    "dcgan64.py", "--data", root, *flags, scripts_dir=args.scripts_dir
                )
                log = common.read_log(out / "log.csv")
            t = {row["step"]: row["time"] for row in log}
            rates[name].append(batch * steps / (t[warmup + steps] - t[warmup]))
            print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} images/s", flush=True)
    rows, peer = [], statistics.median(rates["peer"])
    for name, runs in rates.items():
        kind = "bf16" if "amp" in name else "fp32"
        median = statistics.median(runs)
        at_ceiling = median * ceiling["dcgan64"] / 1e9 / max(ceiling.get(kind, [math.inf]))
        fraction = f"{at_ceiling:.0%} of {kind}" * (kind in ceiling)
        rows.append([name, " / ".join(f"{r:.1f}" for r in runs), f"{median / peer:.2f}x", fraction])
    note = f"Peer: `{main_py}`, unmodified; {n_photos} photos, batch {batch}, {args.workers} "
    note += "workers; the fraction of the ceiling measured in the same run (--amp: bf16's).\n"
    return (
        ["run", "images/s, each round", "x the peer (fp32)", "fraction of the ceiling"],
        rows,
        note,
    )


# ---- each train_step against this device's ceiling ----------------------------------------------
def matmul_gflops(dtype, n=2048, repeats=5):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return timed(lambda: a @ b, repeats) * 2 * n**3 / 1e9


def conv_gflops(dtype, batch=128, repeats=5):
    """dcgan64.py's main convolution: 4x4, stride 2, 128 -> 256 channels, 16x16 -> 8x8."""
    x = torch.randn(batch, 128, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 128, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * 8 * 8 * 256 * 128 * 4 * 4
    return timed(lambda: F.conv2d(x, w, stride=2, padding=1), repeats) * flops / 1e9


def timed(step, repeats, warmup=1):
    """Calls of step per second, after warm-up calls."""
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats / (time.perf_counter() - t)


def script_step(name, batch):
    """The script's train_step on random data as a function of an autocast context (on the CPU)."""
    script = __import__(name)
    args = script.parse_args(["--device", "cpu", "--batch-size", str(batch)])
    torch.manual_seed(0)
    G, D, opt_G, opt_D = script.build(args, torch.device("cpu"))
    shape = (1, 28) if name in ("vanilla_gan", "lsgan", "dcgan_mnist") else (3, script.IMAGE_SIZE)
    x = torch.rand(batch, shape[0], shape[1], shape[1]) * 2 - 1
    x = x.contiguous(memory_format=torch.channels_last) if shape[0] == 3 else x
    frozen = (D,) if "D_frozen" in inspect.signature(script.train_step).parameters else ()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    z = script.noise(batch, args, torch.device("cpu"))
    return lambda amp: script.train_step(G, D, *frozen, opt_G, opt_D, x, z, amp, scaler)


def ceiling_part(args, precisions, scripts):
    small = dict(n=256, repeats=1), dict(batch=8, repeats=1)  # --quick: bf16 emulation is slow
    mm, conv = small if args.quick else ({}, {})
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rate = lambda k: (matmul_gflops(dtypes[k], **mm), conv_gflops(dtypes[k], **conv))  # noqa: E731
    rates = {k: rate(k) for k in precisions}
    rows, flops_per_image = [], {}
    for name in scripts:
        batches = [2] if args.quick else [8, 16, 32] if name == "dcgan256" else [128]
        for batch in batches:
            step = script_step(name, batch)
            with FlopCounterMode(display=False) as counter:
                step(torch.autocast("cpu", enabled=False))
            flops_per_image[name] = counter.get_total_flops() / batch
            for kind in precisions:
                amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16")
                per_s = timed(lambda: step(amp), 1 if args.quick else 6, 1 if args.quick else 2)
                gflops = round(per_s * flops_per_image[name] * batch / 1e9)
                ceiling = rates[kind][0] if name in ("vanilla_gan", "lsgan") else max(rates[kind])
                fraction = f"{gflops / ceiling:.0%} of {ceiling:.0f}"
                rows.append([f"`{name}.py`", batch, kind, f"{per_s * batch:.0f}", gflops, fraction])
                print(" | ".join(map(str, rows[-1])), flush=True)
    note = "; ".join(f"{k} {r[0]:.0f}, {r[1]:.0f}" for k, r in rates.items())
    note = f"Ceilings, GFLOP/s (2048^3 matrix product, dcgan64.py's main convolution): {note}"
    header = ["script", "batch", "precision", "images/s", "GFLOP/s", "fraction of the ceiling"]
    return header, rows, note + ".\n", {**rates, **flops_per_image}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    print(common.machine_line(), flush=True)
    precisions = ["fp32"] if args.no_amp or args.quick else ["fp32", "bf16"]
    command = "python benchmarks/speed.py " + " ".join(argv)
    text = [f"## Speed\n\nMachine: {common.machine_line()}.\n\nCommand: `{command}`\n"]
    Path(args.results).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gan-speed-") as tmp:
        if "scripts" in args.only:
            notes = []
            header, rows, csv_rows = scripts_part(args, tmp, notes)
            text += ["### The five scripts\n", *notes, common.md_table(header, rows)]
            if csv_rows:
                common.write_csv(Path(args.results) / "speed.csv", csv_rows)
        if {"peer", "ceiling"} & set(args.only):
            scripts = args.scripts * ("ceiling" in args.only) + ["dcgan64"] * ("peer" in args.only)
            header, rows, note, ceiling = ceiling_part(args, precisions, dict.fromkeys(scripts))
            if "ceiling" in args.only:
                text += ["### Each step against this device's ceiling\n", note]
                text.append(common.md_table(header, rows))
        if "peer" in args.only:
            header, rows, note = peer_part(args, tmp, ceiling)
            text += ["### dcgan64.py against pytorch/examples' dcgan/main.py\n", note]
            text.append(common.md_table(header, rows))
    (Path(args.results) / "speed.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
