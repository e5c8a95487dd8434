"""Every script's training step against this device's ceiling, and the photo scripts' against the plain step.

    python benchmarks/ceilings.py                      # all five scripts, fp32 and bf16 autocast, this machine

For each script (its default networks and random data of its shape; batch 128, dcgan256.py at --batch-sizes-256)
it times `train_step` after warm-up steps (no data loading: speed.py measures whole runs), counts the step's
floating-point operations (matrix products and convolutions, forward and backward, torch.utils.flop_counter as in
baseline_dcgan64.py) and reports:
  - images/s;
  - the fraction of the ceiling: the step's FLOP/s against, measured in the same run, the faster of a 2048^3
    matrix product and dcgan64.py's main convolution in the same precision (the MLPs: the matrix product);
  - the kernel share: the share of the step's time spent inside matrix products and convolutions, from
    torch.profiler. The rest is elementwise work, casts, the optimizer and Python. A step with a high kernel
    share and a low fraction of the ceiling is held back by its matrix products at their own, smaller sizes,
    which no change around them can speed up;
  - for dcgan64.py and dcgan256.py, the plain tutorial-style step (baseline_dcgan64.plain_step: NCHW, Sigmoid +
    BCELoss, D's weight gradients in G's step, default Adam, `.item()` every step) on the same networks, fp32,
    and our step's speed as a multiple of it (--amp too against the plain fp32 step, as the peer has no bf16).
Writes results/ceilings.md with the CPU named.
"""
import argparse
import inspect
import sys
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline_dcgan64  # noqa: E402
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan256  # noqa: E402
import dcgan64  # noqa: E402
import dcgan_mnist  # noqa: E402
import lsgan  # noqa: E402
import vanilla_gan  # noqa: E402

SCRIPTS = {"vanilla_gan": vanilla_gan, "lsgan": lsgan, "dcgan_mnist": dcgan_mnist, "dcgan64": dcgan64,
           "dcgan256": dcgan256}
MLPS = ("vanilla_gan", "lsgan")
IMAGE = {"vanilla_gan": (1, 28), "lsgan": (1, 28), "dcgan_mnist": (1, 28), "dcgan64": (3, 64), "dcgan256": (3, 256)}
KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward",
           "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d", "aten::_convolution")
STEPS = {"vanilla_gan": (5, 50), "lsgan": (5, 50), "dcgan_mnist": (3, 20), "dcgan64": (2, 6), "dcgan256": (2, 4)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    p.add_argument("--batch-size", type=int, default=128, help="for all but dcgan256.py")
    p.add_argument("--batch-sizes-256", nargs="+", type=int, default=[8, 16, 32])
    p.add_argument("--no-amp", action="store_true", help="fp32 only (bf16 is slow on CPUs without bf16 instructions)")
    p.add_argument("--quick", action="store_true",
                   help="one warm-up and one measured step each, small ceilings (a smoke test, fast on any CPU)")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    return p.parse_args(argv)


def setup(name, batch, device):
    """The script's step as a function of nothing, given an autocast context; and its fp32 networks."""
    script = SCRIPTS[name]
    args = script.parse_args(["--device", device.type, "--batch-size", str(batch)])
    torch.manual_seed(0)
    G, D, opt_G, opt_D = script.build(args, device)
    channels, size = IMAGE[name]
    x = (torch.rand(batch, channels, size, size, device=device) * 2 - 1)
    x = x.contiguous(memory_format=torch.channels_last) if name.startswith("dcgan") else x
    frozen = ("D_frozen",) if "D_frozen" in inspect.signature(script.train_step).parameters else ()
    models = (G, D, *(D for _ in frozen), opt_G, opt_D)
    scaler = torch.amp.GradScaler("cpu", enabled=False)        # bf16 and fp32 steps: no gradient scaling
    return lambda amp: script.train_step(*models, x, script.noise(batch, args, device), amp, scaler)


def kernel_share(step, steps):
    """Share of the wall time of `steps` calls of step spent in matrix products and convolutions (self time)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    kernels = sum(e.self_cpu_time_total for e in events if e.key in KERNELS)
    return kernels / sum(e.self_cpu_time_total for e in events)


def plain_rate(name, batch, device, warmup, steps):
    """Images/s of the plain tutorial-style step on dcgan64's or dcgan256's networks, NCHW, fp32."""
    script = SCRIPTS[name]
    torch.manual_seed(0)
    G, D = script.Generator(), script.Discriminator()
    G.apply(script.init_weights), D.apply(script.init_weights)
    G, D = G.to(device), nn.Sequential(D, nn.Sigmoid()).to(device)  # probabilities out, as the tutorial's D
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x = torch.rand(batch, 3, IMAGE[name][1], IMAGE[name][1], device=device) * 2 - 1
    step = lambda: baseline_dcgan64.plain_step(G, D, opt_G, opt_D, x, torch.randn(batch, 100, 1, 1, device=device),
                                               nn.BCELoss())  # noqa: E731
    return baseline_dcgan64.images_per_second(step, batch, warmup, steps)


def measure(name, batch, precisions, rates, device, quick=False):
    step = setup(name, batch, device)
    flops = baseline_dcgan64.step_flops(lambda: step(torch.autocast(device.type, enabled=False)))
    warmup, steps = (1, 1) if quick else STEPS[name]
    plain = plain_rate(name, batch, device, warmup, steps) if name in ("dcgan64", "dcgan256") else None
    rows = []
    for kind in precisions:
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=kind == "bf16")
        rate = baseline_dcgan64.images_per_second(lambda: step(amp), batch, warmup, steps)
        ceiling = rates[kind][0] if name in MLPS else max(rates[kind])
        share = kernel_share(lambda: step(amp), max(2, steps // 4))
        achieved = rate / batch * flops / 1e9
        rows.append([f"`{name}.py`", batch, kind, f"{rate:.0f}", f"{flops / batch / 1e6:.1f}", f"{achieved:.0f}",
                     f"{achieved / ceiling:.0%} of {ceiling:.0f}", f"{share:.0%}",
                     f"{plain:.0f} ({rate / plain:.2f}x)" if plain else ""])
        print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cpu")
    machine = common.machine_info()
    capabilities = ", ".join(k for k, v in torch.cpu.get_capabilities().items() if v is True
                             and k.startswith(("avx", "amx")))
    print(common.machine_line(machine), f"\nCPU capabilities: {capabilities}", flush=True)
    precisions = ["fp32"] if args.no_amp else ["fp32", "bf16"]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # --quick: a 256^3 product and a batch of 8, so that emulated bf16 (20-30x slower than fp32 on CPUs without
    # bf16 instructions) still takes well under a second
    small = {"n": 256, "repeats": 1}, {"batch": 8, "repeats": 1}
    matmul_size, conv_size = small if args.quick else ({}, {})
    rates = {kind: (baseline_dcgan64.matmul_gflops(device, dtypes[kind], **matmul_size),
                    baseline_dcgan64.conv_gflops(device, dtypes[kind], **conv_size)) for kind in precisions}
    print("ceilings, GFLOP/s (matrix product, convolution):", rates, flush=True)
    rows = []
    for name in args.scripts:
        for batch in (args.batch_sizes_256 if name == "dcgan256" else [args.batch_size]):
            rows += measure(name, batch, precisions, rates, device, args.quick)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ceilings.md", "w") as f:
        f.write("## Training steps against this device's ceiling\n\n")
        f.write(f"Machine: {common.machine_line(machine)}.\n\nCPU capabilities: {capabilities}.\n\n")
        f.write(f"Command: `python benchmarks/ceilings.py --scripts {' '.join(args.scripts)} --batch-size "
                f"{args.batch_size} --batch-sizes-256 {' '.join(map(str, args.batch_sizes_256))}"
                f"{' --no-amp' if args.no_amp else ''}`\n\n")
        f.write("Ceilings measured in this run, GFLOP/s: " + "; ".join(
            f"{kind}: matrix product (2048^3) {r[0]:.0f}, convolution (dcgan64's 128->256 channels, 16->8) {r[1]:.0f}"
            for kind, r in rates.items()) + ". The MLPs' ceiling is the matrix product, the convolutional "
            "networks' the faster of the two. `train_step` alone on random data, default networks; bf16 is "
            "--amp (autocast). Kernel share: time inside matrix products and convolutions (torch.profiler).\n\n")
        f.write(common.md_table(["script", "batch", "precision", "images/s", "MFLOP per image", "GFLOP/s",
                                 "fraction of the ceiling", "kernel share", "plain step fp32, images/s (ours x)"],
                                rows))
    print((out / "ceilings.md").read_text())


if __name__ == "__main__":
    main()
