"""DCGAN at 64x64 on any folder of photos (CelebA faces by default), on one CPU or GPU or on many with torchrun.

Paper: Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks" (DCGAN), arXiv:1511.06434; the game itself: Goodfellow et al. 2014, arXiv:1406.2661.
Networks: the PyTorch DCGAN faces tutorial's (--ngf 64 --ndf 64, the default) and the paper's wider ones of its
figure 1 (--ngf 128 --ndf 128). Both tables are in the README.

    python dcgan64.py --data ./celeba --device cuda   # any folder of images; --amp --compile --cache: faster
    python dcgan64.py --data ./celeba --resume --epochs 20     # continue the run in --out
    python dcgan64.py --generate 1000                          # images from --out/checkpoint.pt
    torchrun --standalone --nproc_per_node 4 dcgan64.py --data ./celeba      # 4 GPUs, --batch-size each

Run folder (--out): real.png, samples/epoch_NNNN.png (fixed noise), log.csv (a row a step), checkpoint.pt (resumes
bit for bit on CPU), checkpoints/ (the last 3 epochs, for --resume PATH), generated/. tools/report.py checks a run.

Implementation details, each tied to the paper (section numbers of arXiv:1511.06434 unless said otherwise):
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (Goodfellow eq. 1), one D step then one
    G step per minibatch (Goodfellow Algorithm 1, k = 1).
 2. G maximises log D(G(z)) instead of minimising log(1 - D(G(z))) (Goodfellow section 3, "non-saturating").
 3. D outputs a logit; sigmoid + binary cross-entropy are fused in BCEWithLogitsLoss: the same objective,
    numerically stable, and safe under autocast (a Sigmoid layer followed by BCELoss is neither).
 4. All-convolutional nets: strided convolutions in D, fractionally-strided (transposed) convolutions in G,
    no pooling and no fully connected hidden layers (section 3, guidelines 1 and 3).
 5. BatchNorm in G and D, except G's output layer and D's input layer (section 3, guideline 2).
 6. ReLU in G with Tanh on the output, LeakyReLU(0.2) in D (section 3, guidelines 4 and 5; slope 0.2 from
    section 4). The faces project whose 64x64 table the README shows writes LeakyReLU in G and no Tanh:
    --g-act leaky builds exactly that generator; the default follows the paper.
 7. z ~ N(0, I) of size 100 is "projected and reshaped" to 4x4 (figure 1): here a 4x4 transposed convolution
    of the 1x1 input, which is exactly a fully connected layer z -> (8*ngf*4*4) followed by a reshape.
 8. Images scaled to [-1, 1], the range of Tanh, and no other pre-processing (section 4); photos are resized on
    their shorter side and centre-cropped to 64x64 first, as the PyTorch tutorial does.
 9. Weights from N(0, 0.02) (section 4); BatchNorm scales from N(1, 0.02), biases 0 (the tutorial's choice).
10. Adam, beta1 0.5 ("0.9 resulted in training oscillation and instability", section 4); batch 128. D's lr is
    the paper's 0.0002, G's twice that (two time-scales, Heusel et al. 2017, arXiv:1706.08500). With one lr, D
    won from the first steps in 1 of 16 seeds on MNIST digits; with G's doubled, in none of 16, and G learned about
    twice as fast (README, "Does every seed learn?"). --lr-g 2e-4 gives the paper's recipe.
"""
import argparse, contextlib, math, os, shutil, signal, time  # noqa: E401 (the standard library)
from pathlib import Path

try:  # the run folder's lock: POSIX only, so Windows trains without it
    import fcntl
except ImportError:
    fcntl = None

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

try:  # torchvision's own decoders: fast, but deprecated since 0.29 in favour of TorchCodec; PIL when gone
    from torchvision.io import ImageReadMode, decode_image
except ImportError:
    decode_image = None

SCRIPT = Path(__file__).stem
IMAGE_SIZE = 64                                                 # images are IMAGE_SIZE x IMAGE_SIZE
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # the image files read
D_WINS_STEPS, D_WINS_BELOW, D_WINS_FROM = 20, 0.02, 100  # D has won: D(G(z)) below 0.02 over 20 steps, from step 100
KEEP_EPOCHS = 3                         # epoch checkpoints kept in checkpoints/
RUN_PARTS = ("checkpoint.pt", "checkpoints", "log.csv", "samples", "real.png")  # any of them: a run's folder
CHANGEABLE = ("epochs", "lr", "lr_g", "data")  # the flags a resume may change (README)
THIS_COMMAND = ("out", "resume", "generate", "max_steps", "device", "workers", "cache", "compile", "log_every",
                "given")  # flags of this command alone, never taken from a checkpoint


# ---- Networks (figure 1 of the paper). B is the batch size, C = --channels ---------------------------------
class Generator(nn.Sequential):
    """z (B, z_dim, 1, 1) -> image (B, C, 64, 64) in [-1, 1]. Shapes below for --ngf 64; 128 doubles widths.
    4x4 transposed convolutions: stride 1 without padding takes 1x1 to 4x4, stride 2 with padding 1 doubles the
    size. No bias: the BatchNorm after has one (and none on the output, as in the tutorial). act: detail 6."""

    def __init__(self, z_dim=100, ngf=64, channels=3, act="relu"):
        relu = (lambda: nn.ReLU(inplace=True)) if act == "relu" else (lambda: nn.LeakyReLU(0.2, inplace=True))
        super().__init__(                                         # input z: (B, 100, 1, 1)
            nn.ConvTranspose2d(z_dim, ngf * 8, 4, 1, 0, bias=False),  # (B, 512, 4, 4): "project and reshape"
            nn.BatchNorm2d(ngf * 8), relu(),                        # (B, 512, 4, 4)
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),  # (B, 256, 8, 8)
            nn.BatchNorm2d(ngf * 4), relu(),                        # (B, 256, 8, 8)
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # (B, 128, 16, 16)
            nn.BatchNorm2d(ngf * 2), relu(),                        # (B, 128, 16, 16)
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # (B, 64, 32, 32)
            nn.BatchNorm2d(ngf), relu(),                            # (B, 64, 32, 32)
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False),  # (B, C, 64, 64): no BatchNorm (detail 5)
            nn.Tanh() if act == "relu" else relu(),                 # (B, C, 64, 64), in [-1, 1] with Tanh (detail 6)
        )


class Discriminator(nn.Sequential):
    """image (B, C, 64, 64) -> logit (B,). Shapes below for --ndf 64; 128 doubles widths. 4x4 convolutions with
    stride 2 and padding 1 halve the size (no pooling, detail 4); the last, without padding, takes 4x4 to 1x1.
    The tables' final Sigmoid is inside the loss (detail 3)."""

    def __init__(self, ndf=64, channels=3):
        super().__init__(                                         # input x: (B, C, 64, 64)
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False),          # (B, 64, 32, 32): no BatchNorm (detail 5)
            nn.LeakyReLU(0.2, inplace=True),                        # (B, 64, 32, 32)
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),           # (B, 128, 16, 16)
            nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),  # (B, 128, 16, 16)
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),       # (B, 256, 8, 8)
            nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),  # (B, 256, 8, 8)
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),       # (B, 512, 4, 4)
            nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),  # (B, 512, 4, 4)
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),             # (B, 1, 1, 1): the logit of D(x)
            nn.Flatten(0),                                          # (B,)
        )


def init_weights(module):
    """Detail 9: convolution weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0 if isinstance(module, nn.BatchNorm2d) else 0.0, 0.02)
    if isinstance(module, nn.BatchNorm2d):
        nn.init.zeros_(module.bias)


def noise(n, args, device, rng=None):
    """n samples of z ~ N(0, I), the prior p_z, as 1x1 images (n, z_dim, 1, 1) on device. Drawn on the CPU (rng is
    a CPU generator), so that a seed means the same z on every device."""
    pin = torch.device(device).type == "cuda"
    return torch.randn(n, args.z_dim, 1, 1, generator=rng, pin_memory=pin).to(device, non_blocking=pin)


def build(args, device):
    """G and D (channels-last on CPU and CUDA: memory_format), and their Adam (detail 10), fused: one kernel."""
    G, D = Generator(args.z_dim, args.ngf, args.channels, args.g_act), Discriminator(args.ndf, args.channels)
    G, D = (net.apply(init_weights).to(device, memory_format=memory_format(device)) for net in (G, D))
    return G, D, *(torch.optim.Adam(net.parameters(), lr, betas=(0.5, 0.999), fused=True)
                   for net, lr in ((G, args.lr_g), (D, args.lr)))


# ---- Losses and one iteration of Algorithm 1 (Goodfellow et al., with the DCGAN settings) ------------------
def train_step(G, D, D_frozen, opt_G, opt_D, x, z, amp, scaler):
    """One iteration of Algorithm 1 with k = 1: a D step, then a G step, on real x (B, C, 64, 64) and noise z.
    G and D may be wrapped (DDP, torch.compile); D_frozen is D without DDP, for the G step (DDP would wait for D's
    gradients). amp: the autocast context; scaler: a GradScaler, active for float16 only (small gradients would
    underflow). Returns loss_D, loss_G, D(x), D(G(z)): (4,), on the device."""
    ones = torch.ones(len(x), device=x.device)                  # (B,) target "real"
    zeros = torch.zeros(len(x), device=x.device)                # (B,) target "fake"
    with amp:
        fake = G(z)                                             # (B, C, 64, 64), used by both steps
        # -- D step (Algorithm 1, ascend the gradient of eq. 1): maximise log D(x) + log(1 - D(G(z))), i.e.
        # minimise BCE(D(x), 1) + BCE(D(G(z)), 0). Real and fake go through D separately, so each BatchNorm
        # normalises an all-real or an all-fake batch, as in the tutorial. detach(): G is not updated here.
        real_logits = D(x).float()                              # (B,)
        fake_logits = D(fake.detach()).float()                  # (B,)
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
                  + F.binary_cross_entropy_with_logits(fake_logits, zeros))
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()                             # DDP: D's gradients averaged over processes
    scaler.step(opt_D)                                          # Adam, detail 10

    # -- G step (Goodfellow section 3, non-saturating): maximise log D(G(z)), i.e. minimise BCE(D(G(z)), 1), not
    # log(1 - D(G(z))). The fake batch is reused, through the updated D, frozen: no D weight gradient is computed.
    D_frozen.requires_grad_(False)
    with amp:
        gen_logits = D_frozen(fake).float()                     # (B,)
        loss_g = F.binary_cross_entropy_with_logits(gen_logits, ones)
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()                             # DDP: G's gradients averaged over processes
    scaler.step(opt_G)
    scaler.update()                                             # one scale for both optimizers, once a step
    D_frozen.requires_grad_(True)

    d_x = torch.sigmoid(real_logits.detach()).mean()            # D(x), a probability
    d_g_z = torch.sigmoid(fake_logits.detach()).mean()          # D(G(z)), a probability
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


# ---- The training loop -----------------------------------------------------------------------------------
def train(args):
    (rank, world, device), out = setup(args), Path(args.out)
    ckpt = open_run(args, device, rank, world)                  # None for a new run
    dtype = amp_dtype(args, device, rank, world)                # None: fp32
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    data = Photos(args, rank, world, device)
    torch.manual_seed(args.seed)                                # initial weights, the same in every process
    G, D, opt_G, opt_D = build(args, device)
    fixed_z = noise(64, args, "cpu", torch.Generator().manual_seed(args.seed))  # the grids' z, every epoch
    step = epoch = batch = 0                                    # where the run is: batch = steps into the epoch
    if ckpt:                                                    # go on: weights, optimizers, loss scale, noise
        restore(((G, "G"), (D, "D"), (opt_G, "opt_G"), (opt_D, "opt_D")), ckpt)
        scaler.load_state_dict(ckpt["scaler"] or scaler.state_dict())  # {}: saved without float16
        for opt, lr in ((opt_G, args.lr_g), (opt_D, args.lr)):  # a resumed run may change the learning rates
            opt.param_groups[0]["lr"] = lr                      # one group: all of the net's parameters
        step, epoch, batch, fixed_z = ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["fixed_z"].cpu()
    last = step + data.steps - batch + (args.epochs - epoch - 1) * data.steps if epoch < args.epochs else step
    last = min(last, args.max_steps or last)
    if last <= step:
        fail(f"the run in {out} is already at step {step} (epoch {epoch}); raise --epochs or --max-steps")
    log = RunLog(out / "log.csv", args, step, last, ckpt, world) if rank == 0 else None
    if not ckpt and rank == 0:                                  # real.png: (64, C, 64, 64) in [0, 1]
        save_image(torch.stack([data[i][0] for i in range(min(64, len(data)))]) / 255, out / "real.png", nrow=8)
    G_train, D_train, D_frozen = wrap(G, D, args, world)
    stopping = False
    with Stopper() as stopper:
        while step < last and not stopping:
            for images in data.epoch(epoch, batch):             # (B, C, 64, 64) uint8, the rest of this epoch
                x = images.to(device, non_blocking=images.is_pinned()).contiguous(memory_format=memory_format(device))
                x = x.float().div_(127.5).sub_(1.0)             # (B, C, 64, 64) real images in [-1, 1] (detail 8)
                rng = torch.Generator().manual_seed(hash((args.seed, rank, step)))  # from these alone: no state
                z = noise(len(x), args, device, rng)            # (B, 100, 1, 1) ~ N(0, I)
                stats = train_step(G_train, D_train, D_frozen, opt_G, opt_D, x, z, amp, scaler)  # (4,)
                step, batch = step + 1, batch + 1
                if log:                                         # process 0 keeps the log
                    log.record(step, epoch + 1, stats)
                stopping = stopper.check(stats, step, world)    # the same answer in every process
                if stopping or step == last:
                    break
            if batch >= data.steps:
                epoch, batch = epoch + 1, 0
            stopper.read()                                      # never save weights from NaN losses
            save(out, args, (G, D, opt_G, opt_D, scaler), (step, epoch, batch), fixed_z, log, world)
    if log:
        log.close()
    if world > 1:
        dist.destroy_process_group()


# ---- Plumbing: data, devices and processes, stopping, checkpoints and the log, the command line ------------
EXIF_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}     # EXIF orientation -> the PIL transpose undoing it


def load_image(path, channels):
    """An image file -> uint8 (channels, S, S), S = IMAGE_SIZE, upright as its EXIF says; raises if unreadable.
    torchvision decodes JPEG, PNG, WebP and GIF fast; PIL the rest, or all when torchvision's decoders are gone."""
    try:
        if decode_image is None:
            raise RuntimeError("torchvision has no image decoders")
        image = decode_image(path, ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY, True)  # EXIF too
    except RuntimeError:
        pil = torchvision.datasets.folder.pil_loader(path)      # PIL image, converted to RGB
        orientation = pil.getexif().get(0x0112, 1)              # EXIF tag 274, 1 = upright
        pil = pil.transpose(EXIF_TRANSPOSE[orientation]) if orientation in EXIF_TRANSPOSE else pil
        image = TF.pil_to_tensor(pil if channels == 3 else pil.convert("L"))
    image = image[0] if image.dim() == 4 else image             # an animated GIF: its first frame
    image = (image.to(torch.int32) >> 8).to(torch.uint8) if image.dtype == torch.uint16 else image  # 16-bit PNG
    image = image[:3] if channels == 3 else TF.rgb_to_grayscale(image[:3]) if len(image) > 2 else image[:1]
    image = TF.resize(image.expand(channels, -1, -1), [IMAGE_SIZE], antialias=True)  # shorter side -> S (detail 8)
    return TF.center_crop(image, [IMAGE_SIZE, IMAGE_SIZE]).contiguous()  # (channels, S, S)


def find_images(root):
    """Sorted paths of the image files below --data, at any depth (CelebA's layout, flat or class folders)."""
    if not Path(root).is_dir():
        fail(f"--data {root} " + ("is not a folder of images" if Path(root).exists() else "does not exist"))
    paths = sorted(str(p) for p in Path(root).rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    return paths or fail(f"no images in {root}; looked for {', '.join(SUFFIXES)} files in it and below it")


class Photos(Dataset):
    """This process's share of the files (torchrun: every world-th). Item i: image i, uint8 (C, S, S), the index of
    the file skipped to get it and why (-1, ""): an unreadable file must not end a run; the next one stands in."""

    def __init__(self, args, rank, world, device):
        self.paths, self.args, self.named, self.pin = find_images(args.data), args, set(), device.type == "cuda"
        try:
            self[0]
        except RuntimeError as e:                               # not one file decodes
            fail(f"no readable image in {args.data}: {e}")
        if getattr(args, "images", len(self)) != len(self):    # a resume: the run's count
            fail(f"--data {args.data} holds {len(self)} images, not the run's {args.images}; resume on its data")
        self.paths, args.images = self.paths[rank::world], len(self)
        self.cache = cache_images(self, device) if args.cache else None
        n = torch.tensor(len(self), device=device if world > 1 else "cpu")
        if world > 1:
            dist.all_reduce(n, op=dist.ReduceOp.MIN)            # every process takes as many steps
        self.steps = int(n) // args.batch_size or fail(f"{args.data}: {int(n)} images, fewer than one batch")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        why = ""
        for k in range(len(self)):
            try:
                return load_image(self.paths[(i + k) % len(self)], self.args.channels), (i if k else -1), why
            except Exception as e:                              # any decoding error: try the next file
                why = why or f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        raise RuntimeError(f"all {len(self)} image files failed to decode (e.g. {self.paths[i]}: {why})")

    def epoch(self, epoch, start):
        """uint8 (B, C, S, S) batches from batch `start` on, in an order from (--seed, epoch) alone (so a resume)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(hash((self.args.seed, epoch))))
        batches = order[:self.steps * self.args.batch_size].view(self.steps, -1)[start:]
        if self.cache is not None:
            yield from (self.cache[b.to(self.cache.device)] for b in batches)
            return
        for images, skipped, why in DataLoader(self, batch_sampler=batches.tolist(), num_workers=self.args.workers,
                                               pin_memory=self.pin, worker_init_fn=ignore_signals):
            name_skipped(self, skipped, why)
            yield images


def name_skipped(photos, skipped, why):
    """Says once which files a worker could not decode, and why (skipped: a CPU tensor, no device sync)."""
    for i, reason in zip(skipped.tolist(), why):
        if i >= 0 and i not in photos.named:
            photos.named.add(i)
            print(f"skipped unreadable image {photos.paths[i]} ({reason}); {len(photos.named)} so far")


def cache_images(photos, device):
    """--cache: every image decoded once into one uint8 tensor (N, C, S, S), on the GPU if it fits twice there."""
    t, start = time.perf_counter(), 0
    cache = torch.empty(len(photos), photos.args.channels, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for images, skipped, why in DataLoader(photos, 256, num_workers=photos.args.workers, worker_init_fn=ignore_signals):
        cache[start:start + len(images)], start = images, start + len(images)
        name_skipped(photos, skipped, why)
    if device.type == "cuda" and 2 * cache.nbytes < torch.cuda.mem_get_info(device)[0]:
        cache = cache.to(device)
    print(f"cached {len(cache)} images ({cache.nbytes / 2**20:.0f} MiB, on {cache.device.type}) in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    return cache


def ignore_signals(worker_id):
    """Workers leave Ctrl-C and SIGTERM (sent to the process group too) to the trainer, which saves, then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def memory_format(device):
    """Channels-last (fastest for convolutions) on CPU and CUDA; not on MPS, where it corrupted BatchNorm gradients
    (pytorch issue 175189) and slowed the convolution backward about 30x."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def pick_device(name, world=1):
    """--device (auto: cuda, then mps, then cpu), or one line why not."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or index and not (kind == "cuda" and index.isdigit()):
        fail(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    ok = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available() and world == 1}
    if not ok[kind] or index and int(index) >= torch.cuda.device_count():
        fail(f"--device {name}: not available here" + (" (torchrun runs need cuda or cpu)" if kind == "mps" else ""))
    return torch.device(name)


def setup(args):
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1): NCCL between GPUs (LOCAL_RANK's), or gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" not in os.environ:
        fail("WORLD_SIZE is set but RANK is not: start under torchrun, or unset WORLD_SIZE")
    device = pick_device(args.device, world)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if world > 1 and device.type == "cuda" else device
    if device.type == "cuda":
        torch.cuda.set_device(device)                           # first: with cuda:1 nothing lands on GPU 0
    torch.backends.cudnn.benchmark = device.type == "cuda"      # fixed shapes: cuDNN picks its fastest kernels
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def wrap(G, D, args, world):
    """(G, D, D without DDP for the G step), compiled with --compile. Under torchrun DDP averages the gradients;
    BatchNorm keeps per-process statistics, as on the paper's one GPU. D's running statistics are never used (and
    broadcasting them changes in place a tensor D's first pass saved: an error in torch 2.5)."""
    nets = (DistributedDataParallel(G), DistributedDataParallel(D, broadcast_buffers=False)) if world > 1 else (G, D)
    return tuple(torch.compile(net, backend=args.compile) if args.compile else net for net in (*nets, D))


def amp_dtype(args, device, rank=0, world=1):
    """--amp's autocast dtype (None: float32), said in one line. CUDA: bfloat16 from Ampere (compute capability 8)
    on, float16 with the gradient scaler before (T4, V100: their bfloat16 is emulated). CPU: bfloat16 only where
    it is faster, which the CPU's flags do not tell (with avx512_bf16 it was 1.6x faster on an AMD EPYC and 1.4-1.9x
    slower on an Intel Xeon), so training with --amp first times a step in each; --amp bf16 forces bfloat16."""
    if args.amp and device.type == "mps":
        fail("--amp needs a cpu or cuda device, not mps")
    half = args.amp == "fp16" or args.amp == "auto" and device.type == "cuda" and (
        torch.cuda.get_device_capability(device)[0] < 8)
    dtype = (torch.float16 if half else torch.bfloat16) if args.amp else None
    said = "float16 autocast with a gradient scaler" if half else "bfloat16 autocast"
    if args.amp == "auto" and device.type == "cpu" and not args.generate:
        seconds = torch.tensor([step_seconds(args, device, d) for d in (None, torch.bfloat16)])
        if world > 1:
            dist.all_reduce(seconds)                            # every process decides alike
        fast, ratio = seconds[1] < 0.95 * seconds[0], (seconds.max() / seconds.min()).item()
        dtype, said = (torch.bfloat16, said) if fast else (None, "float32")
        said = f"bfloat16 is {ratio:.1f}x {'faster' if fast else 'slower'} than float32 here; training in {said}"
    if args.amp and rank == 0:
        print(f"--amp: {said}", flush=True)
    return dtype


def step_seconds(args, device, dtype):
    """Seconds of a train_step in dtype (None: float32) on new networks and random images, the best of two after a
    warm-up: how --amp on a CPU compares float32 and bfloat16 (bfloat16 must be 5% faster to be chosen)."""
    G, D, opt_G, opt_D = build(args, device)
    x = torch.rand(args.batch_size, args.channels, IMAGE_SIZE, IMAGE_SIZE, device=device) * 2 - 1
    x, z = x.contiguous(memory_format=memory_format(device)), noise(args.batch_size, args, device)
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        train_step(G, D, D, opt_G, opt_D, x, z, amp, torch.amp.GradScaler(device.type, enabled=False))
        times.append(time.perf_counter() - t)
    return min(times[1:])


class Stopper:
    """Ctrl-C and SIGTERM (kill, schedulers, torchrun) end the run after a step, saved, exit 0. A repeat within a
    second is the same request; a later one stops at once. NaN or infinite losses end it in one line, the last good
    checkpoint kept: found by RunLog.flush, or under torchrun by the stop flag all processes agree on."""

    def __enter__(self):
        self.asked, self.pending = None, []
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.asked and time.monotonic() - self.asked > 1.0:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.asked = self.asked or time.monotonic()

    def check(self, stats, step, world):
        """After each step: stop now? Alone: a Python flag, no host sync. Under torchrun: each step's flag (2: loss
        not finite, 1: stop asked) is all-reduced during the next step and read after it."""
        if world == 1:
            return bool(self.asked)
        flag = (~stats.isfinite().all()) * 2.0 + bool(self.asked)
        self.pending.append((flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), step))
        return len(self.pending) > 1 and self.read()

    def read(self):
        """The oldest flag not yet read (False if none): stop? NaN: one line, exit 1."""
        if not self.pending:
            return False
        flag, work, step = self.pending.pop(0)
        work.wait()
        if flag.item() >= 2:
            fail(f"losses became NaN or infinite at step {step}; the last good checkpoint is kept")
        return flag.item() == 1

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def save(out, args, models, where, fixed_z, log, world):
    """checkpoint.pt first (torchrun kills 30 s after a stop), atomically; then the grid; at an epoch end a copy."""
    if not log:                                                 # process 0 saves
        return
    (G, D, opt_G, opt_D, scaler), (step, epoch, batch) = models, where
    log.flush()                                                 # and NaN checked: no NaN reaches a checkpoint
    try:
        torch.save({"script": SCRIPT, "args": vars(args), "G": G.state_dict(), "D": D.state_dict(), "step": step,
                    "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "scaler": scaler.state_dict(),
                    "epoch": epoch, "batch": batch, "world": world, "fixed_z": fixed_z,
                    "time": time.perf_counter() - log.t0, "log_bytes": log.file.tell()}, out / "checkpoint.tmp")
    except RuntimeError as e:                                   # torch.save's error when the disk is full
        (out / "checkpoint.tmp").unlink(missing_ok=True)
        fail(f"cannot write a checkpoint in {out} ({str(e)[:60]}: a full disk?); the last one is kept")
    os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")   # a kill never leaves half a checkpoint
    grid = (sample(G, fixed_z.to(next(G.parameters()).device)).float() + 1) / 2  # (64, C, S, S) in [0, 1]
    (out / "samples").mkdir(exist_ok=True)
    save_image(grid, out / "samples" / f"epoch_{epoch + (batch > 0):04d}.png", nrow=8)
    if batch == 0:
        (out / "checkpoints").mkdir(exist_ok=True)
        shutil.copyfile(out / "checkpoint.pt", out / "checkpoints" / f"epoch_{epoch:04d}.pt")
        for path in (out / "checkpoints").glob("epoch_[0-9][0-9][0-9][0-9].pt"):  # the last KEEP_EPOCHS
            if not epoch - KEEP_EPOCHS < int(path.stem[6:]) <= epoch:  # later ones: from before a roll-back
                path.unlink()


def sample(G, z):
    """G(z) without gradients; BatchNorm in train mode (eval mode's samples are flat early on), on copied statistics."""
    with torch.no_grad():
        return torch.func.functional_call(G.train(), {k: b.clone() for k, b in G.named_buffers()}, (z,))


@contextlib.contextmanager
def hold(out):
    """Locks out/lock while this process trains (process 0 under torchrun), so that a second one training into
    --out refuses in one line. The OS frees the lock when the process ends, a crash included."""
    if out.is_file():
        fail(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lock", "w") as lock:
        try:
            fcntl and os.environ.get("RANK", "0") == "0" and fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another process is training into {out}; wait for it to end, or pick another --out")
        yield


def load_checkpoint(path, device):
    """A checkpoint of this script, or one line why not."""
    if not path.is_file():
        fail(f"no checkpoint at {path} (train first, or point --out at a run folder)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        fail(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({type(e).__name__})")
    owner = ckpt.get("script") if isinstance(ckpt, dict) else None
    return ckpt if owner == SCRIPT else fail(f"{path} is not a checkpoint of {SCRIPT}.py" + (
        f" but of {owner}.py" if isinstance(owner, str) else ""))


def open_run(args, device, rank=0, world=1):
    """A new run (None) into a folder with no part of one (RUN_PARTS), or the checkpoint to go on from: --out's, or
    --resume PATH of the same run (e.g. its checkpoints/epoch_0007.pt), with the run's flags put back into args."""
    out = Path(args.out)
    if not args.resume and not args.generate:
        held = [name for name in RUN_PARTS if (out / name).is_file() or any((out / name).glob("*"))]
        if held and rank == 0:
            fail(f"--out {out} already holds a run ({', '.join(held)}): continue it with --resume, or pick "
                 "another --out")
        args.run = os.urandom(8).hex()                          # the run's name in its checkpoints
        return None
    path = out / "checkpoint.pt" if args.resume in (None, True) else Path(args.resume)
    ckpt = load_checkpoint(path, device)
    here = out / "checkpoint.pt"
    if path != here and (not here.is_file() or load_checkpoint(here, "cpu")["args"].get("run") != ckpt["args"].get(
            "run")):
        fail(f"{path} is not a checkpoint of the run in {out}: --resume PATH goes on in PATH's own run folder")
    for flag, then in ckpt["args"].items():                     # the run's flags, unless given and changeable
        if flag in THIS_COMMAND or flag in args.given and flag in CHANGEABLE + ("seed", "batch_size") * (
                args.generate is not None):                     # --generate's z: from its own --seed
            continue
        if flag in args.given and getattr(args, flag) != then:
            fail(f"{path} was trained with --{flag.replace('_', '-')} {then}, not {getattr(args, flag)}; "
                 "leave the flag out to go on with the run's")
        setattr(args, flag, then)
    if not args.generate and ckpt["world"] != world:
        fail(f"{path} was trained by {ckpt['world']} process(es), not {world}; resume with as many")
    return ckpt


def restore(parts, ckpt):
    """Loads each part's state from the checkpoint, or one line when the networks do not fit it."""
    try:
        for part, key in parts:
            part.load_state_dict(ckpt[key])
    except (KeyError, RuntimeError, ValueError) as e:
        fail(f"the checkpoint does not fit {SCRIPT}.py's networks (an older version's?): {' '.join(str(e).split())[:150]}")


class RunLog:
    """log.csv, a row a step, and a progress line every --log-every seconds (process 0): the stats stay on the
    device until then, one host sync a line. On resume log.csv is first cut back to its length at the checkpoint."""

    def __init__(self, path, args, step, last, ckpt, world):
        if ckpt:                                                # its rows must end with the checkpoint's step
            head = path.read_bytes()[:ckpt["log_bytes"]] if path.is_file() else b""
            if len(head) < ckpt["log_bytes"] or not head.endswith(b"\n") or not head.splitlines()[-1].startswith(
                    f"{step},".encode()):
                fail(f"{path} does not hold the rows to step {step} of this checkpoint (rolled back past it?)")
            os.truncate(path, ckpt["log_bytes"])                # the rows a killed run wrote after its checkpoint
        self.file = open(path, "a" if ckpt else "w")
        self.file.write("" if ckpt else "step,epoch,time,loss_d,loss_g,d_real,d_fake\n")
        self.args, self.first, self.step, self.last, self.images = args, step, step, last, args.batch_size * world
        self.t0 = time.perf_counter() - (ckpt["time"] if ckpt else 0.0)  # the run's clock, across resumes
        self.t_first, self.t_line, self.rows, self.d_fake = time.perf_counter(), time.perf_counter(), [], []

    def record(self, step, epoch, stats):
        self.rows.append((step, epoch, time.perf_counter() - self.t0, stats))
        if time.perf_counter() - self.t_line > self.args.log_every:
            self.flush()

    def flush(self):
        if not self.rows:
            return
        values = torch.stack([row[3] for row in self.rows]).tolist()  # the one host sync
        self.file.writelines(f"{step},{epoch},{t:.3f}," + ",".join(f"{v:.5f}" for v in row) + "\n"
                             for (step, epoch, t, _), row in zip(self.rows, values))
        self.file.flush()
        (self.step, epoch, *_), (loss_d, loss_g, d_real, d_fake) = self.rows[-1], values[-1]
        if not math.isfinite(sum(map(sum, values))):           # the last good checkpoint stays
            fail(f"losses became NaN or infinite by step {self.step}; the last good checkpoint is kept in "
                 f"{Path(self.file.name).parent}")
        steps_per_s = (self.step - self.first) / (time.perf_counter() - self.t_first)
        print(f"epoch {epoch}/{self.args.epochs} step {self.step}/{self.last} | loss D {loss_d:.3f} G {loss_g:.3f} | "
              f"D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | {steps_per_s * self.images:.0f} img/s | "
              f"{(self.last - self.step) / steps_per_s / 60:.1f} min left", flush=True)
        if self.d_fake is not None:                             # None once the warning is said
            self.d_fake = warn_if_d_wins(self.d_fake + [row[3] for row in values], self.step)
        self.rows, self.t_line = [], time.perf_counter()

    def close(self):
        self.flush()
        self.file.close()
        steps, seconds = self.step - self.first, time.perf_counter() - self.t_first
        print(f"trained {steps} steps in {seconds:.1f} s ({steps * self.images / seconds:.0f} images/s); run folder "
              f"{Path(self.file.name).parent}", flush=True)


def warn_if_d_wins(d_fake, step):
    """One line, once a run, when D has won: D(G(z)) averaged below D_WINS_BELOW over D_WINS_STEPS steps at a step
    from D_WINS_FROM on. On benchmarks/failure_rate.py's 64x64 digits the runs that came that low stayed grey noise,
    and no run that learned did. Returns the D(G(z)) history to keep, or None once said."""
    if step < D_WINS_FROM or len(d_fake) < D_WINS_STEPS or sum(d_fake[-D_WINS_STEPS:]) / D_WINS_STEPS >= D_WINS_BELOW:
        return d_fake[-D_WINS_STEPS:]
    print(f"warning: D has won: D(G(z)) averaged below {D_WINS_BELOW} over {D_WINS_STEPS} steps to step {step}; such "
          "runs rarely recover: restart with another --seed (see the README's 'When training goes wrong')", flush=True)


def generate(args):
    """--generate N: exactly N PNGs in --out/generated/ (as FID tools expect: earlier ones are removed) and a grid,
    chunk by chunk, from --out's checkpoint or --resume PATH; z from --seed. A stop says what it wrote."""
    device, out = setup(args)[2], Path(args.out)
    ckpt = open_run(args, device)                               # the run's network flags, into args
    G, folder, written = build(args, device)[0], out / "generated", 0
    restore(((G, "G"),), ckpt)
    dtype, rng, seconds = amp_dtype(args, device), torch.Generator().manual_seed(args.seed), 0.0
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.png"):
        path.unlink()
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # a stop, as Ctrl-C: KeyboardInterrupt
    try:
        for start in range(0, args.generate, max(64, args.batch_size)):  # chunks of 64 at least: see sample()
            z, t = noise(max(64, args.batch_size), args, device, rng), time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                images = ((sample(G, z).float() + 1) / 2).clamp_(0, 1)[:args.generate - start].cpu()
            seconds += time.perf_counter() - t
            for image in images:
                save_image(image, folder / f"{written:06d}.png")
                written += 1
            if start == 0:
                save_image(images[:64], out / "generated_grid.png", nrow=8)
    except KeyboardInterrupt:
        (folder / f"{written:06d}.png").unlink(missing_ok=True)  # half written, if any
        fail(f"stopped: {written} of {args.generate} images written to {folder}")
    print(f"wrote {args.generate} images to {folder} and a grid of the first {min(64, args.generate)} to "
          f"{out / 'generated_grid.png'} (G: {args.generate / seconds:.0f} images/s)")


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="./data", help="folder of images, searched recursively (e.g. ./celeba)")
    p.add_argument("--epochs", type=int, default=5, help="train until the end of this epoch")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=float, default=2e-4, help="D's Adam learning rate (the paper's, for G and D)")
    p.add_argument("--lr-g", type=float, default=4e-4, help="G's: twice D's (detail 10); 2e-4 the paper's recipe")
    p.add_argument("--z-dim", type=int, default=100, help="size of the noise vector z")
    p.add_argument("--ngf", type=int, default=64, help="G's width: 64 the tutorial's networks, 128 the paper's")
    p.add_argument("--ndf", type=int, default=64, help="D's width: 64 the tutorial's networks, 128 the paper's")
    p.add_argument("--g-act", choices=["relu", "leaky"], default="relu", help="G's activations (leaky: the table's)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="3 for colour, 1 for grayscale")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes")
    p.add_argument("--cache", action="store_true", help="decode every image once into memory (GPU memory if it fits)")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND", help="torch.compile G and D")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0, help="initial weights, noise and data order all come from it")
    p.add_argument("--out", default=f"runs/{SCRIPT}", help="run folder")
    p.add_argument("--max-steps", type=int, help="stop when the run's total step count reaches this")
    p.add_argument("--resume", nargs="?", const=True, metavar="CKPT", help="continue the run in --out, or from CKPT")
    p.add_argument("--generate", type=int, metavar="N", help="write N images from --out/checkpoint.pt, no training")
    p.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], help="bf16, fp16 before Ampere")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))     # no defaults: what the command line gave
    args.given = [flag for flag, value in vars(p.parse_args(argv, unset)).items() if value is not None]
    for flag in ("epochs", "batch_size", "lr", "lr_g", "z_dim", "ngf", "ndf", "max_steps", "generate", "log_every"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:  # NaN too
            fail(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if not 0 <= args.seed < 2**63 or args.workers < 0:
        fail(f"--seed must be in [0, 2**63) and --workers 0 or more, got {args.seed} and {args.workers}")
    if args.compile and args.compile not in torch.compiler.list_backends(exclude_tags=()):
        fail(f"--compile {args.compile}: not a torch.compile backend ({', '.join(torch.compiler.list_backends())})")
    if args.compile == "inductor" and not any(map(shutil.which, (os.environ.get("CXX", "g++"), "clang++"))):
        fail("--compile needs a C++ compiler (g++, clang++ or $CXX) for inductor; try --compile aot_eager")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.generate:
            generate(args)
        else:
            with hold(Path(args.out)):                          # one training process per run folder
                train(args)
    except OSError as e:                                        # a path the OS refuses, a full disk, ...
        fail(f"{e.strerror or e}: {e.filename or args.out}")


if __name__ == "__main__":
    main()
