"""How far dcgan64.py's bf16 (--amp) gradients are from its fp32 ones, and which part of bf16 puts them there.

    python benchmarks/bf16_gradients.py --mnist ./data --run benchmarks/runs/learning_dcgan64/peer_seed1

Takes G and D at points of a real training run (--run: a dcgan64.py run folder, its checkpoints/epoch_NNNN.pt
and checkpoint.pt, or a pytorch/examples dcgan/main.py --outf folder, its netG/netD_epoch_N.pth; or, without
--run, freshly initialised networks) and one batch of real digits at 64x64 with one batch of z. For each way of
computing the step it takes the gradients of D's loss (D's weights) and of G's loss (G's weights), exactly as
dcgan64.train_step forms them, and reports their relative error against fp32, |g - g_fp32| / |g_fp32| over all
of a network's weights, and their cosine similarity:

  fp32                    the reference
  bf16 autocast           dcgan64.py --amp: convolutions in bf16, BatchNorm on their bf16 outputs, the loss in
                          fp32 (train_step turns the logits to fp32 before the loss)
  + BatchNorm in fp32     the same, with every BatchNorm (forward and backward) in fp32
  + ends in fp32          the same, with G's last layer (so its output image) and D's first and last layers in fp32
  + both                  BatchNorm and those layers in fp32
  + G in fp32, + D in fp32  one network wholly in fp32, the other in bf16: whose bf16 the error comes from

The loss is not a candidate: autocast computes binary_cross_entropy_with_logits in fp32 on CPU and CUDA
whatever the logits' type (and train_step turns the logits to fp32 first anyway).

For scale, `other batch` is the relative difference between the fp32 gradients of two different batches of
real digits and z at the same weights: the minibatch noise that SGD lives with every step. A bf16 error far
below it cannot slow learning by itself.
"""
import argparse
import contextlib
import re
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import mnist_quality  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan64  # noqa: E402

VARIANTS = ["bf16 autocast", "+ BatchNorm in fp32", "+ ends in fp32", "+ both", "+ G in fp32", "+ D in fp32"]


class InFP32(nn.Module):
    """Runs the wrapped layer outside autocast, on an fp32 input."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


@contextlib.contextmanager
def in_fp32(nets, pick):
    """Temporarily wrap the layers pick(net) returns (indices into net) in InFP32."""
    saved = []
    for net in nets:
        for i in pick(net):
            saved.append((net, i, net[i]))
            net[i] = InFP32(net[i])
    try:
        yield
    finally:
        for net, i, layer in reversed(saved):
            net[i] = layer


def batchnorms(net):
    return [i for i, m in enumerate(net) if isinstance(m, nn.BatchNorm2d)]


def ends(net):
    convs = [i for i, m in enumerate(net) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return convs[-1:] if isinstance(net, dcgan64.Generator) else [convs[0], convs[-1]]


def everything(net):
    return range(len(net))


def gradients(G, D, x, z, amp):
    """(D's gradient, G's gradient), each flattened: the losses of dcgan64.train_step at fixed weights."""
    ones, zeros = torch.ones(len(x)), torch.zeros(len(x))
    bce = F.binary_cross_entropy_with_logits
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        fake = G(z)
        loss_d = bce(D(x).float(), ones) + bce(D(fake.detach()).float(), zeros)
    g_d = torch.autograd.grad(loss_d, list(D.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss_g = bce(D(fake).float(), ones)
    g_g = torch.autograd.grad(loss_g, list(G.parameters()))
    return torch.cat([g.flatten().float() for g in g_d]), torch.cat([g.flatten().float() for g in g_g])


def compare(g, ref):
    return (g - ref).norm().item() / ref.norm().item(), F.cosine_similarity(g, ref, dim=0).item()


def states(run):
    """[(label, G state, D state)] of a run folder, in training order; [("init", None, None)] without one."""
    if run is None:
        return [("initial weights", None, None)]
    run = Path(run)
    peer = sorted(run.glob("netG_epoch_*.pth"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    if peer:
        out = []
        for p in peer:
            epoch = int(re.findall(r"\d+", p.name)[-1])
            load = lambda name: {k.removeprefix("main."): v for k, v in  # noqa: E731
                                 torch.load(run / name, map_location="cpu", weights_only=True).items()}
            out.append((f"after epoch {epoch + 1}", load(p.name), load(f"netD_epoch_{epoch}.pth")))
        return out
    files = sorted((run / "checkpoints").glob("epoch_*.pt")) + [run / "checkpoint.pt"]
    out = []
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        out.append((f"step {ckpt['step']}", ckpt["G"], ckpt["D"]))
    return out


def real_batches(mnist, n, count):
    """count batches of n real digits, resized to 64x64 and scaled to [-1, 1] as dcgan64.py does."""
    images, _ = mnist_quality.load_mnist(mnist, train=True)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        x = images[torch.randperm(len(images), generator=g)[:n]].unsqueeze(1).float()
        x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        out.append((x.round().clamp(0, 255) / 127.5 - 1).contiguous(memory_format=torch.channels_last))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", required=True, help="torchvision MNIST root (MNIST/raw/), e.g. ./data")
    p.add_argument("--run", help="a dcgan64.py run folder or a dcgan/main.py --outf folder (default: new weights)")
    p.add_argument("--every", type=int, default=1, help="use every k-th of the run's saved states")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=64, help="--ngf and --ndf (64: dcgan64.py's default networks)")
    args = p.parse_args(argv)
    print(common.machine_line(common.machine_info()), flush=True)
    x1, x2 = real_batches(args.mnist, args.batch_size, 2)
    gz = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn(args.batch_size, 100, 1, 1, generator=gz) for _ in range(2))
    rows = {name: {"D": [], "G": []} for name in ["other batch", *VARIANTS]}
    chosen = states(args.run)[::-1][::args.every][::-1]         # the last state always included
    for label, g_state, d_state in chosen:
        torch.manual_seed(0)
        G = dcgan64.Generator(ngf=args.width, channels=1).to(memory_format=torch.channels_last)
        D = dcgan64.Discriminator(ndf=args.width, channels=1).to(memory_format=torch.channels_last)
        G.apply(dcgan64.init_weights), D.apply(dcgan64.init_weights)
        if g_state is not None:
            G.load_state_dict(g_state), D.load_state_dict(d_state)
        ref = gradients(G, D, x1, z1, amp=False)
        other = gradients(G, D, x2, z2, amp=False)
        results = {"other batch": other, "bf16 autocast": gradients(G, D, x1, z1, amp=True)}
        with in_fp32((G, D), batchnorms):
            results["+ BatchNorm in fp32"] = gradients(G, D, x1, z1, amp=True)
        with in_fp32((G, D), ends):
            results["+ ends in fp32"] = gradients(G, D, x1, z1, amp=True)
            with in_fp32((G, D), batchnorms):
                results["+ both"] = gradients(G, D, x1, z1, amp=True)
        for net in (G, D):
            with in_fp32((net,), everything):
                results[f"+ {'G' if net is G else 'D'} in fp32"] = gradients(G, D, x1, z1, amp=True)
        line = []
        for name, (g_d, g_g) in results.items():
            for net, g, r in (("D", g_d, ref[0]), ("G", g_g, ref[1])):
                rows[name][net].append(compare(g, r))
            line.append(f"{name}: D {rows[name]['D'][-1][0]:.3f} G {rows[name]['G'][-1][0]:.3f}")
        print(f"{label}: relative error against fp32 | " + " | ".join(line), flush=True)
    print(f"\nmedian over {len(chosen)} states: relative error |g - g_fp32| / |g_fp32| (cosine similarity)")
    print(common.md_table(["gradients", "D", "G"], [
        [name, *(f"{statistics.median(e for e, _ in v[net]):.3f} ({statistics.median(c for _, c in v[net]):.4f})"
                 for net in ("D", "G"))] for name, v in rows.items()]))


if __name__ == "__main__":
    main()
