"""Vanilla GAN on MNIST, with multilayer-perceptron networks.

Paper: Goodfellow et al. 2014, "Generative Adversarial Nets", arXiv:1406.2661.
Networks: the MLPs of the Stanford CS231n GAN notebook (default); the smaller "Simple GAN" MLPs of the
giakou4/gans repository through flags. Both tables are in the README.

Run (MNIST is downloaded into --data when it is not there):
    python vanilla_gan.py                                   # defaults: the CS231n notebook's networks
    python vanilla_gan.py --z-dim 64 --g-hidden 256 --d-hidden 128 --g-act leaky   # the Simple GAN's networks
    python vanilla_gan.py --resume --epochs 200             # continue the run in --out
    python vanilla_gan.py --generate 1000                   # write images from --out/checkpoint.pt

Run folder (--out, default runs/vanilla_gan): real.png (real digits), samples/epoch_NNNN.png (the same fixed noise every
epoch), progress.gif (those grids animated), log.csv (losses, D(x), D(G(z)) per step), diversity.csv (how
different those samples are, per epoch), checkpoint.pt (everything needed to continue bit-for-bit) and
checkpoints/epoch_NNNN.pt (the last 3 epochs', to roll back to), generated/ and generated_grid.png (--generate).
It warns in one line when D wins outright or the samples collapse: see "When training goes wrong" in the README.

Implementation details, each tied to the paper:
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (eq. 1), trained by alternating one
    D step and one G step on a minibatch (Algorithm 1, with k = 1 as in the paper's experiments).
 2. G maximises log D(G(z)) instead of minimising log(1 - D(G(z))) (section 3: "non-saturating" loss,
    strong gradients early in training when D rejects every sample).
 3. D outputs a logit; sigmoid + binary cross-entropy are fused in BCEWithLogitsLoss, the same objective in a
    numerically stable form (safe under bf16 autocast too).
 4. Real pixels are scaled to [-1, 1] to match G's Tanh output.
 5. Adam (lr 1e-3, beta1 0.5), as in the CS231n notebook; the paper itself used SGD with momentum.
"""
import argparse
import contextlib
import csv
import io
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.datasets.mnist import read_image_file
from torchvision.utils import save_image

SCRIPT = Path(__file__).stem
NETWORK_FLAGS = ("z_dim", "g_hidden", "d_hidden", "g_act")  # must match between a checkpoint and the flags


# ----------------------------------------------------------------------------------------------------------
# Networks: the CS231n notebook's MLPs by default, the Simple GAN's through the flags. B is the batch size.
# ----------------------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z -> image. CS231n: Linear z->1024, ReLU, Linear 1024->1024, ReLU, Linear 1024->784, Tanh."""

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
    """image -> logit. CS231n: Linear 784->256, LeakyReLU(0.01), Linear 256->256, LeakyReLU(0.01), Linear 256->1.

    The Simple GAN's table writes Tanh on D's output; we output a logit instead (detail 3): a Tanh output is not
    a probability, and the sigmoid that turns a logit into one is inside BCEWithLogitsLoss.
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


def noise(n, args, device, rng=None):
    """n samples of z ~ N(0, I), the prior p_z of the paper: (n, z_dim)."""
    return torch.randn(n, args.z_dim, device=device, generator=rng)


def build(args, device):
    """G, D and their Adam optimizers (detail 5)."""
    G = Generator(args.z_dim, args.g_hidden, args.g_act).to(device)
    D = Discriminator(args.d_hidden).to(device)
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {}  # one kernel for all parameters
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    return G, D, opt_G, opt_D


# ----------------------------------------------------------------------------------------------------------
# Losses and one iteration of Algorithm 1
# ----------------------------------------------------------------------------------------------------------
def train_step(G, D, opt_G, opt_D, x, z, amp):
    """One iteration of Algorithm 1 with k = 1: a D step, then a G step, on real x (B, 1, 28, 28) and noise z.

    Returns a (4,) tensor: loss of D, loss of G, D(x) and D(G(z)) as mean probabilities (no host sync).
    """
    B = len(x)
    ones = torch.ones(B, device=x.device)                       # (B,) target "real"
    zeros = torch.zeros(B, device=x.device)                     # (B,) target "fake"
    with amp:
        fake = G(z)                                             # (B, 1, 28, 28), used by both steps
        # -- D step (Algorithm 1, ascend the gradient of eq. 1): maximise log D(x) + log(1 - D(G(z))), i.e.
        # minimise BCE(D(x), 1) + BCE(D(G(z)), 0). Real and fake go through D as one batch: D has no
        # BatchNorm, so this equals two separate passes and is faster. fake.detach(): G is not updated here.
        logits = D(torch.cat([x, fake.detach()])).float()       # (2B,) logits: B real, then B fake
        real_logits, fake_logits = logits[:B], logits[B:]       # (B,), (B,)
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
                  + F.binary_cross_entropy_with_logits(fake_logits, zeros))
    opt_D.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_D.step()

    # -- G step (section 3, non-saturating): maximise log D(G(z)), i.e. minimise BCE(D(G(z)), 1), instead of
    # minimising log(1 - D(G(z))). The fake batch is reused; D is frozen so no D weight gradient is computed.
    D.requires_grad_(False)
    with amp:
        gen_logits = D(fake).float()                            # (B,) logits of the updated D
        loss_g = F.binary_cross_entropy_with_logits(gen_logits, ones)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    D.requires_grad_(True)

    d_x = torch.sigmoid(real_logits.detach()).mean()            # D(x), a probability
    d_g_z = torch.sigmoid(fake_logits.detach()).mean()          # D(G(z)), a probability
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


# ----------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------
def train(args):
    device = pick_device(args.device)
    out = Path(args.out)
    ckpt = open_run_folder(out, args, device)                   # None for a new run
    check_amp(args, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    data = load_mnist(args.data).to(device)                     # (N, 28, 28) uint8, on the device once
    if len(data) < args.batch_size:                             # the last partial batch of an epoch is dropped
        fail(f"{args.data} holds {len(data)} images, fewer than one batch of {args.batch_size}")
    torch.manual_seed(args.seed)                                # initial weights
    G, D, opt_G, opt_D = build(args, device)
    rng = torch.Generator(device).manual_seed(args.seed)        # every random draw of training: z
    fixed_z = noise(64, args, "cpu", torch.Generator().manual_seed(args.seed)).to(device)  # grids, every epoch
    pos = Position(len(data), args.batch_size)
    if ckpt:
        restore(ckpt, args, (G, D, opt_G, opt_D), pos)
        rng.set_state(ckpt["rng"].cpu())
        fixed_z = ckpt["fixed_z"]
    last_step = pos.last_step(args.epochs, args.max_steps, out)
    log = RunLog(out, args, pos, last_step, ckpt["time"] if ckpt else 0.0, device)
    if not ckpt:
        save_image(data[:64].unsqueeze(1) / 255, out / "real.png", nrow=8)  # (64, 1, 28, 28) in [0, 1]

    with StopSignals() as signals:
        while pos.step < last_step and not signals:
            for idx in pos.batches(args.seed).to(device):       # the rest of this epoch, (B,) indices each
                x = to_model_range(data[idx]).unsqueeze(1)      # (B, 1, 28, 28) real images in [-1, 1]
                z = noise(len(idx), args, device, rng)          # (B, z_dim) ~ N(0, I)
                stats = train_step(G, D, opt_G, opt_D, x, z, amp)  # (4,), on the device
                pos.advance()
                log.record(stats, pos)
                if should_stop(signals, log, pos.step) or pos.step == last_step:
                    break
            should_stop(signals, log, pos.step, now=True)       # no NaN reaches a checkpoint
            save_progress(out, args, (G, D, opt_G, opt_D), pos, rng.get_state(), fixed_z, log)
    log.close()


# ----------------------------------------------------------------------------------------------------------
# Plumbing: data, devices, stopping, checkpoints, the run folder and its log
# ----------------------------------------------------------------------------------------------------------
def load_mnist(root):
    """MNIST's training images as one uint8 tensor (N, 28, 28), downloaded by torchvision into root if missing."""
    raw = Path(root) / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        try:
            with contextlib.redirect_stdout(io.StringIO()):     # torchvision's mirror-by-mirror chatter
                torchvision.datasets.MNIST(root, train=True, download=True)
        except Exception as e:                                  # no network, a firewall, a full disk...
            cause = re.sub(r"^<urlopen error (\[Errno -?\d+\] )?|>$", "", str(e).strip().splitlines()[-1])
            fail(f"MNIST is not in {raw} and could not be downloaded ({cause}); put the unzipped "
                 "train-images-idx3-ubyte and train-labels-idx1-ubyte from the MNIST site in that folder")
    try:
        return read_image_file(str(raw / "train-images-idx3-ubyte"))  # (N, 28, 28) uint8
    except Exception as e:
        fail(f"the MNIST files in {raw} cannot be read ({type(e).__name__}); replace them with the originals")


def to_model_range(images_uint8):
    """uint8 [0, 255] -> float [-1, 1] (detail 4)."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def epoch_batches(n, batch_size, seed, epoch, seen, rank=0, world=1):
    """This process's batches of sample indices, (steps, batch_size), for the rest of an epoch `seen` samples in.

    The epoch's order is a permutation drawn from (--seed, epoch) alone, as torch's DistributedSampler draws it,
    so a resumed run recreates it. Step k of an epoch uses positions [k*B*world, (k+1)*B*world) of the order,
    process r every world-th of them from r: a run resumed with another batch size or number of processes
    goes on from the same sample, and no sample is used twice or skipped. The rest of the epoch, fewer
    samples than one step takes, is left out.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))[seen:]
    steps = len(order) // (batch_size * world)
    return order[rank:steps * batch_size * world:world].view(steps, batch_size)


class Position:
    """Where a run is: optimizer steps taken, whole epochs done, and samples of the current epoch already used
    (by all processes together). Saved in the checkpoint, so that a resumed run goes on from the same sample
    whatever its batch size and number of processes."""

    def __init__(self, n, batch_size, rank=0, world=1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.step, self.epoch, self.seen = 0, 0, 0

    def steps_left_in_epoch(self):
        return (self.n - self.seen) // (self.batch_size * self.world)

    def batches(self, seed):
        return epoch_batches(self.n, self.batch_size, seed, self.epoch, self.seen, self.rank, self.world)

    def advance(self):
        """One optimizer step done; the epoch ends when what is left of it is less than a step."""
        self.step += 1
        self.seen += self.batch_size * self.world
        if self.steps_left_in_epoch() == 0:
            self.epoch, self.seen = self.epoch + 1, 0

    def last_step(self, epochs, max_steps, out):
        """The step at which --epochs (the end of that epoch) or --max-steps (a total count) stops the run."""
        last = self.step
        if self.epoch < epochs:
            last += self.steps_left_in_epoch() + (epochs - self.epoch - 1) * (self.n // (self.batch_size * self.world))
        last = min(last, max_steps or last)
        if last <= self.step:
            fail(f"the run in {out} is already at step {self.step} (epoch {self.epoch}); "
                 "raise --epochs or --max-steps to train further")
        return last

    def state(self):
        return {"step": self.step, "epoch": self.epoch, "seen": self.seen, "world": self.world,
                "batch_in_epoch": self.seen // (self.batch_size * self.world)}


def restore(ckpt, args, models, pos):
    """Continue from a checkpoint: weights, optimizer states, and the position in the data (said in one line
    when the batch size or the number of processes changed)."""
    G, D, opt_G, opt_D = models
    G.load_state_dict(ckpt["G"])
    D.load_state_dict(ckpt["D"])
    opt_G.load_state_dict(ckpt["opt_G"])
    opt_D.load_state_dict(ckpt["opt_D"])
    for group in opt_G.param_groups + opt_D.param_groups:
        group["lr"] = args.lr                                   # a resumed run may change the learning rate
    pos.step, pos.epoch, pos.seen = ckpt["step"], ckpt["epoch"], ckpt["seen"]
    before, now = (ckpt["world"], ckpt["args"]["batch_size"]), (pos.world, pos.batch_size)
    if before != now and pos.rank == 0:
        where = f"epoch {pos.epoch + 1} goes on from sample {pos.seen} of {pos.n}"
        if pos.seen and pos.steps_left_in_epoch() == 0:
            where = f"the {pos.n - pos.seen} samples left of epoch {pos.epoch + 1} are fewer than one step: it ends"
        print(f"resuming with {now[0]} x {now[1]} samples a step instead of {before[0]} x {before[1]}: {where}")
    if pos.seen and pos.steps_left_in_epoch() == 0:
        pos.epoch, pos.seen = pos.epoch + 1, 0


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


def check_amp(args, device):
    """--amp (bfloat16 autocast) runs on CUDA and on CPUs; it is fast only on CPUs with bfloat16 instructions."""
    if args.amp and device.type not in ("cpu", "cuda"):
        fail(f"--amp needs a cpu or cuda device, not {device.type}")
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # missing in older torch: assume native
    native = not capabilities or any(capabilities.get(k) for k in ("avx512_bf16", "amx_bf16"))
    if args.amp and device.type == "cpu" and not native and int(os.environ.get("RANK", "0")) == 0:
        print("note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --amp will be slower than fp32",
              file=sys.stderr)


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (sent by `kill`, schedulers and torchrun) ask the run to stop at the next step
    boundary, save a checkpoint and exit with status 0. A repeat within a second is the same request arriving
    twice (a signal to the whole process group reaches torchrun's children directly and again through
    torchrun); a later one stops at once. The previous handlers come back on leaving the `with` block."""

    def __enter__(self):
        self.asked = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.asked is None:
            self.asked = time.monotonic()
        elif time.monotonic() - self.asked > 1.0:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def __bool__(self):
        return self.asked is not None

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


CHECK_EVERY = 10  # steps between checks of the losses for NaN (one host sync) and, with torchrun, of stop signals


def should_stop(signals, log, step, now=False):
    """Whether to stop after this step: a stop signal came. The losses are checked too, every CHECK_EVERY
    steps and (now=True) before each save: NaN or infinite losses end the run in one line, and the last
    good checkpoint stays."""
    if (now or step % CHECK_EVERY == 0) and not log.finite.item():
        log.close(summary=False)
        fail(f"losses became NaN or infinite by step {step}; the last good checkpoint is kept in {log.folder}")
    return bool(signals)


def save_checkpoint(path, state):
    """Plain tensors and values only, so torch.load(..., weights_only=True) reads it back."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)                                       # atomic: a crash never leaves half a file


def load_checkpoint(path, args, device):
    """A checkpoint of this script with the same network flags, or one clear line why not."""
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
            as_text = " ".join(map(str, theirs)) if isinstance(theirs, list) else theirs  # [1024, 1024] -> 1024 1024
            ours_text = " ".join(map(str, ours)) if isinstance(ours, list) else ours
            fail(f"{path} was trained with --{flag.replace('_', '-')} {as_text}, not {ours_text}; "
                 "pass the same network flags")
    return ckpt


def open_run_folder(out, args, device):
    """The checkpoint to resume or None; a new run must not overwrite an old one. --resume alone continues
    from checkpoint.pt; --resume PATH from another checkpoint of the run, such as checkpoints/epoch_0007.pt to
    roll back to before a collapse (the run in --out then goes on from there: its log is cut back to that step)."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    if not args.resume and (out / "checkpoint.pt").exists():
        fail(f"--out {out} already holds a run (checkpoint.pt): continue it with --resume, or pick another --out")
    path = out / "checkpoint.pt" if args.resume is True else Path(args.resume or "")
    ckpt = load_checkpoint(path, args, device) if args.resume else None
    if ckpt and "seen" not in ckpt:
        fail(f"{path} comes from an older {SCRIPT}.py that did not save its place in the data; "
             "--generate still reads it, training goes on only in a new --out")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    return ckpt


D_WINS_STEPS = 300      # warn when D(G(z)) has averaged below D_WINS_BELOW over this many steps,
D_WINS_BELOW = 0.05     # which makes G's gradient vanish (see "When training goes wrong" in the README)
COLLAPSE = 1 / 3        # warn when the samples' diversity falls below this fraction of the run's best
KEEP_EPOCHS = 3         # epoch checkpoints kept in checkpoints/ beside checkpoint.pt
README = "see \"When training goes wrong\" in the README of this script's repository"


def reopen_csv(path, columns, step):
    """Open a CSV log of the run folder for appending: its header and the rows of steps up to `step` (a new run:
    0), so that rows written after the checkpoint by a run killed before its next one are dropped."""
    rows = []
    if step and path.exists():
        with open(path, newline="") as f:
            rows = [row for row in list(csv.reader(f))[1:] if row and int(row[0]) <= step]
    with open(path.with_name(path.name + ".tmp"), "w", newline="") as f:
        csv.writer(f).writerows([columns] + rows)
    os.replace(path.with_name(path.name + ".tmp"), path)
    file = open(path, "a", newline="")
    return file, csv.writer(file), rows


class RunLog:
    """log.csv, one row per step (losses, D(x), D(G(z)), seconds since the run began), and a progress line
    every --log-every seconds. The stats stay on the device until then and are fetched with one .tolist():
    one host sync per line, not per step. Only process 0 (lead) writes. On resume, the rows after the
    checkpoint's step (logged by a run killed between two checkpoints) are dropped, so the log holds each
    step once and agrees with the checkpoint. It also watches for the two failures a user should hear of at
    once: D winning outright, and the samples collapsing (diversity.csv, one row per save)."""

    COLUMNS = ["step", "epoch", "time", "loss_d", "loss_g", "d_real", "d_fake"]

    def __init__(self, out, args, pos, last_step, elapsed, device, lead=True):
        self.folder, self.args, self.last_step, self.lead = out, args, last_step, lead
        self.pending, self.finite = [], torch.ones((), dtype=torch.bool, device=device)
        self.t0 = time.perf_counter() - elapsed                 # the run's clock, carried across resumes
        self.step = self.first_step = pos.step
        self.t_first = self.t_line = time.perf_counter()
        self.images_per_step = args.batch_size * pos.world
        self.recent, self.d_wins_told, self.collapse_told = [], False, False
        if lead:
            self.file, self.csv, _ = reopen_csv(out / "log.csv", self.COLUMNS, pos.step)
            self.diversity_file, self.diversity_csv, rows = reopen_csv(
                out / "diversity.csv", ["step", "epoch", "diversity"], pos.step)
            self.best_diversity = max((float(row[2]) for row in rows), default=0.0)

    def record(self, stats, pos):
        """Keep one step's (4,) stats; write them out when --log-every seconds have passed."""
        self.finite = self.finite & stats.isfinite().all()
        self.step = pos.step
        if self.lead:
            self.pending.append((pos.step, pos.epoch + (pos.seen > 0), time.perf_counter() - self.t0, stats))
            if time.perf_counter() - self.t_line > self.args.log_every:
                self.flush()

    def flush(self):
        if not self.pending:
            return
        values = torch.stack([stats for *_, stats in self.pending]).tolist()  # the one host sync
        self.csv.writerows([step, epoch, f"{t:.3f}", *(f"{v:.5f}" for v in row)]
                           for (step, epoch, t, _), row in zip(self.pending, values))
        self.file.flush()
        step, epoch = self.pending[-1][:2]
        loss_d, loss_g, d_real, d_fake = values[-1]
        rate = (step - self.first_step) / (time.perf_counter() - self.t_first)
        print(f"epoch {epoch}/{self.args.epochs} step {step}/{self.last_step} | loss D {loss_d:.3f} G {loss_g:.3f}"
              f" | D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | {rate * self.images_per_step:.0f} img/s | "
              f"{(self.last_step - step) / rate / 60:.1f} min left", flush=True)
        self.pending, self.t_line = [], time.perf_counter()
        self.watch_d(values, step)

    def watch_d(self, values, step):
        """One line when D wins outright: D(G(z)) averaged below D_WINS_BELOW over the last D_WINS_STEPS steps.
        D then tells every fake apart and G's loss is large while its gradient is small; said once, and again
        only after D(G(z)) has recovered."""
        self.recent = (self.recent + [row[3] for row in values])[-D_WINS_STEPS:]
        d_fake = sum(self.recent) / len(self.recent)
        winning = len(self.recent) == D_WINS_STEPS and d_fake < D_WINS_BELOW
        if winning and not self.d_wins_told:
            print(f"warning: D is winning outright: D(G(z)) averaged {d_fake:.3f} over the last {D_WINS_STEPS} "
                  f"steps (to step {step}; G's loss {values[-1][1]:.2f}), so G learns little; {README}", flush=True)
        self.d_wins_told = winning

    def diversity(self, images, pos):
        """diversity.csv: how different the fixed-noise samples are from one another at each save (the standard
        deviation of each pixel across the samples, images in [0, 1], averaged over pixels; 0 when all are the
        same). One line when it falls below COLLAPSE of the run's best, or below one grey level (1/255): the
        samples have collapsed to a few images, or to one."""
        value = images.float().std(dim=0).mean().item()
        self.diversity_csv.writerow([pos.step, pos.epoch + (pos.seen > 0), f"{value:.5f}"])
        self.diversity_file.flush()
        collapsed = value < max(COLLAPSE * self.best_diversity, 1 / 255)
        if collapsed and not self.collapse_told:
            print(f"warning: the samples have collapsed: their diversity is {value:.4f} at step {pos.step}, "
                  f"the run's best {self.best_diversity:.4f} (diversity.csv); {README}", flush=True)
        self.collapse_told = collapsed
        self.best_diversity = max(self.best_diversity, value)

    def seconds(self):
        """Seconds of training in this run, across resumes."""
        return time.perf_counter() - self.t0

    def close(self, summary=True):
        """Write what is pending; with summary, say how many steps this process trained and how fast."""
        if not self.lead or self.file.closed:
            return
        self.flush()
        self.file.close()
        self.diversity_file.close()
        if summary:
            steps, seconds = self.step - self.first_step, time.perf_counter() - self.t_first
            print(f"trained {steps} steps in {seconds:.1f} s ({steps * self.images_per_step / seconds:.0f} "
                  f"images/s); run folder {self.folder}", flush=True)


def sample(G, z):
    """G(z) for the sample grids and --generate, without gradients, with BatchNorm (where G has it) normalising
    by the statistics of this batch of samples and its running statistics left untouched.

    Why not eval mode (running statistics)? They start at mean 0 and variance 1 and follow the training batches
    with momentum 0.1, so early in a run they are far from the statistics G's layers really produce and
    eval-mode samples come out nearly flat. Batch statistics are right from the first step, and over 64 or
    more samples a sample hardly depends on the others. Switching track_running_stats off for the call keeps
    the running statistics (and so the checkpoint and the bit-for-bit resume) unchanged.
    """
    norms = [m for m in G.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m in norms:
        m.track_running_stats = False
    try:
        with torch.no_grad():
            return G.train()(z)
    finally:
        for m in norms:
            m.track_running_stats = True


def write_gif(out):
    """progress.gif: the fixed-noise grids of samples/, one frame per grid, at most 600 pixels a side (the
    full-size grids stay in samples/). The GIF is written anew at every save, and GIF's colour reduction of
    a 256x256 run's 2058-pixel grid takes most of a second a frame: 100 epochs would cost over a minute a save
    and a GiB of frames in memory."""
    frames = []
    for path in sorted((out / "samples").glob("*.png")):
        frame = torchvision.datasets.folder.pil_loader(str(path))
        frame.thumbnail((600, 600))                             # keeps the aspect; smaller grids are left alone
        frames.append(frame)
    frames[0].save(out / "progress.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)


def keep_epoch_checkpoint(out, epoch):
    """A copy of checkpoint.pt as checkpoints/epoch_NNNN.pt at each epoch end, to roll back to with --resume
    PATH after a collapse. The last KEEP_EPOCHS are kept; older ones, and any of later epochs (from before a
    roll-back), are deleted."""
    folder = out / "checkpoints"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(out / "checkpoint.pt", folder / f"epoch_{epoch:04d}.pt")
    for path in folder.glob("epoch_*.pt"):
        if not epoch - KEEP_EPOCHS < int(path.stem[6:]) <= epoch:
            path.unlink()


def save_progress(out, args, models, pos, rng_state, fixed_z, log):
    """At each epoch end, at --max-steps and on a stop: the fixed-noise grid, its diversity, progress.gif and
    checkpoint.pt (and at an epoch end a copy of it in checkpoints/)."""
    if not log.lead:
        return
    log.flush()
    G, D, opt_G, opt_D = models
    grid = (sample(G, fixed_z).float() + 1) / 2                 # (64, C, H, W) in [0, 1]
    save_image(grid, out / "samples" / f"epoch_{pos.epoch + (pos.seen > 0):04d}.png", nrow=8)
    log.diversity(grid, pos)
    write_gif(out)
    save_checkpoint(out / "checkpoint.pt", {
        "script": SCRIPT, "args": vars(args), "G": G.state_dict(), "D": D.state_dict(),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), **pos.state(), "rng": rng_state,
        "fixed_z": fixed_z, "time": log.seconds()})
    if pos.seen == 0:
        keep_epoch_checkpoint(out, pos.epoch)


# ----------------------------------------------------------------------------------------------------------
# Generating from a trained run, the flags, and the command line
# ----------------------------------------------------------------------------------------------------------
def generate(args):
    """--generate N: N single PNGs in --out/generated/ (exactly N files, as FID tools expect of a folder) and a
    grid of the first 64 beside it, generated_grid.png. Written chunk by chunk: memory does not grow with N.
    z is drawn in chunks of max(64, --batch-size), so every image is normalised with at least 63 others."""
    device = pick_device(args.device)
    out = Path(args.out)
    ckpt = load_checkpoint(out / "checkpoint.pt", args, device)
    G = build(args, device)[0]
    G.load_state_dict(ckpt["G"])
    rng = torch.Generator(device).manual_seed(args.seed)
    folder = out / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    chunk, first, seconds = max(64, args.batch_size), None, 0.0
    for start in range(0, args.generate, chunk):
        z = noise(chunk, args, device, rng)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            images = ((sample(G, z).float() + 1) / 2).clamp_(0, 1)[:args.generate - start].cpu()  # waits for G
        seconds += time.perf_counter() - t
        for i, image in enumerate(images):
            save_image(image, folder / f"{start + i:06d}.png")
        first = images[:64] if first is None else first
    save_image(first, out / "generated_grid.png", nrow=8)
    print(f"wrote {args.generate} images to {folder} and a grid of the first {len(first)} to "
          f"{out / 'generated_grid.png'} (G: {args.generate / seconds:.0f} images/s)")


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="./data", help="MNIST root (holds MNIST/raw); downloaded there if missing")
    p.add_argument("--epochs", type=int, default=100, help="train until the end of this epoch")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, for G and D")
    p.add_argument("--beta1", type=float, default=0.5, help="Adam's beta1")
    p.add_argument("--z-dim", type=int, default=96, help="size of the noise vector z")
    p.add_argument("--g-hidden", type=int, nargs="+", default=[1024, 1024], help="G's hidden widths")
    p.add_argument("--d-hidden", type=int, nargs="+", default=[256, 256], help="D's hidden widths")
    p.add_argument("--g-act", choices=["relu", "leaky"], default="relu", help="G's hidden activation")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0, help="initial weights, noise and data order all come from it")
    p.add_argument("--out", default=f"runs/{SCRIPT}", help="run folder")
    p.add_argument("--max-steps", type=int, help="stop when the run's total step count reaches this")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its checkpoint.pt, or from CHECKPOINT (one of its "
                        "checkpoints/epoch_NNNN.pt, to roll back)")
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


def main(argv=None):
    args = parse_args(argv)
    if args.generate:
        generate(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
