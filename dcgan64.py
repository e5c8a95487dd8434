"""DCGAN at 64x64 on any folder of photos (CelebA faces by default), on one CPU or GPU or on many with torchrun.

Paper: Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks" (DCGAN), arXiv:1511.06434; the game itself: Goodfellow et al. 2014, arXiv:1406.2661.
Design: ../shared/seeds/000 (the 64x64 tables, --ngf 64 --ndf 64) and 001 (the paper's wider networks,
--ngf 128 --ndf 128); the networks are those of the PyTorch DCGAN faces tutorial.

Run on one device (--data: any folder of images, searched recursively; CelebA as ./celeba or its img_align_celeba):
    python dcgan64.py --data ./celeba --device cuda                    # 000's networks (512 -> ... -> 64 wide)
    python dcgan64.py --data ./celeba --ngf 128 --ndf 128 --out runs/dcgan64_wide   # 001's (1024 -> ... -> 128)
    python dcgan64.py --data ./celeba --amp --compile --cache         # bf16, torch.compile, decoded images in RAM
    python dcgan64.py --data ./celeba --resume --epochs 20             # continue the run in --out
    python dcgan64.py --generate 1000                                  # write images from --out/checkpoint.pt
On several GPUs of one machine (DistributedDataParallel; --batch-size is per process):
    torchrun --standalone --nproc_per_node 4 dcgan64.py --data ./celeba
On several machines (run on each of them, with its own --node_rank):
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \\
        dcgan64.py --data /shared/celeba
On CPU processes (gloo instead of NCCL; what the tests run): torchrun --nproc_per_node 2 dcgan64.py --device cpu ...

Run folder (--out, default runs/dcgan64): real.png (real images), samples/epoch_NNNN.png (the same fixed noise
every epoch), progress.gif (those grids animated), log.csv (losses, D(x), D(G(z)) per step), checkpoint.pt
(everything needed to continue bit-for-bit), generated/ (from --generate).

Implementation details, each tied to the paper (section numbers of arXiv:1511.06434 unless said otherwise):
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (Goodfellow eq. 1), one D step then one
    G step per minibatch (Goodfellow Algorithm 1, k = 1).
 2. G maximises log D(G(z)) instead of minimising log(1 - D(G(z))) (Goodfellow section 3, "non-saturating").
 3. D outputs a logit; sigmoid + binary cross-entropy are fused in BCEWithLogitsLoss: the same objective,
    numerically stable, and safe under bf16 autocast (a Sigmoid layer followed by BCELoss is neither).
 4. All-convolutional nets: strided convolutions in D, fractionally-strided (transposed) convolutions in G,
    no pooling and no fully connected hidden layers (section 3, guidelines 1 and 3).
 5. BatchNorm in G and D, except G's output layer and D's input layer (section 3, guideline 2).
 6. ReLU in G with Tanh on the output, LeakyReLU(0.2) in D (section 3, guidelines 4 and 5; slope 0.2 from
    section 4). Design document 000 writes LeakyReLU in G and no Tanh: we keep its shapes and follow the paper.
 7. z ~ N(0, I) of size 100 is "projected and reshaped" to 4x4 (figure 1): here a 4x4 transposed convolution
    of the 1x1 input, which is exactly a fully connected layer z -> (8*ngf*4*4) followed by a reshape.
 8. Images scaled to [-1, 1], the range of Tanh, and no other pre-processing (section 4); photos are resized on
    their shorter side and centre-cropped to 64x64 first, as the PyTorch tutorial does.
 9. Weights from N(0, 0.02) (section 4); BatchNorm scales from N(1, 0.02), biases 0 (the tutorial's choice).
10. Adam, lr 0.0002, beta1 0.5 ("0.9 resulted in training oscillation and instability", section 4); batch 128.
"""
import argparse
import csv
import hashlib
import itertools
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

SCRIPT = Path(__file__).stem
IMAGE_SIZE = 64                                                 # images are IMAGE_SIZE x IMAGE_SIZE
NETWORK_FLAGS = ("z_dim", "ngf", "ndf", "channels")             # must match between a checkpoint and the flags
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="./data", help="folder of images, searched recursively (e.g. ./celeba)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128, help="per process when run under torchrun")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5, help="Adam's beta1")
    p.add_argument("--z-dim", type=int, default=100, help="size of the noise vector z")
    p.add_argument("--ngf", type=int, default=64, help="G's width: 64 gives 000's networks, 128 gives 001's")
    p.add_argument("--ndf", type=int, default=64, help="D's width: 64 gives 000's networks, 128 gives 001's")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="3 for colour, 1 for grayscale")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (0: decode in the training process)")
    p.add_argument("--cache", action="store_true",
                   help="decode and resize every image once into RAM (uint8; about 2.4 GB for CelebA's 202,599)")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"runs/{SCRIPT}", help="run folder")
    p.add_argument("--max-steps", type=int, help="stop when the run's total step count reaches this")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--generate", type=int, metavar="N", help="write N images from --out/checkpoint.pt, no training")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA and CPU)")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    for flag in ("epochs", "batch_size", "lr", "z_dim", "ngf", "ndf", "max_steps", "generate", "log_every"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            fail(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.workers < 0:
        fail(f"--workers must be 0 or more, got {args.workers}")
    return args


# ----------------------------------------------------------------------------------------------------------
# Networks (figure 1 of the paper; design documents 000 and 001). B is the batch size, C = --channels.
# With --ngf 64 --ndf 64 (default) the widths are 000's, with --ngf 128 --ndf 128 they are 001's.
# ----------------------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, z_dim, 1, 1) -> image (B, C, 64, 64) in [-1, 1]. Shapes below for --ngf 64 (000); 128 doubles widths.

    Every transposed convolution is 4x4: stride 1 without padding takes 1x1 to 4x4, stride 2 with padding 1
    doubles the size. No convolution has a bias: the BatchNorm after it has one (the output layer's bias is
    left out as in the tutorial; Tanh follows directly).
    """

    def __init__(self, z_dim=100, ngf=64, channels=3):
        super().__init__()
        self.net = nn.Sequential(                                 # input z: (B, 100, 1, 1)
            nn.ConvTranspose2d(z_dim, ngf * 8, 4, 1, 0, bias=False),  # (B, 512, 4, 4): "project and reshape"
            nn.BatchNorm2d(ngf * 8),                                # (B, 512, 4, 4)
            nn.ReLU(inplace=True),                                  # (B, 512, 4, 4)
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),  # (B, 256, 8, 8)
            nn.BatchNorm2d(ngf * 4),                                # (B, 256, 8, 8)
            nn.ReLU(inplace=True),                                  # (B, 256, 8, 8)
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # (B, 128, 16, 16)
            nn.BatchNorm2d(ngf * 2),                                # (B, 128, 16, 16)
            nn.ReLU(inplace=True),                                  # (B, 128, 16, 16)
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # (B, 64, 32, 32)
            nn.BatchNorm2d(ngf),                                    # (B, 64, 32, 32)
            nn.ReLU(inplace=True),                                  # (B, 64, 32, 32)
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False),  # (B, C, 64, 64): no BatchNorm (detail 5)
            nn.Tanh(),                                              # (B, C, 64, 64) in [-1, 1] (detail 6)
        )

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """image (B, C, 64, 64) -> logit (B,). Shapes below for --ndf 64 (000); 128 doubles widths (001).

    4x4 convolutions with stride 2 and padding 1 halve the size (no pooling, detail 4); the last 4x4
    convolution without padding takes 4x4 to 1x1. 000 writes a Sigmoid at the end: it is inside the loss
    here (detail 3).
    """

    def __init__(self, ndf=64, channels=3):
        super().__init__()
        self.net = nn.Sequential(                                 # input x: (B, C, 64, 64)
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False),          # (B, 64, 32, 32): no BatchNorm (detail 5)
            nn.LeakyReLU(0.2, inplace=True),                        # (B, 64, 32, 32)
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),           # (B, 128, 16, 16)
            nn.BatchNorm2d(ndf * 2),                                # (B, 128, 16, 16)
            nn.LeakyReLU(0.2, inplace=True),                        # (B, 128, 16, 16)
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),       # (B, 256, 8, 8)
            nn.BatchNorm2d(ndf * 4),                                # (B, 256, 8, 8)
            nn.LeakyReLU(0.2, inplace=True),                        # (B, 256, 8, 8)
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),       # (B, 512, 4, 4)
            nn.BatchNorm2d(ndf * 8),                                # (B, 512, 4, 4)
            nn.LeakyReLU(0.2, inplace=True),                        # (B, 512, 4, 4)
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),             # (B, 1, 1, 1): the logit of D(x)
        )

    def forward(self, x):
        return self.net(x).flatten()                                # (B,)


def init_weights(module):
    """Detail 9: convolution weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(args, device):
    """G and D in channels-last memory (the layout CPU and GPU convolution kernels are fastest in), Adam."""
    G = Generator(args.z_dim, args.ngf, args.channels)
    D = Discriminator(args.ndf, args.channels)
    G.apply(init_weights), D.apply(init_weights)
    G = G.to(device, memory_format=torch.channels_last)
    D = D.to(device, memory_format=torch.channels_last)
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {}  # one kernel for all parameters
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    return G, D, opt_G, opt_D


# ----------------------------------------------------------------------------------------------------------
# Data: every image file below --data, decoded by DataLoader worker processes (or once, into RAM, with
# --cache), resized on the shorter side and centre-cropped to 64x64, carried as uint8 and scaled to
# [-1, 1] on the device (a quarter of the bytes of float through the loader and the host-to-device copy).
# ----------------------------------------------------------------------------------------------------------
def find_images(root):
    """Sorted paths of the image files below root (any depth: CelebA's layout, flat folders, class folders)."""
    root = Path(root)
    if not root.exists():
        fail(f"--data {root} does not exist")
    if not root.is_dir():
        fail(f"--data {root} is not a folder (give the folder that holds the images)")
    if not os.access(root, os.R_OK | os.X_OK):
        fail(f"--data {root}: permission denied")
    denied = []
    paths = sorted(os.path.join(folder, name)
                   for folder, _, names in os.walk(root, onerror=denied.append, followlinks=True)
                   for name in names if name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        why = f" (cannot read {denied[0].filename}: permission denied)" if denied else ""
        fail(f"no images in {root}{why}; looked for {', '.join(IMAGE_SUFFIXES)} files in it and below it")
    return paths


def load_image(path, channels):
    """One image file -> uint8 tensor (channels, 64, 64). Raises on an unreadable or truncated file.

    torchvision's own decoders (JPEG incl. CMYK, PNG incl. 16-bit, WebP, GIF) are faster than PIL; BMP and
    TIFF, which they do not read, go through torchvision's PIL loader.
    """
    try:
        image = decode_image(read_file(path), mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY)
    except RuntimeError:                                        # not a format decode_image knows
        pil = torchvision.datasets.folder.pil_loader(path)      # PIL image, converted to RGB
        image = TF.pil_to_tensor(pil if channels == 3 else pil.convert("L"))
    if image.dim() == 4:                                        # an animated GIF: its first frame
        image = image[0]
    if image.dtype == torch.uint16:                             # 16-bit PNG: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    image = image[:3]                                           # an alpha channel, if a decoder kept one
    if image.shape[0] != channels:                              # WebP and GIF ignore the grayscale mode
        image = TF.rgb_to_grayscale(image) if channels == 1 else image.expand(3, -1, -1)
    image = TF.resize(image, [IMAGE_SIZE], antialias=True)     # shorter side -> 64 (CelebA: 178x218 -> 64x78)
    return TF.center_crop(image, [IMAGE_SIZE, IMAGE_SIZE]).contiguous()  # (channels, 64, 64) uint8


def why_unreadable(path, channels):
    """The error that load_image raises on path, as a short text (for the log)."""
    try:
        load_image(path, channels)
    except Exception as e:
        if "cannot identify image file" in str(e):             # PIL's words for "not an image"
            return "not an image file, or a format neither torchvision nor PIL reads"
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return "read on a second try"


class ImageFiles(Dataset):
    """Image i of the folder, with the index of the file skipped to get it (-1 when none was skipped).

    A file that cannot be decoded (truncated download, not really an image) must not end a long run: the
    next readable file stands in for it, so every batch stays full, and the training loop names it in the log.
    """

    def __init__(self, paths, channels):
        self.paths, self.channels = paths, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        for k in range(len(self.paths)):
            try:
                return load_image(self.paths[(i + k) % len(self.paths)], self.channels), (i if k else -1)
            except Exception:                                   # any decoding error: try the next file
                pass
        raise RuntimeError(f"no image below {os.path.dirname(self.paths[0])} can be read any more")


def first_readable(paths, channels, root):
    """Fail early, with the reason, when not one file decodes; cheap when the first one does."""
    for path in paths:
        try:
            return load_image(path, channels)
        except Exception:
            pass
    fail(f"no readable image in {root}: all {len(paths)} image files failed to decode "
         f"(e.g. {paths[0]}: {why_unreadable(paths[0], channels)})")


class EpochSampler(DistributedSampler):
    """This process's share of one epoch's shuffled order, from sample `start` on.

    The order depends only on (--seed, epoch), as DistributedSampler draws it, so a resumed run recreates the
    epoch it stopped in and skips the samples already used without decoding them. With one process it is
    simply a permutation of the whole data set.
    """
    start = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self):
        return self.num_samples - self.start


def cache_images(dataset, args, rank):
    """--cache: decode every image once, with the DataLoader workers, into one uint8 tensor (N, C, 64, 64).

    Later epochs then cost no decoding at all: batches are drawn by indexing the tensor. Files that do not
    decode are left out of the cache. Each process holds its own copy (N * C * 64 * 64 bytes).
    """
    t = time.perf_counter()
    loader = DataLoader(dataset, batch_size=256, num_workers=args.workers)
    images, skipped = zip(*loader)
    images, skipped = torch.cat(images), torch.cat(skipped)
    bad = set(skipped[skipped >= 0].tolist())
    keep = torch.tensor([i for i in range(len(dataset)) if i not in bad], dtype=torch.long)
    if rank == 0:
        for i in sorted(bad):
            print(f"skipped unreadable image {dataset.paths[i]} ({why_unreadable(dataset.paths[i], args.channels)})")
        print(f"cached {len(keep)} images ({images[keep].nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s",
              flush=True)
    return images[keep]


def to_model_range(images_uint8, device):
    """uint8 [0, 255] on the host -> float [-1, 1] channels-last on the device (detail 8)."""
    x = images_uint8.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x.float().div_(127.5).sub_(1.0)


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


def setup_distributed(args):
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) join the process group: NCCL between
    GPUs, one GPU per process picked by LOCAL_RANK; gloo between CPU processes. Otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(args.device)
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        fail(f"--device {args.device}: torchrun runs need cuda or cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


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
        if ckpt["args"][flag] != getattr(args, flag):
            fail(f"{path} was trained with --{flag.replace('_', '-')} {ckpt['args'][flag]}, "
                 f"not {getattr(args, flag)}; pass the same network flags")
    return ckpt


def sample(G, z):
    """G(z) for the grids and --generate, with BatchNorm in train mode (statistics of this batch of samples) and
    its running statistics left untouched.

    Why not eval mode (running statistics)? They start at mean 0, variance 1 and follow the batches with
    momentum 0.1, while G's pre-BatchNorm variances start near 0.04 (weights from N(0, 0.02)): for the first
    hundred or so steps eval-mode samples are nearly one flat image (tests/ show it after 8 steps). Batch
    statistics are right from step 1, and over 64 or more samples a sample hardly depends on the others.
    Switching track_running_stats off for the call keeps the running statistics (and so the checkpoint and
    the bit-for-bit resume) unchanged, unlike a plain train-mode forward pass.
    """
    norms = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.track_running_stats = False
    try:
        with torch.no_grad():
            return G.train()(z)
    finally:
        for m in norms:
            m.track_running_stats = True


def write_gif(out):
    frames = [TF.to_pil_image(torchvision.io.decode_image(str(p))) for p in sorted((out / "samples").glob("*.png"))]
    frames[0].save(out / "progress.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)


# ----------------------------------------------------------------------------------------------------------
# Training (Goodfellow Algorithm 1 with the DCGAN settings)
# ----------------------------------------------------------------------------------------------------------
def train_step(G, D, D_frozen, opt_G, opt_D, x, z, amp):
    """One iteration of Algorithm 1 with k = 1: a D step, then a G step, on real x (B, C, 64, 64) and noise z.

    G and D may be wrapped (DDP, torch.compile); D_frozen is D without DDP, for the G step, where D's weights
    get no gradient (DDP would wait for D gradients that never come). Returns a (4,) tensor: loss of D, loss of
    G, D(x) and D(G(z)) as mean probabilities (no host sync).
    """
    ones, zeros = torch.ones(len(x), device=x.device), torch.zeros(len(x), device=x.device)  # (B,) targets
    with amp:
        fake = G(z)                                             # (B, C, 64, 64), used by both steps
        # -- D step (Algorithm 1, ascend the gradient of eq. 1): maximise log D(x) + log(1 - D(G(z))), i.e.
        # minimise BCE(D(x), 1) + BCE(D(G(z)), 0). Real and fake go through D separately, so each BatchNorm
        # normalises an all-real or an all-fake batch, as in the paper and the tutorial. fake.detach(): G is
        # not updated here.
        d_real = D(x).float()                                   # (B,) logits
        d_fake = D(fake.detach()).float()                       # (B,) logits
        loss_d = (F.binary_cross_entropy_with_logits(d_real, ones)
                  + F.binary_cross_entropy_with_logits(d_fake, zeros))
    opt_D.zero_grad(set_to_none=True)
    loss_d.backward()                                           # DDP: D's gradients averaged over processes
    opt_D.step()                                                # Adam, detail 10

    # -- G step (Goodfellow section 3, non-saturating): maximise log D(G(z)), i.e. minimise BCE(D(G(z)), 1),
    # instead of minimising log(1 - D(G(z))). The fake batch is reused, through the updated D; D is frozen so
    # no D weight gradient is computed.
    D_frozen.requires_grad_(False)
    with amp:
        d_gen = D_frozen(fake).float()                          # (B,) logits
        loss_g = F.binary_cross_entropy_with_logits(d_gen, ones)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()                                           # DDP: G's gradients averaged over processes
    opt_G.step()
    D_frozen.requires_grad_(True)

    d_x, d_gz = torch.sigmoid(d_real.detach()).mean(), torch.sigmoid(d_fake.detach()).mean()  # probabilities
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_gz])


def train(args):
    rank, world, device = setup_distributed(args)
    lead = rank == 0                                            # the one process that logs and writes --out
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    ckpt_path = out / "checkpoint.pt"
    if not args.resume and ckpt_path.exists():
        fail(f"--out {out} already holds a run (checkpoint.pt): continue it with --resume, or pick another --out")
    if args.amp and device.type not in ("cpu", "cuda"):
        fail(f"--amp needs a cpu or cuda device, not {device.type}")
    if args.amp and device.type == "cpu" and rank == 0 and not bf16_is_native():
        print("note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --amp will be slower than fp32",
              file=sys.stderr)
    ckpt = load_checkpoint(ckpt_path, args, device) if args.resume else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True                   # fixed shapes: let cuDNN pick its fastest kernels

    paths = find_images(args.data)
    first_readable(paths, args.channels, args.data)
    dataset = ImageFiles(paths, args.channels)
    cache = cache_images(dataset, args, rank) if args.cache else None
    n, B = len(cache) if args.cache else len(dataset), args.batch_size
    sampler = EpochSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // B                  # the last partial batch is dropped
    if steps_per_epoch == 0:
        fail(f"{args.data} holds {n} readable images, fewer than one batch of {B}"
             + (f" for each of {world} processes" if world > 1 else "") + "; lower --batch-size")
    loader = None if args.cache else DataLoader(
        dataset, batch_size=B, sampler=sampler, drop_last=True, num_workers=args.workers,
        pin_memory=device.type == "cuda",                       # page-locked batches: asynchronous copies
        persistent_workers=args.workers > 0)                    # workers live across epochs

    torch.manual_seed(args.seed)                                # initial weights, the same in every process
    G, D, opt_G, opt_D = build(args, device)
    # Noise z for training: each process its own stream (seed + rank), or all would draw the same fakes.
    # The fixed noise of the sample grids is the same everywhere (seed alone).
    gen = torch.Generator(device).manual_seed(args.seed + rank)
    fixed_z = torch.randn(64, args.z_dim, 1, 1, generator=torch.Generator().manual_seed(args.seed)).to(device)
    step, epoch, batch_in_epoch, elapsed = 0, 0, 0, 0.0
    if ckpt:
        G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"])
        opt_G.load_state_dict(ckpt["opt_G"]), opt_D.load_state_dict(ckpt["opt_D"])
        for group in opt_G.param_groups + opt_D.param_groups:
            group["lr"] = args.lr                               # a resumed run may change the learning rate
        if len(ckpt["rng"]) == world:
            gen.set_state(ckpt["rng"][rank].cpu())
        else:                                                   # another number of processes: new streams
            gen.manual_seed(args.seed + rank + world * ckpt["step"])
        fixed_z, step, epoch, elapsed = ckpt["fixed_z"], ckpt["step"], ckpt["epoch"], ckpt["time"]
        # Samples of the stopped epoch already used (as counted with the batch size it was trained with).
        batch_in_epoch = ckpt["batch_in_epoch"] * ckpt["args"]["batch_size"] // B
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(
        args.max_steps, args.epochs * steps_per_epoch)
    if step >= last_step:
        fail(f"the run in {out} is already at step {step}; raise --epochs or --max-steps to train further")

    # Several processes: DistributedDataParallel averages G's and D's gradients over them at every backward.
    # BatchNorm keeps per-process batch statistics (no SyncBatchNorm): each process normalises its own batch
    # of --batch-size images, exactly as the paper's single-GPU training normalised its batch of 128, and
    # syncing would add two all-reduces per BatchNorm layer per forward pass. (Running statistics, unused by
    # the samples, see sample(), are broadcast from process 0 at every forward pass and saved from it.)
    G_train = DistributedDataParallel(G) if world > 1 else G
    D_train = DistributedDataParallel(D) if world > 1 else D
    D_frozen = D                                                # G's step needs no D gradients: no DDP there
    if args.compile:
        G_train, D_train, D_frozen = torch.compile(G_train), torch.compile(D_train), torch.compile(D_frozen)

    if lead:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        if not ckpt:
            reals = cache[:64] if args.cache else torch.stack([dataset[i][0] for i in range(min(64, n))])
            save_image(reals / 255, out / "real.png", nrow=8)   # (64, C, 64, 64) in [0, 1]
        log_file = open(out / "log.csv", "a" if ckpt else "w", newline="")
        log = csv.writer(log_file)
        if not ckpt:
            log.writerow(["step", "epoch", "time", "loss_d", "loss_g", "d_real", "d_fake"])

    # Ctrl-C (SIGINT) or a scheduler's SIGTERM: finish the step, save, leave. With several processes they
    # agree every STOP_CHECK steps (one tiny all-reduce), so all stop at the same step.
    signals, stop, STOP_CHECK = [], False, 10
    handlers = {sig: signal.signal(sig, lambda s, _: (signals.append(s), signal.signal(s, signal.SIG_DFL)))
                for sig in (signal.SIGINT, signal.SIGTERM)}     # the previous handlers, restored at the end
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    pending, stamps, skipped_files = [], [], set()              # per-step stats, flushed with one .tolist()
    t0 = time.perf_counter() - elapsed
    first_step, t_first, t_log = step, time.perf_counter(), time.perf_counter()

    def flush():
        """Write the pending steps to log.csv and print one progress line; stop on NaN (process 0 only)."""
        nonlocal pending, stamps, t_log
        if not pending:
            return
        rows = torch.stack(pending).tolist()                    # the only host sync of the loop
        if not all(math.isfinite(v) for row in rows for v in row):
            log_file.close()
            fail(f"losses became NaN or infinite by step {step}; the last good checkpoint is kept in {ckpt_path}")
        s0 = step - len(rows)
        log.writerows([s0 + i + 1, epoch + 1, f"{t:.3f}", *(f"{v:.5f}" for v in row)]
                      for i, (t, row) in enumerate(zip(stamps, rows)))
        log_file.flush()
        rate = (step - first_step) / (time.perf_counter() - t_first)
        loss_d, loss_g, d_real, d_fake = rows[-1]
        print(f"epoch {epoch + 1}/{args.epochs} step {step}/{last_step} | loss D {loss_d:.3f} G {loss_g:.3f} | "
              f"D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | {rate * B * world:.0f} img/s | "
              f"{(last_step - step) / rate / 60:.1f} min left", flush=True)
        pending, stamps, t_log = [], [], time.perf_counter()

    def checkpoint():
        """Sample grid, GIF and checkpoint.pt (process 0), after gathering every process's noise stream."""
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, gen.get_state())
        else:
            states = [gen.get_state()]
        if not lead:
            return
        flush()
        with amp:
            grid = (sample(G, fixed_z).float() + 1) / 2         # (64, C, 64, 64) in [0, 1], batch statistics
        save_image(grid, out / "samples" / f"epoch_{epoch + (batch_in_epoch > 0):04d}.png", nrow=8)
        write_gif(out)
        save_checkpoint(ckpt_path, {
            "script": SCRIPT, "args": vars(args), "G": G.state_dict(), "D": D.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "perm": {"seed": args.seed, "epoch": epoch, "world": world},
            "rng": states, "fixed_z": fixed_z, "time": time.perf_counter() - t0})

    def batches():
        """The rest of this epoch as (uint8 images (B, C, 64, 64), skipped file indices or None)."""
        sampler.set_epoch(epoch)
        sampler.start = batch_in_epoch * B                      # resumed mid-epoch: skip, undecoded
        if loader is not None:
            return iter(loader)
        order = torch.tensor(list(sampler), dtype=torch.long)
        return ((cache[order[k * B:(k + 1) * B]], None) for k in range(len(order) // B))

    while step < last_step and not stop:
        for images, skipped in batches():
            if skipped is not None and lead:                    # files a worker could not decode
                for i in skipped[skipped >= 0].tolist():        # a CPU tensor: no device sync
                    if i not in skipped_files:
                        skipped_files.add(i)
                        print(f"skipped unreadable image {paths[i]} ({why_unreadable(paths[i], args.channels)}); "
                              f"{len(skipped_files)} so far", flush=True)
            x = to_model_range(images, device)                  # (B, C, 64, 64) real images in [-1, 1]
            z = torch.randn(B, args.z_dim, 1, 1, device=device, generator=gen)  # (B, 100, 1, 1) ~ N(0, I)
            stats = train_step(G_train, D_train, D_frozen, opt_G, opt_D, x, z, amp)  # (4,), on the device
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            if lead:                                            # stats of process 0's batch
                pending.append(stats)
                stamps.append(time.perf_counter() - t0)
                if time.perf_counter() - t_log > args.log_every:
                    flush()
            if world == 1:
                stop = bool(signals)
            elif step % STOP_CHECK == 0:
                flag = torch.tensor([float(bool(signals))], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if step >= last_step or stop:
                break
        if lead:
            flush()
        if batch_in_epoch == steps_per_epoch:                   # a whole epoch done
            epoch, batch_in_epoch = epoch + 1, 0
        checkpoint()                                            # every epoch end, --max-steps, Ctrl-C
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    if lead:
        log_file.close()
        seconds = time.perf_counter() - t_first
        skipped_note = f"; skipped {len(skipped_files)} unreadable image(s)" if skipped_files else ""
        print(f"trained {step - first_step} steps in {seconds:.1f} s "
              f"({(step - first_step) * B * world / seconds:.0f} images/s); run folder {out}{skipped_note}")
    if world > 1:
        # One fingerprint of G's weights per process: DDP keeps them identical, and this line lets anyone
        # (and tests/) check it.
        weights = torch.cat([p.detach().flatten().cpu() for p in G.parameters()])
        digests = [None] * world
        dist.all_gather_object(digests, hashlib.sha256(bytes(weights.untyped_storage())).hexdigest()[:16])
        if lead:
            print(f"G weights per process (sha256): {' '.join(digests)}", flush=True)
        dist.destroy_process_group()


def generate(args):
    """Write N single images and a grid of the first 64 from the trained G (batch statistics, see sample()).

    z is drawn in batches of max(64, --batch-size) so that every image is normalised with at least 63 others."""
    device = pick_device(args.device)
    out = Path(args.out)
    ckpt = load_checkpoint(out / "checkpoint.pt", args, device)
    G = Generator(args.z_dim, args.ngf, args.channels).to(device, memory_format=torch.channels_last)
    G.load_state_dict(ckpt["G"])
    gen = torch.Generator(device).manual_seed(args.seed)
    folder = out / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    images, seconds, chunk = [], 0.0, max(64, args.batch_size)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
        for start in range(0, args.generate, chunk):
            z = torch.randn(chunk, args.z_dim, 1, 1, device=device, generator=gen)  # (chunk, 100, 1, 1)
            t = time.perf_counter()
            x = sample(G, z)                                    # (chunk, C, 64, 64)
            images.append(((x.float() + 1) / 2).clamp_(0, 1).cpu())  # .cpu() waits for the device
            seconds += time.perf_counter() - t
    images = torch.cat(images)[:args.generate]
    for i, image in enumerate(images):
        save_image(image, folder / f"{i:06d}.png")
    save_image(images[:64], folder / "grid.png", nrow=8)
    print(f"wrote {len(images)} images to {folder} (G: {len(images) / seconds:.0f} images/s)")


def main(argv=None):
    args = parse_args(argv)
    generate(args) if args.generate else train(args)


if __name__ == "__main__":
    main()
