"""dcgan64.py against pytorch/examples' dcgan/main.py, the DCGAN most people copy: training speed, same work.

    git clone https://github.com/pytorch/examples ../examples
    python benchmarks/peer_dcgan64.py --examples ../examples --images ./celeba

Both train the 3x64x64 networks with ngf = ndf = 64 at the same batch size, with the same number of DataLoader
workers decoding the same photos, each run a fresh process, the runs taking turns (--rounds of each, so that a
slower minute of the machine does not land on one of them). The peer runs unmodified from the checkout given
(`--dataset folder`; on the CPU, or with `--accel` on --device cuda). It has no step limit, so the photos are
linked into a folder of exactly batch x (warm-up + measured) images and both train one epoch of it.

Figures, per run: images/s over the measured steps, batch x measured steps / (end of the last step - end of
the last warm-up step). Ours: from the `time` column of log.csv. The peer: the moment its per-step line reaches
this process (PYTHONUNBUFFERED; the line follows an `.item()`, so the step is done). Then, per variant, the
median over the rounds, its ratio to the peer's median (the peer has no bf16 mode: --amp is compared with the
peer's fp32), and the fraction of this device's ceiling: the step's floating-point operations (counted by
torch.utils.flop_counter, as baseline_dcgan64.py does) at the rate of a large fp32 (or, for --amp, bf16)
matrix product measured in the same run. Writes results/peer_dcgan64.md with the CPU named.
"""
import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline_dcgan64  # noqa: E402
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan64  # noqa: E402

PEER = "dcgan/main.py of pytorch/examples"
PEER_STEP = re.compile(r"^\[0/1\]\[(\d+)/(\d+)\] Loss_D")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", required=True, help="a checkout of github.com/pytorch/examples")
    p.add_argument("--images", required=True, help="folder of photos, searched recursively (e.g. ./celeba)")
    p.add_argument("--ours", nargs="+", default=["fp32", "amp"],
                   help="variants of dcgan64.py: fp32 (no flag), or flags without their dashes joined by +, "
                        "e.g. amp+cache for --amp --cache (default: fp32 amp)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, for both")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--results", default=str(common.BENCH / "results"))
    return p.parse_args(argv)


def peer_rate(main_py, root, out, args):
    """Images/s of dcgan/main.py over the measured steps of its one epoch of `root`."""
    cmd = [sys.executable, str(main_py), "--dataset", "folder", "--dataroot", str(root), "--batchSize",
           str(args.batch_size), "--workers", str(args.workers), "--niter", "1", "--outf", str(out),
           "--manualSeed", "1", *(["--accel"] if args.device == "cuda" else [])]
    ends, tail = {}, collections.deque(maxlen=10)
    with subprocess.Popen(cmd, cwd=main_py.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:                                # stderr too: one pipe cannot fill up unread
            tail.append(line)
            if m := PEER_STEP.match(line):
                ends[int(m[1]) + 1] = time.perf_counter()       # step i + 1 (1-based) has ended
    last = args.warmup + args.steps
    if proc.returncode != 0 or last not in ends:
        raise common.ScriptFailed(f"{' '.join(cmd)} exited with {proc.returncode}:\n{''.join(tail)}")
    return args.batch_size * args.steps / (ends[last] - ends[args.warmup])


def our_rate(flags, root, out, args):
    """Images/s of dcgan64.py over the measured steps, from log.csv."""
    common.run_script("dcgan64.py", "--data", root, "--out", out, "--batch-size", args.batch_size, "--workers",
                      args.workers, "--epochs", 1, "--device", args.device, "--seed", 1, "--log-every", 1000,
                      *flags)
    log = {row["step"]: row["time"] for row in common.read_log(Path(out) / "log.csv")}
    last = args.warmup + args.steps
    return args.batch_size * args.steps / (log[last] - log[args.warmup])


def variant_flags(variant):
    """"fp32" -> [], "amp+cache" -> ["--amp", "--cache"]."""
    return [] if variant == "fp32" else [f"--{flag}" for flag in variant.split("+")]


def link_photos(src, root, n):
    """root/photos/ with exactly n links to the photos below src, repeated (ImageFolder wants a class folder)."""
    photos = sorted(p for p in Path(src).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"peer_dcgan64.py: error: no photos in {src}")
    (Path(root) / "photos").mkdir(parents=True)
    for i in range(n):
        (Path(root) / "photos" / f"{i:06d}{photos[i % len(photos)].suffix}").symlink_to(photos[i % len(photos)].resolve())
    return len(photos)


def ceilings(args):
    """Per precision, GFLOP/s of a large matrix product and of dcgan64.py's main convolution shape, and the
    larger of the two (the ceiling); GFLOP per image of dcgan64.py's step."""
    device = torch.device(args.device)
    dcgan_args = dcgan64.parse_args(["--device", args.device])
    G, D, opt_G, opt_D = dcgan64.build(dcgan_args, device)
    x = torch.rand(8, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    fp32, scaler = torch.autocast(device.type, enabled=False), torch.amp.GradScaler(device.type, enabled=False)
    flops = baseline_dcgan64.step_flops(
        lambda: dcgan64.train_step(G, D, D, opt_G, opt_D, x, torch.randn(8, 100, 1, 1, device=device), fp32, scaler))
    rates = {kind: (baseline_dcgan64.matmul_gflops(device, dtype), baseline_dcgan64.conv_gflops(device, dtype))
             for kind, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {**{kind: max(r) for kind, r in rates.items()}, "rates": rates, "gflop_per_image": flops / 8 / 1e9}


def write_markdown(path, machine, capabilities, args, n_photos, rates, ceiling):
    peer = statistics.median(rates[PEER])
    rows = []
    for name, runs in rates.items():
        median = statistics.median(runs)
        kind = "bf16" if "--amp" in name else "fp32"
        rows.append([f"`{name}`", " / ".join(f"{r:.1f}" for r in runs), f"{median:.1f}", f"{median / peer:.2f}x",
                     f"{median * ceiling['gflop_per_image'] / ceiling[kind]:.0%} of {kind}"])
    with open(path, "w") as f:
        f.write("## dcgan64.py against pytorch/examples' dcgan/main.py\n\n")
        f.write(f"Machine: {common.machine_line(machine)}.\n\nCPU capabilities (torch.cpu.get_capabilities()): "
                f"{capabilities}.\n\n")
        f.write(f"Command: `python benchmarks/peer_dcgan64.py --examples ../examples --images ./celeba --batch-size "
                f"{args.batch_size} --workers {args.workers} --warmup {args.warmup} --steps {args.steps} --rounds "
                f"{args.rounds} --device {args.device} --ours {' '.join(args.ours)}`\n\n")
        f.write(f"3x64x64, ngf = ndf = 64, batch {args.batch_size}, {args.workers} DataLoader workers each, "
                f"{n_photos} photos repeated to one epoch of {args.warmup} warm-up + {args.steps} measured steps; "
                f"device {args.device}. Ceilings measured in the same run, the faster of a 2048^3 matrix product and "
                f"the networks' main convolution (see baseline_dcgan64.conv_gflops): " + ", ".join(
                    f"{kind} {max(r):.0f} GFLOP/s (matrix product {r[0]:.0f}, convolution {r[1]:.0f})"
                    for kind, r in ceiling["rates"].items()) +
                f"; a step is {ceiling['gflop_per_image']:.2f} GFLOP per image, so fp32 allows at most "
                f"{ceiling['fp32'] / ceiling['gflop_per_image']:.0f} images/s.\n\n")
        f.write(common.md_table(["run", "images/s, each round", "median", "x the peer (fp32)",
                                 "fraction of the ceiling"], rows))


def main(argv=None):
    args = parse_args(argv)
    main_py = Path(args.examples) / "dcgan" / "main.py"
    if not main_py.is_file():
        raise SystemExit(f"peer_dcgan64.py: error: no dcgan/main.py in {args.examples}")
    machine = common.machine_info()
    capabilities = ", ".join(k for k, v in torch.cpu.get_capabilities().items() if v is True
                             and k.startswith(("avx", "amx")))
    print(common.machine_line(machine), f"\nCPU capabilities: {capabilities}", flush=True)
    variants = {f"dcgan64.py {' '.join(flags)}".strip(): flags for flags in map(variant_flags, args.ours)}
    rates = {PEER: [], **{name: [] for name in variants}}
    with tempfile.TemporaryDirectory(prefix="gan-peer-") as tmp:
        root = Path(tmp) / "root"
        n_photos = link_photos(args.images, root, args.batch_size * (args.warmup + args.steps))
        for r in range(args.rounds):
            for name in rates:
                out = Path(tmp) / f"run{len(rates) * r + list(rates).index(name)}"
                if name == PEER:
                    rate = peer_rate(main_py.resolve(), root, out, args)
                else:
                    rate = our_rate(variants[name], root, out, args)
                rates[name].append(rate)
                print(f"round {r + 1}: {name}: {rate:.1f} images/s", flush=True)
    ceiling = ceilings(args)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_markdown(results / "peer_dcgan64.md", machine, capabilities, args, n_photos, rates, ceiling)
    print((results / "peer_dcgan64.md").read_text())


if __name__ == "__main__":
    main()
