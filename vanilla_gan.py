"""Vanilla GAN on MNIST, with multilayer-perceptron networks.

Paper: Goodfellow et al. 2014, "Generative Adversarial Nets", arXiv:1406.2661.
Design: ../shared/seeds/003 (the default networks) and 002 (a smaller variant), 004 (logits + BCEWithLogitsLoss).

Run (MNIST is downloaded into --data when it is not there):
    python vanilla_gan.py                                   # defaults: 003's networks
    python vanilla_gan.py --z-dim 64 --g-hidden 256 --d-hidden 128 --g-act leaky   # 002's networks
    python vanilla_gan.py --resume --epochs 200             # continue the run in --out
    python vanilla_gan.py --generate 1000                   # write images from --out/checkpoint.pt

Run folder (--out, default runs/vanilla_gan): real.png (real digits), samples/epoch_NNNN.png (the same fixed
noise every epoch), progress.gif (those grids animated), log.csv (losses, D(x), D(G(z)) per step),
checkpoint.pt (everything needed to continue bit-for-bit), generated/ (from --generate).

Implementation details, each tied to the paper:
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (eq. 1), trained by alternating one
    D step and one G step on a minibatch (Algorithm 1, with k = 1 as in the paper's experiments).
 2. G maximises log D(G(z)) instead of minimising log(1 - D(G(z))) (section 3: "non-saturating" loss,
    strong gradients early in training when D rejects every sample).
 3. D outputs a logit; sigmoid + binary cross-entropy are fused in BCEWithLogitsLoss, the same objective in a
    numerically stable form (safe under bf16 autocast too).
 4. Real pixels are scaled to [-1, 1] to match G's Tanh output.
 5. Adam (lr 1e-3, beta1 0.5), as in the notebook design document 003; the paper itself used SGD with momentum.
"""
import argparse
import contextlib
import csv
import io
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import save_image

SCRIPT = Path(__file__).stem
NETWORK_FLAGS = ("z_dim", "g_hidden", "d_hidden", "g_act")  # must match between a checkpoint and the flags


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="./data", help="MNIST root (holds MNIST/raw); downloaded there if missing")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.5, help="Adam's beta1")
    p.add_argument("--z-dim", type=int, default=96, help="size of the noise vector z")
    p.add_argument("--g-hidden", type=int, nargs="+", default=[1024, 1024], help="G's hidden widths")
    p.add_argument("--d-hidden", type=int, nargs="+", default=[256, 256], help="D's hidden widths")
    p.add_argument("--g-act", choices=["relu", "leaky"], default="relu", help="G's hidden activation")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"runs/{SCRIPT}", help="run folder")
    p.add_argument("--max-steps", type=int, help="stop when the run's total step count reaches this")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--generate", type=int, metavar="N", help="write N images from --out/checkpoint.pt, no training")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA and CPU)")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    for flag in ("epochs", "batch_size", "lr", "z_dim", "max_steps", "generate", "log_every"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            fail(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if min(args.g_hidden + args.d_hidden) <= 0:
        fail("--g-hidden and --d-hidden take positive widths")
    return args


# ----------------------------------------------------------------------------------------------------------
# Networks (design document 003; 002 through the flags). B is the batch size.
# ----------------------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z -> image. 003: Linear z->1024, ReLU, Linear 1024->1024, ReLU, Linear 1024->784, Tanh."""

    def __init__(self, z_dim=96, hidden=(1024, 1024), act="relu"):
        super().__init__()
        layers, width = [], z_dim                               # input z: (B, z_dim)
        for h in hidden:
            layers += [nn.Linear(width, h),                     # (B, h)
                       nn.ReLU() if act == "relu" else nn.LeakyReLU(0.01)]  # (B, h)
            width = h
        layers += [nn.Linear(width, 28 * 28),                   # (B, 784)
                   nn.Tanh()]                                   # (B, 784), pixels in [-1, 1] (detail 4)
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z).view(-1, 1, 28, 28)                  # (B, 1, 28, 28)


class Discriminator(nn.Module):
    """image -> logit. 003: Linear 784->256, LeakyReLU(0.01), Linear 256->256, LeakyReLU(0.01), Linear 256->1.

    002 writes Tanh on D's output; we output a logit instead (detail 3): a Tanh output is not a probability,
    and the sigmoid that turns a logit into one is inside BCEWithLogitsLoss.
    """

    def __init__(self, hidden=(256, 256)):
        super().__init__()
        layers, width = [nn.Flatten()], 28 * 28                 # (B, 784)
        for h in hidden:
            layers += [nn.Linear(width, h),                     # (B, h)
                       nn.LeakyReLU(0.01)]                      # (B, h)
            width = h
        layers += [nn.Linear(width, 1)]                         # (B, 1): the logit of D(x)
        self.net = nn.Sequential(*layers)

    def forward(self, x):                                       # x: (B, 1, 28, 28)
        return self.net(x).squeeze(1)                           # (B,)


def build(args, device):
    G = Generator(args.z_dim, args.g_hidden, args.g_act).to(device)
    D = Discriminator(args.d_hidden).to(device)
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {}  # one kernel for all parameters
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    return G, D, opt_G, opt_D


# ----------------------------------------------------------------------------------------------------------
# Data: all of MNIST as one uint8 tensor on the device, batched by indexing a permutation.
# (Per-image PIL transforms, not these small networks, would be the bottleneck.)
# ----------------------------------------------------------------------------------------------------------
def load_mnist(root):
    raw = Path(root) / "MNIST" / "raw"
    try:
        with contextlib.redirect_stdout(io.StringIO()):         # torchvision's mirror-by-mirror chatter
            data = torchvision.datasets.MNIST(root, train=True, download=True).data
    except Exception as e:  # no network, a firewall, a full disk, damaged files...
        why = " ".join(str(e).split())                          # torchvision's message, on one line
        if (raw / "train-images-idx3-ubyte").exists():
            fail(f"the MNIST files in {raw} cannot be read ({why}); replace them with the originals")
        fail(f"MNIST is not in {raw} and could not be downloaded ({why}); "
             "put train-images-idx3-ubyte and train-labels-idx1-ubyte (from the MNIST site) in that folder")
    return data                                                 # (N, 28, 28) uint8


def to_model_range(images_uint8):
    """uint8 [0, 255] -> float [-1, 1] (detail 4)."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail(f"--device {name}: MPS is not available on this machine (try --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        fail(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def bf16_is_native():
    """Whether this CPU computes bfloat16 in hardware; elsewhere autocast to bfloat16 is emulated and slow."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # missing in older torch: assume yes
    return not capabilities or any(capabilities.get(k) for k in ("avx512_bf16", "amx_bf16"))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: plain tensors and values only, so torch.load(..., weights_only=True) reads them.
# ----------------------------------------------------------------------------------------------------------
def save_checkpoint(path, state):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)                                       # atomic: a crash never leaves half a file


def load_checkpoint(path, args, device):
    if not path.is_file():
        fail(f"no checkpoint at {path} (train first, or point --out at a run folder)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        fail(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({type(e).__name__})")
    if not isinstance(ckpt, dict) or ckpt.get("script") != SCRIPT:
        owner = ckpt.get("script") if isinstance(ckpt, dict) else None
        fail(f"{path} was not written by {SCRIPT}.py" + (f" but by {owner}.py" if owner else ""))
    for flag in NETWORK_FLAGS:
        theirs, ours = ckpt["args"][flag], getattr(args, flag)
        if theirs != ours:
            as_flag = lambda v: " ".join(map(str, v)) if isinstance(v, list) else v  # [1024, 1024] -> 1024 1024
            fail(f"{path} was trained with --{flag.replace('_', '-')} {as_flag(theirs)}, not {as_flag(ours)}; "
                 "pass the same network flags")
    return ckpt


def write_gif(out):
    frames = [to_pil_image(torchvision.io.read_image(str(p))) for p in sorted((out / "samples").glob("*.png"))]
    frames[0].save(out / "progress.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)


# ----------------------------------------------------------------------------------------------------------
# Training (Algorithm 1)
# ----------------------------------------------------------------------------------------------------------
def train_step(G, D, opt_G, opt_D, x, z, amp):
    """One iteration of Algorithm 1 with k = 1: a D step, then a G step, on real x (B, 1, 28, 28) and noise z.

    Returns a (4,) tensor: loss of D, loss of G, D(x) and D(G(z)) as mean probabilities (no host sync).
    """
    B = len(x)
    real_fake = torch.cat([torch.ones(B, device=x.device), torch.zeros(B, device=x.device)])  # (2B,) targets
    with amp:
        fake = G(z)                                             # (B, 1, 28, 28), used by both steps
        # -- D step (Algorithm 1, ascend the gradient of eq. 1): maximise log D(x) + log(1 - D(G(z))), i.e.
        # minimise BCE(D(x), 1) + BCE(D(G(z)), 0). Real and fake go through D as one batch: D has no
        # BatchNorm, so this equals two separate passes and is faster. fake.detach(): G is not updated here.
        d_out = D(torch.cat([x, fake.detach()])).float()        # (2B,) logits
        loss_d = 2 * F.binary_cross_entropy_with_logits(d_out, real_fake)  # mean over real + mean over fake
    opt_D.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_D.step()

    # -- G step (section 3, non-saturating): maximise log D(G(z)), i.e. minimise BCE(D(G(z)), 1), instead of
    # minimising log(1 - D(G(z))). The fake batch is reused; D is frozen so no D weight gradient is computed.
    D.requires_grad_(False)
    with amp:
        d_gen = D(fake).float()                                 # (B,) logits of the updated D
        loss_g = F.binary_cross_entropy_with_logits(d_gen, real_fake[:B])
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    D.requires_grad_(True)

    d_x, d_gz = torch.sigmoid(d_out.detach()).view(2, B).mean(1)  # D(x), D(G(z)) as probabilities
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_gz])


def train(args):
    device = pick_device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    ckpt_path = out / "checkpoint.pt"
    if not args.resume and ckpt_path.exists():
        fail(f"--out {out} already holds a run (checkpoint.pt): continue it with --resume, or pick another --out")
    ckpt = load_checkpoint(ckpt_path, args, device) if args.resume else None
    if args.amp and device.type not in ("cpu", "cuda"):
        fail(f"--amp needs a cpu or cuda device, not {device.type}")
    if args.amp and device.type == "cpu" and not bf16_is_native():
        print("note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --amp will be slower than fp32",
              file=sys.stderr)

    data = load_mnist(args.data).to(device)                     # (N, 28, 28) uint8, on the device once
    n, B = len(data), args.batch_size
    steps_per_epoch = n // B                                    # the last partial batch is dropped
    if steps_per_epoch == 0:
        fail(f"{args.data} holds {n} images, fewer than one batch of {B}")

    torch.manual_seed(args.seed)                                # initial weights
    G, D, opt_G, opt_D = build(args, device)
    gen = torch.Generator(device).manual_seed(args.seed)        # every random draw of training: z, permutations
    fixed_z = torch.randn(64, args.z_dim, device=device, generator=gen)  # (64, z_dim): the same every epoch
    step, epoch, batch_in_epoch, perm, elapsed = 0, 0, 0, None, 0.0
    if ckpt:
        G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"])
        opt_G.load_state_dict(ckpt["opt_G"]), opt_D.load_state_dict(ckpt["opt_D"])
        for group in opt_G.param_groups + opt_D.param_groups:
            group["lr"] = args.lr                               # a resumed run may change the learning rate
        gen.set_state(ckpt["rng"].cpu())
        fixed_z, perm = ckpt["fixed_z"], ckpt["perm"]
        step, epoch, batch_in_epoch, elapsed = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["time"]
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(
        args.max_steps, args.epochs * steps_per_epoch)
    if step >= last_step:
        fail(f"the run in {out} is already at step {step}; raise --epochs or --max-steps to train further")

    (out / "samples").mkdir(parents=True, exist_ok=True)
    if not ckpt:
        save_image(data[:64].unsqueeze(1) / 255, out / "real.png", nrow=8)  # (64, 1, 28, 28) in [0, 1]
    log_file = open(out / "log.csv", "a" if ckpt else "w", newline="")
    log = csv.writer(log_file)
    if not ckpt:
        log.writerow(["step", "epoch", "time", "loss_d", "loss_g", "d_real", "d_fake"])

    stop = []                                                   # Ctrl-C: finish the step, save, leave;
    previous_handler = signal.signal(                           # a second Ctrl-C stops at once
        signal.SIGINT, lambda *_: (stop.append(1), signal.signal(signal.SIGINT, signal.SIG_DFL)))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    pending, stamps = [], []                                    # per-step stats, flushed with one .tolist()
    t0 = time.perf_counter() - elapsed
    first_step, t_first, t_log = step, time.perf_counter(), time.perf_counter()

    def flush():
        """Write the pending steps to log.csv and print one progress line; stop on NaN."""
        nonlocal pending, stamps, t_log
        if not pending:
            return
        rows = torch.stack(pending).tolist()                    # the only host sync of the loop
        if not all(math.isfinite(v) for row in rows for v in row):
            fail(f"losses became NaN or infinite by step {step}; the last good checkpoint is kept in {ckpt_path}")
        s0 = step - len(rows)
        log.writerows([s0 + i + 1, epoch + 1, f"{t:.3f}", *(f"{v:.5f}" for v in row)]
                      for i, (t, row) in enumerate(zip(stamps, rows)))
        log_file.flush()
        rate = (step - first_step) / (time.perf_counter() - t_first)
        loss_d, loss_g, d_real, d_fake = rows[-1]
        print(f"epoch {epoch + 1}/{args.epochs} step {step}/{last_step} | loss D {loss_d:.3f} G {loss_g:.3f} | "
              f"D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | {rate * B:.0f} img/s | "
              f"{(last_step - step) / rate / 60:.1f} min left", flush=True)
        pending, stamps, t_log = [], [], time.perf_counter()

    def checkpoint():
        flush()
        with torch.no_grad():                                   # (G has no BatchNorm: train mode = eval mode)
            grid = (G(fixed_z).float() + 1) / 2                 # (64, 1, 28, 28) in [0, 1]
        save_image(grid, out / "samples" / f"epoch_{epoch + (batch_in_epoch > 0):04d}.png", nrow=8)
        write_gif(out)
        save_checkpoint(ckpt_path, {
            "script": SCRIPT, "args": vars(args), "G": G.state_dict(), "D": D.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "perm": perm, "rng": gen.get_state(), "fixed_z": fixed_z,
            "time": time.perf_counter() - t0})

    try:
        while step < last_step and not stop:
            if perm is None:
                perm = torch.randperm(n, device=device, generator=gen)  # a new order each epoch
            while batch_in_epoch < steps_per_epoch and step < last_step and not stop:
                idx = perm[batch_in_epoch * B:(batch_in_epoch + 1) * B]
                x = to_model_range(data[idx]).unsqueeze(1)      # (B, 1, 28, 28) real images in [-1, 1]
                z = torch.randn(B, args.z_dim, device=device, generator=gen)  # (B, z_dim) ~ N(0, I)
                pending.append(train_step(G, D, opt_G, opt_D, x, z, amp))
                stamps.append(time.perf_counter() - t0)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                if time.perf_counter() - t_log > args.log_every:
                    flush()
            flush()
            if batch_in_epoch == steps_per_epoch:               # a whole epoch done
                epoch, batch_in_epoch, perm = epoch + 1, 0, None
            checkpoint()                                        # every epoch end, --max-steps, Ctrl-C
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        log_file.close()
    seconds = time.perf_counter() - t_first
    print(f"trained {step - first_step} steps in {seconds:.1f} s "
          f"({(step - first_step) * B / seconds:.0f} images/s); run folder {out}")


def generate(args):
    """Write N single images and a grid of the first 64 from the trained G."""
    device = pick_device(args.device)
    out = Path(args.out)
    ckpt = load_checkpoint(out / "checkpoint.pt", args, device)
    G = Generator(args.z_dim, args.g_hidden, args.g_act).to(device)
    G.load_state_dict(ckpt["G"])
    gen = torch.Generator(device).manual_seed(args.seed)
    folder = out / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    images, seconds = [], 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
        for start in range(0, args.generate, 500):
            z = torch.randn(min(500, args.generate - start), args.z_dim, device=device, generator=gen)
            t = time.perf_counter()
            x = G(z)                                            # (b, 1, 28, 28)
            images.append(((x.float() + 1) / 2).clamp_(0, 1).cpu())  # .cpu() waits for the device
            seconds += time.perf_counter() - t
    images = torch.cat(images)
    for i, image in enumerate(images):
        save_image(image, folder / f"{i:06d}.png")
    save_image(images[:64], folder / "grid.png", nrow=8)
    print(f"wrote {len(images)} images to {folder} (G: {len(images) / seconds:.0f} images/s)")


def main(argv=None):
    args = parse_args(argv)
    generate(args) if args.generate else train(args)


if __name__ == "__main__":
    main()
