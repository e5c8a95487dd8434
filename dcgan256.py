"""DCGAN at 256x256 on any folder of photos, on one CPU or GPU or on many with torchrun.

Paper: Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks" (DCGAN), arXiv:1511.06434; the game itself: Goodfellow et al. 2014, arXiv:1406.2661.
Networks: the 256x256 tables of a DCGAN-on-faces project built on the PyTorch DCGAN tutorial (shown in the
README), exactly: G 100 -> 512x4x4 -> ... -> 8x256x256 -> Cx256x256; D with convolution + max-pool blocks, then
two linear layers. The paper stops at 64x64: this is the same recipe grown by three more up-sampling layers,
with the tables' discriminator.

Run on one device (--data: any folder of images, searched recursively; CelebA as ./celeba or its img_align_celeba):
    python dcgan256.py --data ./celeba --device cuda                   # the 256x256 tables' networks
    python dcgan256.py --data ./celeba --amp --compile                 # bf16, torch.compile
    python dcgan256.py --data ./celeba --resume --epochs 20            # continue the run in --out
    python dcgan256.py --generate 1000                                 # write images from --out/checkpoint.pt
On several GPUs of one machine (DistributedDataParallel; --batch-size is per process):
    torchrun --standalone --nproc_per_node 4 dcgan256.py --data ./celeba
On several machines (run on each of them, with its own --node_rank):
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \\
        dcgan256.py --data /shared/celeba
On CPU processes (gloo instead of NCCL): torchrun --nproc_per_node 2 dcgan256.py --device cpu ...

Run folder (--out, default runs/dcgan256): real.png (real images), samples/epoch_NNNN.png (the same fixed noise every
epoch), progress.gif (those grids animated), log.csv (losses, D(x), D(G(z)) per step), diversity.csv (how
different those samples are, per epoch), checkpoint.pt (everything needed to continue bit-for-bit) and
checkpoints/epoch_NNNN.pt (the last 3 epochs', to roll back to), generated/ and generated_grid.png (--generate).
It warns in one line when D wins outright or the samples collapse: see "When training goes wrong" in the README.

Implementation details, each tied to the paper (section numbers of arXiv:1511.06434 unless said otherwise):
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (Goodfellow eq. 1), one D step then one
    G step per minibatch (Goodfellow Algorithm 1, k = 1).
 2. G maximises log D(G(z)) instead of minimising log(1 - D(G(z))) (Goodfellow section 3, "non-saturating").
 3. D outputs a logit; sigmoid + binary cross-entropy are fused in BCEWithLogitsLoss: the same objective,
    numerically stable, and safe under bf16 autocast (the table's Sigmoid layer followed by BCELoss is neither).
 4. G is all-convolutional: fractionally-strided (transposed) convolutions, no fully connected layer
    (section 3, guidelines 1 and 3). D is the table's: 3x3 convolutions with max-pooling and a fully connected
    hidden layer of 128, against guidelines 1 and 3; kept because the table specifies it.
 5. BatchNorm in G and D, except G's output layer and D's input block (section 3, guideline 2).
 6. ReLU in G with Tanh on the output, LeakyReLU(0.2) in D (section 3, guidelines 4 and 5; slope 0.2 from
    section 4). The 256x256 table writes LeakyReLU in G's hidden layers and Tanh at the output: --g-act leaky
    builds exactly that generator; the default follows the paper.
 7. z ~ N(0, I) of size 100 is "projected and reshaped" to 4x4 (figure 1) by a 4x4 transposed convolution of
    the 1x1 input, exactly a fully connected layer z -> (512*4*4) followed by a reshape.
 8. Images scaled to [-1, 1], the range of Tanh, and no other pre-processing (section 4); photos are resized on
    their shorter side and centre-cropped to 256x256 first.
 9. Weights from N(0, 0.02) (section 4); BatchNorm scales from N(1, 0.02), biases 0 (the tutorial's choice).
10. Adam, lr 0.0002, beta1 0.5 ("0.9 resulted in training oscillation and instability", section 4).
"""
import argparse
import csv
import hashlib
import os
import shutil
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
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

try:  # torchvision's own decoders: fast, but deprecated since 0.29 in favour of TorchCodec; PIL when gone
    from torchvision.io import ImageReadMode, decode_image, read_file
except ImportError:
    decode_image = None

SCRIPT = Path(__file__).stem
IMAGE_SIZE = 256                                                # images are IMAGE_SIZE x IMAGE_SIZE
NETWORK_FLAGS = ("z_dim", "ngf", "ndf", "channels", "g_act")    # must match between a checkpoint and the flags
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------------------
# Networks (the 256x256 tables: figure 1 of the paper grown by three layers). B is the batch size,
# C = --channels; shapes for the default widths (--ngf 8 --ndf 8), which are the tables'.
# ----------------------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, z_dim, 1, 1) -> image (B, C, 256, 256) in [-1, 1].

    Every transposed convolution is 4x4: stride 1 without padding takes 1x1 to 4x4, stride 2 with padding 1
    doubles the size (4 -> 8 -> ... -> 256). Then a 3x3 convolution with padding 1 (size kept) maps the 8
    channels to C, with Tanh, as the table's last row says ("Conv, Tanh"). No convolution before a BatchNorm
    has a bias: the BatchNorm has one. act="leaky" is the table's hidden rows exactly ("TransConv, BatchNorm,
    Leaky Relu"): LeakyReLU(0.2) after every hidden layer; the output keeps its Tanh either way.
    """

    def __init__(self, z_dim=100, ngf=8, channels=3, act="relu"):
        super().__init__()
        relu = (lambda: nn.ReLU(inplace=True)) if act == "relu" else (lambda: nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(                                         # input z: (B, 100, 1, 1)
            nn.ConvTranspose2d(z_dim, ngf * 64, 4, 1, 0, bias=False),       # (B, 512, 4, 4): "project and reshape"
            nn.BatchNorm2d(ngf * 64),                                       # (B, 512, 4, 4)
            relu(),                                                         # (B, 512, 4, 4)
            nn.ConvTranspose2d(ngf * 64, ngf * 32, 4, 2, 1, bias=False),    # (B, 256, 8, 8)
            nn.BatchNorm2d(ngf * 32),                                       # (B, 256, 8, 8)
            relu(),                                                         # (B, 256, 8, 8)
            nn.ConvTranspose2d(ngf * 32, ngf * 16, 4, 2, 1, bias=False),    # (B, 128, 16, 16)
            nn.BatchNorm2d(ngf * 16),                                       # (B, 128, 16, 16)
            relu(),                                                         # (B, 128, 16, 16)
            nn.ConvTranspose2d(ngf * 16, ngf * 8, 4, 2, 1, bias=False),     # (B, 64, 32, 32)
            nn.BatchNorm2d(ngf * 8),                                        # (B, 64, 32, 32)
            relu(),                                                         # (B, 64, 32, 32)
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),      # (B, 32, 64, 64)
            nn.BatchNorm2d(ngf * 4),                                        # (B, 32, 64, 64)
            relu(),                                                         # (B, 32, 64, 64)
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),      # (B, 16, 128, 128)
            nn.BatchNorm2d(ngf * 2),                                        # (B, 16, 128, 128)
            relu(),                                                         # (B, 16, 128, 128)
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),          # (B, 8, 256, 256)
            nn.BatchNorm2d(ngf),                                            # (B, 8, 256, 256)
            relu(),                                                         # (B, 8, 256, 256)
            nn.Conv2d(ngf, channels, 3, 1, 1),                              # (B, C, 256, 256): no BatchNorm (detail 5)
            nn.Tanh(),                                                      # (B, C, 256, 256) in [-1, 1] (detail 6)
        )

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """image (B, C, 256, 256) -> logit (B,).

    The table gives the sizes of six convolution + max-pool blocks; these kernels and paddings give exactly
    those: 3x3 convolutions without padding (size - 2) then 2x2 max-pooling (size // 2), except the second
    block, whose convolution has padding 1 (size kept):
        256 -conv-> 254 -pool-> 127 | 127 -conv(pad 1)-> 127 -pool-> 63 | 63 -> 61 -> 30 | 30 -> 28 -> 14 |
        14 -> 12 -> 6 | 6 -> 4 -> 2.
    Then flatten (256 * 2 * 2 = 1024), Linear 128 with LeakyReLU, Linear 1: the logit (the table's Sigmoid is
    inside the loss, detail 3).
    """

    def __init__(self, ndf=8, channels=3):
        super().__init__()
        self.net = nn.Sequential(                                     # input x: (B, C, 256, 256)
            nn.Conv2d(channels, ndf, 3, 1, 0),                          # (B, 8, 254, 254): no BatchNorm (detail 5)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 8, 254, 254)
            nn.MaxPool2d(2),                                            # (B, 8, 127, 127)
            nn.Conv2d(ndf, ndf * 2, 3, 1, 1, bias=False),               # (B, 16, 127, 127): padding 1 here
            nn.BatchNorm2d(ndf * 2),                                    # (B, 16, 127, 127)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 16, 127, 127)
            nn.MaxPool2d(2),                                            # (B, 16, 63, 63)
            nn.Conv2d(ndf * 2, ndf * 4, 3, 1, 0, bias=False),           # (B, 32, 61, 61)
            nn.BatchNorm2d(ndf * 4),                                    # (B, 32, 61, 61)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 32, 61, 61)
            nn.MaxPool2d(2),                                            # (B, 32, 30, 30)
            nn.Conv2d(ndf * 4, ndf * 8, 3, 1, 0, bias=False),           # (B, 64, 28, 28)
            nn.BatchNorm2d(ndf * 8),                                    # (B, 64, 28, 28)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 64, 28, 28)
            nn.MaxPool2d(2),                                            # (B, 64, 14, 14)
            nn.Conv2d(ndf * 8, ndf * 16, 3, 1, 0, bias=False),          # (B, 128, 12, 12)
            nn.BatchNorm2d(ndf * 16),                                   # (B, 128, 12, 12)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 128, 12, 12)
            nn.MaxPool2d(2),                                            # (B, 128, 6, 6)
            nn.Conv2d(ndf * 16, ndf * 32, 3, 1, 0, bias=False),         # (B, 256, 4, 4)
            nn.BatchNorm2d(ndf * 32),                                   # (B, 256, 4, 4)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 256, 4, 4)
            nn.MaxPool2d(2),                                            # (B, 256, 2, 2)
            nn.Flatten(),                                               # (B, 1024)
            nn.Linear(ndf * 32 * 2 * 2, 128),                           # (B, 128)
            nn.LeakyReLU(0.2, inplace=True),                            # (B, 128)
            nn.Linear(128, 1),                                          # (B, 1): the logit of D(x)
        )

    def forward(self, x):
        return self.net(x).flatten()                                    # (B,)


def init_weights(module):
    """Detail 9: convolution and linear weights ~ N(0, 0.02), their biases (where they have one) 0; BatchNorm
    scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def noise(n, args, device, rng=None):
    """n samples of z ~ N(0, I), the prior p_z of the paper, as 1x1 images: (n, z_dim, 1, 1)."""
    return torch.randn(n, args.z_dim, 1, 1, device=device, generator=rng)


def build(args, device):
    """G and D in channels-last memory (the layout CPU and GPU convolution kernels are fastest in), Adam."""
    G = Generator(args.z_dim, args.ngf, args.channels, args.g_act)
    D = Discriminator(args.ndf, args.channels)
    G.apply(init_weights)
    D.apply(init_weights)
    G = G.to(device, memory_format=torch.channels_last)
    D = D.to(device, memory_format=torch.channels_last)
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {}  # one kernel for all parameters
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), **fast)
    return G, D, opt_G, opt_D


# ----------------------------------------------------------------------------------------------------------
# Losses and one iteration of Algorithm 1 (Goodfellow et al., with the DCGAN settings)
# ----------------------------------------------------------------------------------------------------------
def train_step(G, D, D_frozen, opt_G, opt_D, x, z, amp):
    """One iteration of Algorithm 1 with k = 1: a D step, then a G step, on real x (B, C, 256, 256) and noise z.

    G and D may be wrapped (DDP, torch.compile); D_frozen is D without DDP, for the G step, where D's weights
    get no gradient (DDP would wait for D gradients that never come). Returns a (4,) tensor: loss of D, loss of
    G, D(x) and D(G(z)) as mean probabilities (no host sync).
    """
    ones = torch.ones(len(x), device=x.device)                  # (B,) target "real"
    zeros = torch.zeros(len(x), device=x.device)                # (B,) target "fake"
    with amp:
        fake = G(z)                                             # (B, C, 256, 256), used by both steps
        # -- D step (Algorithm 1, ascend the gradient of eq. 1): maximise log D(x) + log(1 - D(G(z))), i.e.
        # minimise BCE(D(x), 1) + BCE(D(G(z)), 0). Real and fake go through D separately, so each BatchNorm
        # normalises an all-real or an all-fake batch, as in the paper and the tutorial. fake.detach(): G is
        # not updated here.
        real_logits = D(x).float()                              # (B,)
        fake_logits = D(fake.detach()).float()                  # (B,)
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
                  + F.binary_cross_entropy_with_logits(fake_logits, zeros))
    opt_D.zero_grad(set_to_none=True)
    loss_d.backward()                                           # DDP: D's gradients averaged over processes
    opt_D.step()                                                # Adam, detail 10

    # -- G step (Goodfellow section 3, non-saturating): maximise log D(G(z)), i.e. minimise BCE(D(G(z)), 1),
    # instead of minimising log(1 - D(G(z))). The fake batch is reused, through the updated D; D is frozen so
    # no D weight gradient is computed.
    D_frozen.requires_grad_(False)
    with amp:
        gen_logits = D_frozen(fake).float()                     # (B,)
        loss_g = F.binary_cross_entropy_with_logits(gen_logits, ones)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()                                           # DDP: G's gradients averaged over processes
    opt_G.step()
    D_frozen.requires_grad_(True)

    d_x = torch.sigmoid(real_logits.detach()).mean()            # D(x), a probability
    d_g_z = torch.sigmoid(fake_logits.detach()).mean()          # D(G(z)), a probability
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


# ----------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------
def train(args):
    rank, world, device = setup_distributed(args)
    out = Path(args.out)
    ckpt = open_run_folder(out, args, device)                   # None for a new run
    check_amp(args, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    data = Photos(args, rank, world)                            # uint8 batches, decoded by workers or cached
    torch.manual_seed(args.seed)                                # initial weights, the same in every process
    G, D, opt_G, opt_D = build(args, device)
    # Noise z for training: each process its own stream (seed + rank), or all would draw the same fakes.
    rng = torch.Generator(device).manual_seed(args.seed + rank)
    fixed_z = noise(64, args, "cpu", torch.Generator().manual_seed(args.seed)).to(device)  # grids, every epoch
    pos = Position(data.n, args.batch_size, rank, world)
    if ckpt:
        restore(ckpt, args, (G, D, opt_G, opt_D), pos)
        if len(ckpt["rng"]) == world:
            rng.set_state(ckpt["rng"][rank].cpu())
        else:                                                   # another number of processes: new streams
            rng.manual_seed(args.seed + rank + world * ckpt["step"])
        fixed_z = ckpt["fixed_z"]
    last_step = pos.last_step(args.epochs, args.max_steps, out)
    log = RunLog(out, args, pos, last_step, ckpt["time"] if ckpt else 0.0, device, lead=rank == 0)
    if not ckpt and rank == 0:
        save_image(data.first(64) / 255, out / "real.png", nrow=8)  # (64, C, 256, 256) in [0, 1]
    G_train, D_train, D_frozen = wrap(G, D, args, world)

    stop = False
    with StopSignals() as signals:
        while pos.step < last_step and not stop:
            for images, skipped in data.epoch(pos.batches(args.seed)):  # the rest of this epoch
                data.name_skipped(skipped)
                x = to_model_range(images, device)              # (B, C, 256, 256) real images in [-1, 1]
                z = noise(len(x), args, device, rng)            # (B, 100, 1, 1) ~ N(0, I)
                stats = train_step(G_train, D_train, D_frozen, opt_G, opt_D, x, z, amp)  # (4,), on the device
                pos.advance()
                log.record(stats, pos)
                stop = should_stop(signals, log, pos.step, world, device)
                if stop or pos.step == last_step:
                    break
            stop = should_stop(signals, log, pos.step, world, device, now=True)  # the same in every process
            save_progress(out, args, (G, D, opt_G, opt_D), pos, rng_states(rng, world), fixed_z, log)
    log.close()
    data.summary()
    if world > 1:
        fingerprint(G, world)
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# Plumbing: data, devices and processes, stopping, checkpoints, the run folder and its log
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


# EXIF orientation (phone photos) -> the PIL transpose that undoes it: flips, rotations by 180, 270, 90 degrees.
EXIF_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


def load_image(path, channels):
    """One image file -> uint8 tensor (channels, IMAGE_SIZE, IMAGE_SIZE), upright as its EXIF orientation says.
    Raises on an unreadable or truncated file.

    torchvision's own decoders (JPEG incl. CMYK, PNG incl. 16-bit, WebP, GIF) are faster than PIL; BMP and
    TIFF, which they do not read, go through PIL, and so does everything once torchvision's decoders are gone.
    """
    try:
        if decode_image is None:
            raise RuntimeError("torchvision has no image decoders")
        image = decode_image(read_file(path), mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY,
                             apply_exif_orientation=True)
    except RuntimeError:                                        # not a format decode_image knows, or no decoders
        pil = torchvision.datasets.folder.pil_loader(path)      # PIL image, converted to RGB
        exif = pil.getexif().get(0x0112, 1)                     # EXIF tag 274: orientation, 1 = upright
        pil = pil.transpose(EXIF_TRANSPOSE[exif]) if exif in EXIF_TRANSPOSE else pil
        image = TF.pil_to_tensor(pil if channels == 3 else pil.convert("L"))
    if image.dim() == 4:                                        # an animated GIF: its first frame
        image = image[0]
    if image.dtype == torch.uint16:                             # 16-bit PNG: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    image = image[:3]                                           # an alpha channel, if a decoder kept one
    if image.shape[0] != channels:                              # WebP and GIF ignore the grayscale mode
        image = TF.rgb_to_grayscale(image) if channels == 1 else image.expand(3, -1, -1)
    image = TF.resize(image, [IMAGE_SIZE], antialias=True)     # shorter side -> IMAGE_SIZE (detail 8)
    return TF.center_crop(image, [IMAGE_SIZE, IMAGE_SIZE]).contiguous()  # (channels, IMAGE_SIZE, IMAGE_SIZE)


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


def leave_signals_to_the_trainer(worker_id):
    """DataLoader workers ignore Ctrl-C and SIGTERM, also when sent to the whole process group: the training
    process finishes its step, saves, and then stops them. (A worker killed first would end the run with an
    error and no checkpoint.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class BatchList:
    """A batch sampler that yields the index batches it is given, one epoch's rest at a time."""
    batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class Photos:
    """The images below --data as uint8 batches (B, C, S, S), S = IMAGE_SIZE: decoded by DataLoader worker
    processes while the step runs, or with --cache decoded once into RAM. Process 0 lists the files and every
    process uses its list, so all agree on the number of images and of steps."""

    def __init__(self, args, rank, world):
        paths = [find_images(args.data) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(paths)
        self.paths, self.lead, self.skipped = paths[0], rank == 0, set()
        first_readable(self.paths, args.channels, args.data)
        self.files = ImageFiles(self.paths, args.channels)
        self.cache, self.valid = cache_images(self.files, args, world, self.lead) if args.cache else (None, None)
        self.n = len(self.valid) if args.cache else len(self.files)
        if self.n < args.batch_size * world:
            fail(f"{args.data} holds {self.n} readable images, fewer than one batch of {args.batch_size}"
                 + (f" for each of {world} processes" if world > 1 else "") + "; lower --batch-size")
        self.sampler = BatchList()
        self.loader = None if args.cache else DataLoader(
            self.files, batch_sampler=self.sampler, num_workers=args.workers,
            worker_init_fn=leave_signals_to_the_trainer,
            pin_memory=torch.cuda.is_available(),               # page-locked batches: asynchronous copies
            persistent_workers=args.workers > 0)                # workers live across epochs

    def epoch(self, batches):
        """(images, indices of skipped files or None) for each (B,) index batch of `batches`."""
        if self.cache is not None:
            return ((self.cache[self.valid[idx]], None) for idx in batches)
        self.sampler.batches = batches.tolist()
        return iter(self.loader)

    def first(self, k):
        """The first k images, (k, C, S, S) uint8, for real.png."""
        if self.cache is not None:
            return self.cache[self.valid[:k]]
        return torch.stack([self.files[i][0] for i in range(min(k, self.n))])

    def name_skipped(self, skipped):
        """Name, once each, the files a worker could not decode (process 0 only; a CPU tensor, no device sync)."""
        if skipped is None or not self.lead:
            return
        for i in skipped[skipped >= 0].tolist():
            if i not in self.skipped:
                self.skipped.add(i)
                print(f"skipped unreadable image {self.paths[i]} "
                      f"({why_unreadable(self.paths[i], self.files.channels)}); {len(self.skipped)} so far", flush=True)

    def summary(self):
        if self.skipped and self.lead:
            print(f"skipped {len(self.skipped)} unreadable image(s)", flush=True)


def first_readable(paths, channels, root):
    """Fail early, with the reason, when not one file decodes; cheap when the first one does."""
    for path in paths:
        try:
            return load_image(path, channels)
        except Exception:
            pass
    fail(f"no readable image in {root}: all {len(paths)} image files failed to decode "
         f"(e.g. {paths[0]}: {why_unreadable(paths[0], channels)})")


def cache_images(files, args, world, lead):
    """--cache: decode every image once, with the DataLoader workers, into one preallocated uint8 tensor
    (N, C, S, S): about the size of the data, N * C * S * S bytes, and no second copy. Later epochs then cost
    no decoding at all. Files that do not decode are left out: the indices of the others are returned, the
    same in every process (a file any process failed to read is left out by all)."""
    t = time.perf_counter()
    cache = torch.empty(len(files), args.channels, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    bad, start = set(), 0
    for images, skipped in DataLoader(files, batch_size=256, num_workers=args.workers,
                                      worker_init_fn=leave_signals_to_the_trainer):
        cache[start:start + len(images)] = images
        bad.update(skipped[skipped >= 0].tolist())
        start += len(images)
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, bad)
        bad = set().union(*every)
    valid = torch.tensor([i for i in range(len(files)) if i not in bad], dtype=torch.long)
    if lead:
        for i in sorted(bad):
            print(f"skipped unreadable image {files.paths[i]} ({why_unreadable(files.paths[i], args.channels)})")
        print(f"cached {len(valid)} images ({cache.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s",
              flush=True)
    return cache, valid


def to_model_range(images_uint8, device):
    """uint8 [0, 255] on the host -> float [-1, 1] channels-last on the device (detail 8)."""
    x = images_uint8.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x.float().div_(127.5).sub_(1.0)


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


def wrap(G, D, args, world):
    """The networks as train_step runs them: (G, D, D without DDP for the G step), compiled with --compile.

    Several processes: DistributedDataParallel averages G's and D's gradients over them at every backward.
    BatchNorm keeps per-process batch statistics (no SyncBatchNorm): each process normalises its own batch of
    --batch-size images, exactly as the paper's single-GPU training normalised its batch of 128, and syncing
    would add two all-reduces per BatchNorm layer per forward pass. (Running statistics, unused by the
    samples, see sample(), are broadcast from process 0 at every forward pass and saved from it.)
    """
    if torch.device(args.device if args.device != "auto" else "cpu").type == "cuda":
        torch.backends.cudnn.benchmark = True                   # fixed shapes: let cuDNN pick its fastest kernels
    G_train = DistributedDataParallel(G) if world > 1 else G
    # D's running statistics are never used (D always normalises by the statistics of its batch), so they are
    # not broadcast from process 0 before each forward pass. Broadcasting them before D's second forward pass
    # of a step would also change in place a tensor the first one saved for backward (an error on torch 2.5).
    D_train = DistributedDataParallel(D, broadcast_buffers=False) if world > 1 else D
    D_frozen = D                                                # G's step needs no D gradients: no DDP there
    if args.compile:
        return torch.compile(G_train), torch.compile(D_train), torch.compile(D_frozen)
    return G_train, D_train, D_frozen


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


def should_stop(signals, log, step, world, device, now=False):
    """Whether to stop after this step, the same answer in every process: a stop signal came to any of them.
    One process stops at once. Several agree every CHECK_EVERY steps and (now=True) before each save, with one
    all-reduce of two numbers: the signal, and whether any process's losses became NaN or infinite, which ends
    the run in every process at the same step, in one line, with the last good checkpoint kept."""
    if world == 1 and not now and step % CHECK_EVERY:
        return bool(signals)
    if world > 1 and not now and step % CHECK_EVERY:
        return False
    flags = torch.stack([torch.tensor(float(bool(signals)), device=device), (~log.finite).float()])
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    asked, nonfinite = flags.tolist()
    if nonfinite:
        log.close(summary=False)
        fail(f"losses became NaN or infinite by step {step}; the last good checkpoint is kept in {log.folder}")
    return asked > 0


def rng_states(rng, world):
    """Every process's noise stream, gathered for the checkpoint (process 0 saves it)."""
    states = [rng.get_state()]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, rng.get_state())
    return states


def fingerprint(G, world):
    """One fingerprint of G's weights per process, printed by process 0: DDP keeps them identical, and this
    line lets anyone (and tests/) check it."""
    weights = torch.cat([p.detach().flatten().cpu() for p in G.parameters()])
    digests = [None] * world
    dist.all_gather_object(digests, hashlib.sha256(bytes(weights.untyped_storage())).hexdigest()[:16])
    if dist.get_rank() == 0:
        print(f"G weights per process (sha256): {' '.join(digests)}", flush=True)


def save_checkpoint(path, state):
    """Plain tensors and values only, so torch.load(..., weights_only=True) reads it back."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    p.add_argument("--data", default="./data", help="folder of images, searched recursively (e.g. ./celeba)")
    p.add_argument("--epochs", type=int, default=5, help="train until the end of this epoch")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam's learning rate, for G and D")
    p.add_argument("--beta1", type=float, default=0.5, help="Adam's beta1")
    p.add_argument("--z-dim", type=int, default=100, help="size of the noise vector z")
    p.add_argument("--ngf", type=int, default=8, help="G's last hidden width: 8 the tables' (the first is 64 times it)")
    p.add_argument("--ndf", type=int, default=8, help="D's first width: 8 the tables' (the last is 32 times it)")
    p.add_argument("--g-act", choices=["relu", "leaky"], default="relu",
                   help="G's hidden activations: the paper's ReLU or the 256x256 table's LeakyReLU (Tanh output both)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="3 for colour, 1 for grayscale")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (0: decode in the training process)")
    p.add_argument("--cache", action="store_true",
                   help="decode and resize every image once into RAM (uint8, 196 KB an image: 40 GB for CelebA)")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D")
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
    for flag in ("epochs", "batch_size", "lr", "z_dim", "ngf", "ndf", "max_steps", "generate", "log_every"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            fail(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.workers < 0:
        fail(f"--workers must be 0 or more, got {args.workers}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.generate:
        generate(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
