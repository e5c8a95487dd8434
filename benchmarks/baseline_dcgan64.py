"""dcgan64.py's training step against the plain DCGAN step most tutorials copy, on the same networks and batch.

    python benchmarks/baseline_dcgan64.py                 # 3x64x64, ngf = ndf = 64, batch 128, this machine

The plain step is written the way the widely copied PyTorch DCGAN example trains (the habits, not its code):
NCHW tensors, a Sigmoid layer with BCELoss, D's real and fake losses backpropagated separately, D's weight
gradients computed (and thrown away) during G's step, default Adam, `.item()` on every step. dcgan64.py's
`train_step` differs only in speed: channels-last memory, a logit with BCEWithLogitsLoss, D frozen during
G's step, fused Adam, no host sync per step. Both run on random images (decoding is not measured here; the
data loader runs in worker processes). Prints images/s of each, measured after warm-up steps.

It also prints what bounds such figures on this device: the fp32 rates (GFLOP/s) of a large matrix product and
of dcgan64.py's main convolution shape, and the floating-point operations of one training step of dcgan64.py
and of vanilla_gan.py at the same batch, counted by torch.utils.flop_counter (forward and backward matrix
products and convolutions), so that rate / operations is the ceiling on steps/s that no implementation of the
same step passes (the faster rate for dcgan64.py, the matrix product's for the MLP).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan64  # noqa: E402
import vanilla_gan  # noqa: E402


def plain_step(G, D, opt_G, opt_D, x, z, criterion):
    """The tutorial-style step: D on real, D on fake, then G, each loss backpropagated on its own."""
    ones, zeros = torch.ones(len(x), device=x.device), torch.zeros(len(x), device=x.device)
    D.zero_grad()
    loss_real = criterion(D(x).view(-1), ones)
    loss_real.backward()
    fake = G(z)
    loss_fake = criterion(D(fake.detach()).view(-1), zeros)
    loss_fake.backward()
    opt_D.step()
    G.zero_grad()
    loss_g = criterion(D(fake).view(-1), ones)               # D's weight gradients computed too
    loss_g.backward()
    opt_G.step()
    return (loss_real + loss_fake).item(), loss_g.item()     # a host sync every step


def images_per_second(step, batch, warmup, steps):
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def step_flops(step):
    """Floating-point operations of one call of step (matrix products and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_gflops(device, dtype=torch.float32, n=2048, repeats=5):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        (a @ b).sum().item()                                    # .item(): wait for the device
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def conv_gflops(device, dtype=torch.float32, repeats=5, batch=128):
    """Rate of the convolution shape that dominates dcgan64.py's networks (4x4, stride 2, 128 -> 256 channels,
    16x16 -> 8x8, batch 128 unless told, channels-last). Convolutions and matrix products come from different libraries
    (oneDNN, and MKL or OpenBLAS); on some CPUs the convolution runs much faster than the matrix product (an
    AMD EPYC with AVX-512: 394 against 178 GFLOP/s), so a convolutional network's ceiling is the faster one."""
    x = torch.randn(batch, 128, 16, 16, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 128, 4, 4, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    F.conv2d(x, w, stride=2, padding=1)
    t = time.perf_counter()
    for _ in range(repeats):
        F.conv2d(x, w, stride=2, padding=1).sum().item()        # .item(): wait for the device
    return 2 * batch * 8 * 8 * 256 * 128 * 4 * 4 * repeats / (time.perf_counter() - t) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=64, help="--ngf and --ndf")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device, B = torch.device(args.device), args.batch_size
    print(common.machine_line(common.machine_info()), flush=True)
    x = torch.rand(B, 3, 64, 64, device=device) * 2 - 1
    amp = torch.autocast(device.type, enabled=False)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # fp32: the scripts' steps scale no gradients

    torch.manual_seed(0)
    G, D = dcgan64.Generator(ngf=args.width), dcgan64.Discriminator(ndf=args.width)
    G.apply(dcgan64.init_weights), D.apply(dcgan64.init_weights)
    G, D = G.to(device), nn.Sequential(D, nn.Sigmoid()).to(device)  # NCHW, probabilities out
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    plain = images_per_second(lambda: plain_step(G, D, opt_G, opt_D, x, torch.randn(B, 100, 1, 1, device=device),
                                                 nn.BCELoss()), B, args.warmup, args.steps)

    dcgan_args = dcgan64.parse_args(["--ngf", str(args.width), "--ndf", str(args.width), "--device", args.device])
    torch.manual_seed(0)
    G, D, opt_G, opt_D = dcgan64.build(dcgan_args, device)
    x = x.contiguous(memory_format=torch.channels_last)
    ours = images_per_second(lambda: dcgan64.train_step(G, D, D, opt_G, opt_D, x,
                                                        torch.randn(B, 100, 1, 1, device=device), amp, scaler),
                             B, args.warmup, args.steps)
    print(f"3x64x64, ngf = ndf = {args.width}, batch {B}, fp32, {args.warmup} warm-up + {args.steps} measured steps:")
    print(f"  plain tutorial-style step: {plain:.1f} images/s")
    print(f"  dcgan64.py train_step:     {ours:.1f} images/s ({ours / plain:.2f}x)")

    matmul, conv = matmul_gflops(device), conv_gflops(device)
    peak = max(matmul, conv)
    gan_flops = step_flops(lambda: dcgan64.train_step(G, D, D, opt_G, opt_D, x,
                                                      torch.randn(B, 100, 1, 1, device=device), amp, scaler))
    v_args = vanilla_gan.parse_args(["--device", args.device])
    vG, vD, vopt_G, vopt_D = vanilla_gan.build(v_args, device)
    digits = torch.rand(B, 1, 28, 28, device=device) * 2 - 1
    v_flops = step_flops(lambda: vanilla_gan.train_step(vG, vD, vopt_G, vopt_D, digits,
                                                        torch.randn(B, v_args.z_dim, device=device), amp, scaler))
    print(f"ceilings on this device: fp32 matrix product {matmul:.0f} GFLOP/s (2048^3), convolution {conv:.0f};")
    print(f"  dcgan64.py step {gan_flops / B / 1e9:.2f} GFLOP per image -> "
          f"at most {peak * 1e9 * B / gan_flops:.0f} images/s (the faster of the two);")
    print(f"  vanilla_gan.py step {v_flops / 1e9:.2f} GFLOP at batch {B} -> at most {matmul * 1e9 / v_flops:.0f} "
          f"steps/s (matrix products)")


if __name__ == "__main__":
    main()
