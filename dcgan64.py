"""DCGAN at 64x64 on a folder of photos, on a CPU, a GPU or torchrun's.

Paper: Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks" (DCGAN), arXiv:1511.06434; the game: Goodfellow et al. 2014,
arXiv:1406.2661. Networks (tables in the README): the PyTorch DCGAN tutorial's (the default)
or the paper's figure 1 (--ngf 128 --ndf 128).

    python dcgan64.py --data ./celeba  # then --resume, --generate N; torchrun: on many GPUs

Implementation details (sections of the DCGAN paper unless said otherwise):
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (Goodfellow eq. 1): one D step,
    then one G step, a minibatch (Goodfellow Algorithm 1, k = 1).
 2. G maximises log D(G(z)): this "results in the same fixed point of the dynamics of G and D but
    provides much stronger gradients early in learning" than minimising log(1 - D(G(z)))
    (Goodfellow section 3).
 3. D outputs a logit; BCEWithLogitsLoss fuses the sigmoid: numerically stable, safe under autocast.
 4. All-convolutional: strided convolutions in D, transposed in G, no pooling or fully connected
    hidden layer (section 3, guidelines 1 and 3).
 5. BatchNorm in G and D but for G's output layer and D's input layer (section 3, guideline 2).
 6. ReLU in G, Tanh on its output, LeakyReLU(0.2) in D (section 3, guidelines 4 and 5; the slope:
    section 4). --g-act leaky builds the README's faces table: LeakyReLU in G, no Tanh.
 7. z (100 numbers) is "projected and reshaped" to 4x4 (figure 1): a 4x4 transposed convolution of
    the 1x1 input is a fully connected layer and a reshape. Figure 1 draws z uniform; we draw
    z ~ N(0, I), as the PyTorch DCGAN tutorial does.
 8. Images scaled to [-1, 1], Tanh's range, no other pre-processing (section 4); photos are first
    resized on their shorter side and centre-cropped to 64x64, as in the tutorial.
 9. Weights from N(0, 0.02) (section 4); BatchNorm scales N(1, 0.02), biases 0 (the tutorial's).
10. Adam, beta1 0.5 ("0.9 resulted in training oscillation and instability", section 4); batch 128.
    D's lr is the paper's 0.0002, G's twice that, as Heusel et al. 2017 (arXiv:1706.08500, Table 1)
    ran DCGAN with G's above D's (CelebA: D 1e-5, G 5e-4). On faces D(G(z))'s opening swings
    outlasted step 100 in 8 of 8 seeds with one lr (--lr-g 2e-4: the paper's recipe), in none with
    G's doubled (README).
"""

import argparse, contextlib, math, os, shutil, signal, time  # noqa: E401
from pathlib import Path

try:  # the run folder's lock: POSIX only
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

try:  # deprecated in torchvision 0.29; PIL once gone
    from torchvision.io import ImageReadMode, decode_image
except ImportError:
    decode_image = None

SCRIPT = Path(__file__).stem
# The networks' size, not a knob: for twice (half) the size add (remove) a stride-2 block (4x4
# convolution, BatchNorm, activation) in G and in D, keeping G's first and D's last 4x4 layer
# (1x1 <-> 4x4); pytorch/examples issues #70 and #1278 ask for it.
IMAGE_SIZE = 64
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
D_WINS_STEPS, D_WINS_BELOW, D_WINS_FROM = 20, 0.02, 100  # warn_if_d_wins's rule
KEEP_EPOCHS = 3  # epoch checkpoints kept
PARTS = ("G", "D", "opt_G", "opt_D", "scaler")  # in a checkpoint
RUN_PARTS = ("checkpoint.pt", "checkpoints", "log.csv", "samples", "real.png")  # a run's folder
CHANGEABLE = ("epochs", "lr", "lr_g", "data")  # a resume may change them; THIS_COMMAND: per command
THIS_COMMAND = "out resume generate max_steps device workers cache compile log_every given".split()


# ---- Networks (figure 1). B: the batch size, C: --channels ----
class Generator(nn.Sequential):
    """z (B, z_dim, 1, 1) -> image (B, C, 64, 64), shapes for --ngf 64. 4x4 transposed convolutions:
    stride 1, no padding: 1x1 to 4x4; stride 2, padding 1: twice the size; no bias (BatchNorm's)."""

    def __init__(self, z_dim=100, ngf=64, channels=3, act="relu"):
        relu = lambda: nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(0.2, inplace=True)
        super().__init__(  # input z: (B, 100, 1, 1)
            nn.ConvTranspose2d(z_dim, ngf * 8, 4, 1, 0, bias=False),  # (B, 512, 4, 4), detail 7
            nn.BatchNorm2d(ngf * 8),  # (B, 512, 4, 4)
            relu(),  # (B, 512, 4, 4)
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),  # (B, 256, 8, 8)
            nn.BatchNorm2d(ngf * 4),  # (B, 256, 8, 8)
            relu(),  # (B, 256, 8, 8)
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # (B, 128, 16, 16)
            nn.BatchNorm2d(ngf * 2),  # (B, 128, 16, 16)
            relu(),  # (B, 128, 16, 16)
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # (B, 64, 32, 32)
            nn.BatchNorm2d(ngf),  # (B, 64, 32, 32)
            relu(),  # (B, 64, 32, 32)
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False),  # (B, C, 64, 64), no BatchNorm
            # Tanh: pixels in [-1, 1] (detail 6); --g-act leaky: its table's LeakyReLU, no Tanh
            nn.Tanh() if act == "relu" else relu(),  # (B, C, 64, 64)
        )


class Discriminator(nn.Sequential):
    """image (B, C, 64, 64) -> logit (B,), shapes for --ndf 64. 4x4 convolutions: stride 2, padding
    1: half the size (detail 4); the last: 4x4 to 1x1. The tables' Sigmoid is in the loss."""

    def __init__(self, ndf=64, channels=3):
        super().__init__(  # input x: (B, C, 64, 64)
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False),  # (B, 64, 32, 32), no BatchNorm
            nn.LeakyReLU(0.2, inplace=True),  # (B, 64, 32, 32)
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),  # (B, 128, 16, 16)
            nn.BatchNorm2d(ndf * 2),  # (B, 128, 16, 16)
            nn.LeakyReLU(0.2, inplace=True),  # (B, 128, 16, 16)
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),  # (B, 256, 8, 8)
            nn.BatchNorm2d(ndf * 4),  # (B, 256, 8, 8)
            nn.LeakyReLU(0.2, inplace=True),  # (B, 256, 8, 8)
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),  # (B, 512, 4, 4)
            nn.BatchNorm2d(ndf * 8),  # (B, 512, 4, 4)
            nn.LeakyReLU(0.2, inplace=True),  # (B, 512, 4, 4)
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),  # (B, 1, 1, 1): the logit of D(x)
            nn.Flatten(0),  # (B,)
        )


def init_weights(module):
    """Detail 9: convolution weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0 if isinstance(module, nn.BatchNorm2d) else 0.0, 0.02)
    if isinstance(module, nn.BatchNorm2d):
        nn.init.zeros_(module.bias)


def noise(n, args, device, rng=None):
    """n samples of z ~ N(0, I), as 1x1 images (n, z_dim, 1, 1). Departure: the paper draws z
    uniform (figure 1); we follow the PyTorch DCGAN tutorial. Drawn on the CPU (rng: a CPU
    generator): the same z on every device."""
    pin = torch.device(device).type == "cuda"
    z = torch.randn(n, args.z_dim, 1, 1, generator=rng, pin_memory=pin)
    return z.to(device, non_blocking=pin)


def build(args, device):
    """G and D, initialised (detail 9), in memory_format; their fused Adam (detail 10)."""
    G = Generator(args.z_dim, args.ngf, args.channels, args.g_act)
    D, fmt = Discriminator(args.ndf, args.channels), memory_format(device)
    G, D = (net.apply(init_weights).to(device, memory_format=fmt) for net in (G, D))
    adam = lambda net, lr: torch.optim.Adam(net.parameters(), lr, betas=(0.5, 0.999), fused=True)
    return G, D, *(adam(net, lr) for net, lr in ((G, args.lr_g), (D, args.lr)))


# ---- Losses and one iteration of Algorithm 1 ----
def train_step(G, D, D_frozen, opt_G, opt_D, x, z, amp, scaler):
    """One iteration of Algorithm 1 (k = 1) on real x (B, C, 64, 64) and noise z; G, D maybe wrapped
    (DDP, torch.compile). D_frozen: D without DDP, which would wait for D's gradients in the G step.
    Returns (4,): loss_d, loss_g, D(x), D(G(z))."""
    ones = torch.ones(len(x), device=x.device)  # (B,) target "real"
    zeros = torch.zeros(len(x), device=x.device)  # (B,) target "fake"

    # (1) Update D: maximise log D(x) + log(1 - D(G(z))) (eq. 1), i.e. minimise BCE(D(x), 1) +
    # BCE(D(G(z)), 0). Real and fake go through D apart: each BatchNorm sees an all-real or all-fake
    # batch, as in the tutorial. fake.detach(): G is not updated here.
    with amp:
        fake = G(z)  # (B, C, 64, 64), used by both steps
        real_logits = D(x).float()  # (B,)
        fake_logits = D(fake.detach()).float()  # (B,)
        loss_d = F.binary_cross_entropy_with_logits(real_logits, ones)
        loss_d = loss_d + F.binary_cross_entropy_with_logits(fake_logits, zeros)
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_D)

    # (2) Update G: maximise log D(G(z)) (detail 2), i.e. minimise BCE(D(G(z)), 1). Departure:
    # Algorithm 1 draws a fresh minibatch of z here; we reuse the D step's fakes, as the PyTorch
    # DCGAN tutorial does. D, updated, is frozen: no gradient for its weights.
    D_frozen.requires_grad_(False)
    with amp:
        gen_logits = D_frozen(fake).float()  # (B,)
        loss_g = F.binary_cross_entropy_with_logits(gen_logits, ones)
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_G)
    scaler.update()
    D_frozen.requires_grad_(True)

    d_x = torch.sigmoid(real_logits.detach()).mean()  # D(x), a probability
    d_g_z = torch.sigmoid(fake_logits.detach()).mean()  # D(G(z)), a probability
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


# ---- The training loop ----
def train(args):
    (rank, world, device), out = setup(args), Path(args.out)
    ckpt = open_run(args, device, rank, world)  # None for a new run
    dtype = amp_dtype(args, device, rank, world)  # None: float32
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    data = Photos(args, rank, world, device)
    torch.manual_seed(args.seed)  # initial weights
    G, D, opt_G, opt_D = build(args, device)
    models = (G, D, opt_G, opt_D, scaler)
    fixed_z = noise(64, args, "cpu", torch.Generator().manual_seed(args.seed))  # the grids' z
    step = epoch = batch = 0  # batch: steps into the epoch
    if ckpt:
        restore(zip(models, PARTS), ckpt)
        for opt, lr in ((opt_G, args.lr_g), (opt_D, args.lr)):  # a resume may change lr
            opt.param_groups[0]["lr"] = lr
        step, epoch, batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        fixed_z = ckpt["fixed_z"].cpu()
    last = step + data.steps - batch + (args.epochs - epoch - 1) * data.steps
    last = min(last if epoch < args.epochs else step, args.max_steps or math.inf)
    if last <= step:
        fail(f"the run in {out} is already at step {step}; raise --epochs or --max-steps")
    log = RunLog(out / "log.csv", args, step, last, ckpt, world) if rank == 0 else None
    if not ckpt and rank == 0:
        real = torch.stack([data[i][0] for i in range(min(64, len(data)))])  # (64, C, 64, 64)
        save_image(real / 255, out / "real.png", nrow=8)
    G_train, D_train, D_frozen = wrap(G, D, args, world)
    stopping = False
    with Stopper() as stopper:
        while step < last and not stopping:
            for images in data.epoch(epoch, batch):  # (B, C, 64, 64) uint8: the epoch's rest
                x = images.to(device, non_blocking=images.is_pinned())
                x = x.contiguous(memory_format=memory_format(device))
                x = x.float().div_(127.5).sub_(1.0)  # in [-1, 1] (detail 8)
                seed = hash((args.seed, rank, step))  # resumes need no random state
                z = noise(len(x), args, device, torch.Generator().manual_seed(seed))
                stats = train_step(G_train, D_train, D_frozen, opt_G, opt_D, x, z, amp, scaler)
                step, batch = step + 1, batch + 1
                if log:
                    log.record(step, epoch + 1, stats)
                stopping = stopper.check(stats, step, world)
                if stopping or step == last:
                    break
            if batch >= data.steps:
                epoch, batch = epoch + 1, 0
            stopper.read()  # torchrun: the last flag; no NaN is saved
            save(out, args, models, (step, epoch, batch), fixed_z, log, world)
    if log:
        log.close()
    if world > 1:
        dist.destroy_process_group()


# ---- Plumbing: data, devices, stopping, the run folder, flags ----
EXIF_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}  # orientation -> PIL's undo


def load_image(path, channels):
    """A file -> uint8 (channels, S, S), S = IMAGE_SIZE, upright as its EXIF says; raises if bad."""
    try:
        if decode_image is None:
            raise RuntimeError("torchvision has no image decoders")
        mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
        image = decode_image(path, mode, True)  # True: EXIF orientation
    except RuntimeError:
        pil = torchvision.datasets.folder.pil_loader(path)
        orientation = pil.getexif().get(0x0112, 1)  # 1: upright
        pil = pil.transpose(EXIF_TRANSPOSE[orientation]) if orientation in EXIF_TRANSPOSE else pil
        image = TF.pil_to_tensor(pil if channels == 3 else pil.convert("L"))
    image = image[0] if image.dim() == 4 else image  # a GIF's first frame
    if image.dtype == torch.uint16:  # a 16-bit PNG
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if channels == 1 and len(image) > 2:
        image = TF.rgb_to_grayscale(image[:3])
    image = image[:channels].expand(channels, -1, -1)  # alpha dropped
    image = TF.resize(image, [IMAGE_SIZE], antialias=True)  # shorter side -> S (detail 8)
    return TF.center_crop(image, [IMAGE_SIZE, IMAGE_SIZE]).contiguous()


def find_images(root):
    if not Path(root).is_dir():
        fail(f"--data {root} " + ("is not a folder" if Path(root).exists() else "does not exist"))
    paths = (p for p in Path(root).rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    return sorted(map(str, paths)) or fail(f"no images in {root} or below ({', '.join(SUFFIXES)})")


class Photos(Dataset):
    """This process's share of the files. Item i: image i, the index of a file skipped for it (a bad
    one must not end a run) and why, or (-1, "")."""

    def __init__(self, args, rank, world, device):
        self.paths, self.args, self.named = find_images(args.data), args, set()
        self.pin = device.type == "cuda"
        self.load = {"num_workers": args.workers, "worker_init_fn": ignore_signals}
        try:
            self[0]
        except RuntimeError as e:
            fail(f"no readable image in {args.data}: {e}")
        if getattr(args, "images", len(self)) != len(self):  # resumed
            fail(f"--data {args.data} holds {len(self)} images, not the run's {args.images}")
        self.paths, args.images = self.paths[rank::world], len(self)
        self.cache = cache_images(self, device) if args.cache else None
        n = torch.tensor(len(self), device=device if world > 1 else "cpu")
        if world > 1:
            dist.all_reduce(n, op=dist.ReduceOp.MIN)  # the same steps in all
        self.steps = int(n) // args.batch_size
        if not self.steps:
            fail(f"{args.data}: {int(n)} images, fewer than one batch")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        why = ""
        for k in range(len(self)):  # the next file stands in
            path = self.paths[(i + k) % len(self)]
            try:
                return load_image(path, self.args.channels), (i if k else -1), why
            except Exception as e:
                why = why or f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        raise RuntimeError(f"all {len(self)} files failed to decode (e.g. {self.paths[i]}: {why})")

    def epoch(self, epoch, start):
        """uint8 (B, C, S, S) batches from batch `start` on, ordered by (--seed, epoch)."""
        rng = torch.Generator().manual_seed(hash((self.args.seed, epoch)))
        order = torch.randperm(len(self), generator=rng)
        batches = order[: self.steps * self.args.batch_size].view(self.steps, -1)[start:]
        if self.cache is not None:
            yield from (self.cache[b.to(self.cache.device)] for b in batches)
            return
        loader = DataLoader(self, batch_sampler=batches.tolist(), pin_memory=self.pin, **self.load)
        for images, skipped, why in loader:
            name_skipped(self, skipped, why)
            yield images


def name_skipped(photos, skipped, why):
    for i, reason in zip(skipped.tolist(), why):
        if i >= 0 and i not in photos.named:
            photos.named.add(i)
            print(f"skipped unreadable {photos.paths[i]} ({reason}); {len(photos.named)} so far")


def cache_images(photos, device):
    """--cache: the images decoded once, on the GPU if they fit twice."""
    t, start, size = time.perf_counter(), 0, (photos.args.channels, IMAGE_SIZE, IMAGE_SIZE)
    cache = torch.empty(len(photos), *size, dtype=torch.uint8)
    for images, skipped, why in DataLoader(photos, 256, **photos.load):
        cache[start : start + len(images)], start = images, start + len(images)
        name_skipped(photos, skipped, why)
    if device.type == "cuda" and 2 * cache.nbytes < torch.cuda.mem_get_info(device)[0]:
        cache = cache.to(device)
    mib, seconds = cache.nbytes / 2**20, time.perf_counter() - t
    print(f"cached {len(cache)} images ({mib:.0f} MiB, on {cache.device.type}) in {seconds:.1f} s")
    return cache


def ignore_signals(worker_id):
    """The trainer, not the workers, handles Ctrl-C and SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def memory_format(device):
    """Channels-last, faster, but not on MPS: it broke BatchNorm (pytorch #175189)."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def pick_device(name, world=1):
    ok = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    name = next(kind for kind in ("cuda", "mps", "cpu") if ok[kind]) if name == "auto" else name
    kind, _, index = name.partition(":")
    if kind not in ok or index and not (kind == "cuda" and index.isdigit()):
        fail(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    ok["mps"] = ok["mps"] and world == 1
    if not ok[kind] or index and int(index) >= torch.cuda.device_count():
        why = " (torchrun runs need cuda or cpu)" if kind == "mps" else ""
        fail(f"--device {name}: not available here{why}")
    return torch.device(name)


def setup(args):
    """(rank, world size, device); torchrun: NCCL between GPUs, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" not in os.environ:
        fail("WORLD_SIZE is set but RANK is not: use torchrun, or unset it")
    device = pick_device(args.device, world)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # first: nothing lands on GPU 0
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def wrap(G, D, args, world):
    """(G, D, D without DDP), compiled with --compile; DDP averages gradients (D's BatchNorm buffers
    are not broadcast: that broke its backward)."""
    nets = (G, D)
    if world > 1:
        nets = (DistributedDataParallel(G), DistributedDataParallel(D, broadcast_buffers=False))
    return tuple(torch.compile(n, backend=args.compile) if args.compile else n for n in (*nets, D))


def amp_dtype(args, device, rank=0, world=1):
    """--amp's dtype (None: float32): bfloat16, or float16 before Ampere; on CPUs only if 5% faster
    (1.6x faster on an AMD EPYC, 1.4x slower on an Intel Xeon)."""
    if args.amp and device.type == "mps":
        fail("--amp needs a cpu or cuda device, not mps")
    old = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8
    half = args.amp == "fp16" or args.amp == "auto" and old
    dtype = (torch.float16 if half else torch.bfloat16) if args.amp else None
    said = "float16 autocast with a gradient scaler" if half else "bfloat16 autocast"
    if args.amp == "auto" and device.type == "cpu" and not args.generate:
        seconds = torch.tensor([step_seconds(args, device, d) for d in (None, torch.bfloat16)])
        if world > 1:
            dist.all_reduce(seconds)
        fast, ratio = seconds[1] < 0.95 * seconds[0], (seconds.max() / seconds.min()).item()
        dtype, said = (torch.bfloat16, said) if fast else (None, "float32")
        speed = "faster" if fast else "slower"
        said = f"bfloat16 is {ratio:.1f}x {speed} than float32 here; training in {said}"
    if args.amp and rank == 0:
        print(f"--amp: {said}", flush=True)
    return dtype


def step_seconds(args, device, dtype):
    G, D, opt_G, opt_D = build(args, device)
    x = torch.rand(args.batch_size, args.channels, IMAGE_SIZE, IMAGE_SIZE, device=device) * 2 - 1
    x, z = x.contiguous(memory_format=memory_format(device)), noise(args.batch_size, args, device)
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler, times = torch.amp.GradScaler(device.type, enabled=False), []
    for _ in range(5):  # 2 warm-up steps, then the best of 3
        t = time.perf_counter()
        train_step(G, D, D, opt_G, opt_D, x, z, amp, scaler)
        times.append(time.perf_counter() - t)
    return min(times[2:])


class Stopper:
    """Ctrl-C and SIGTERM end the run after the step, saved, exit 0; a repeat within a second is the
    same request, a later one stops at once."""

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
        """Stop? Alone: the Python flag, no host sync (RunLog.flush finds NaN). Under torchrun each
        step's flag (2: NaN, 1: stop) is all-reduced during the next step and read after it."""
        if world == 1:
            return bool(self.asked)
        flag = (~stats.isfinite().all()) * 2.0 + bool(self.asked)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        self.pending.append((flag, work, step))
        return len(self.pending) > 1 and self.read()

    def read(self):
        """The oldest flag: stop? NaN: one line, exit 1."""
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
    """Process 0's: checkpoint.pt first (torchrun kills 30 s after a stop), grid, epoch copy."""
    if not log:
        return
    (step, epoch, batch), G = where, models[0]
    log.flush()  # NaN checked
    ckpt = {k: m.state_dict() for k, m in zip(PARTS, models)}
    ckpt |= {"script": SCRIPT, "args": vars(args), "step": step, "epoch": epoch, "batch": batch}
    ckpt |= {"world": world, "fixed_z": fixed_z, "time": time.perf_counter() - log.t0}
    ckpt["log_bytes"] = log.file.tell()
    try:
        torch.save(ckpt, out / "checkpoint.tmp")
    except RuntimeError as e:  # a full disk
        (out / "checkpoint.tmp").unlink(missing_ok=True)
        fail(f"cannot write a checkpoint in {out} ({str(e)[:60]}); the last is kept")
    os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")
    grid = (sample(G, fixed_z.to(next(G.parameters()).device)).float() + 1) / 2  # (64, C, S, S)
    (out / "samples").mkdir(exist_ok=True)
    save_image(grid, out / "samples" / f"epoch_{epoch + (batch > 0):04d}.png", nrow=8)
    if batch == 0:
        (out / "checkpoints").mkdir(exist_ok=True)
        shutil.copyfile(out / "checkpoint.pt", out / "checkpoints" / f"epoch_{epoch:04d}.pt")
        for path in (out / "checkpoints").glob("epoch_[0-9][0-9][0-9][0-9].pt"):
            if not epoch - KEEP_EPOCHS < int(path.stem[6:]) <= epoch:  # later: rolled back
                path.unlink()


def sample(G, z):
    """G(z), no gradients; BatchNorm in train mode (eval's samples are flat early on), on copies."""
    with torch.no_grad():
        buffers = {k: b.clone() for k, b in G.named_buffers()}
        return torch.func.functional_call(G.train(), buffers, z)


@contextlib.contextmanager
def hold(out):
    """Locks out/lock while training: a second process refuses in one line."""
    if out.is_file():
        fail(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lock", "w") as lock:
        try:
            if fcntl and os.environ.get("RANK", "0") == "0":
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another process is training into {out}: wait for it, or pick another --out")
        yield


def load_checkpoint(path, device):
    """A checkpoint of this script, or one line why not."""
    if not path.is_file():
        fail(f"no checkpoint at {path} (train first, or pick --out)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        fail(f"cannot read {path}: damaged, or not a checkpoint ({type(e).__name__})")
    owner = ckpt.get("script") if isinstance(ckpt, dict) else None
    if owner != SCRIPT:
        but = f" but of {owner}.py" if isinstance(owner, str) else ""
        fail(f"{path} is not a checkpoint of {SCRIPT}.py{but}")
    return ckpt


def open_run(args, device, rank=0, world=1):
    """None for a new run (no RUN_PARTS in --out), or the checkpoint to go on from, its flags put
    into args: any given must match, but CHANGEABLE."""
    out, here = Path(args.out), Path(args.out) / "checkpoint.pt"
    if not args.resume and not args.generate:
        held = ", ".join(n for n in RUN_PARTS if (out / n).is_file() or any((out / n).glob("*")))
        if held and rank == 0:
            fail(f"--out {out} already holds a run ({held}): --resume it, or pick another --out")
        args.run = os.urandom(8).hex()  # the run's name
        return None
    path = here if args.resume in (None, True) else Path(args.resume)
    ckpt = load_checkpoint(path, device)
    run = ckpt["args"].get("run")
    if path != here and (
        not here.is_file() or load_checkpoint(here, "cpu")["args"].get("run") != run
    ):
        fail(f"{path} is not a checkpoint of the run in {out}")
    changeable = CHANGEABLE + ("seed", "batch_size") * (args.generate is not None)  # z: its own
    for flag, then in ckpt["args"].items():
        if flag in THIS_COMMAND or flag in args.given and flag in changeable:
            continue
        if flag in args.given and getattr(args, flag) != then:
            now, flag = getattr(args, flag), flag.replace("_", "-")
            fail(
                f"{path} was trained with --{flag} {then}, not {now}; leave the flag out to go on "
                "with the run's"
            )
        setattr(args, flag, then)
    if not args.generate and ckpt["world"] != world:
        fail(f"{path} was trained by {ckpt['world']} process(es), not {world}; resume with as many")
    return ckpt


def restore(parts, ckpt):
    try:
        for part, key in parts:
            part.load_state_dict(ckpt[key] or part.state_dict())  # {}: a disabled scaler's
    except (KeyError, RuntimeError, ValueError) as e:
        why = " ".join(str(e).split())[:150]
        fail(f"the checkpoint does not fit {SCRIPT}.py's networks: {why}")


class RunLog:
    """log.csv, a row a step, and a line every --log-every seconds; the stats stay on the device
    until then: one host sync a line (torchrun's Stopper adds one a step)."""

    def __init__(self, path, args, step, last, ckpt, world):
        if ckpt:
            size = ckpt["log_bytes"]
            head = path.read_bytes()[:size] if path.is_file() else b""
            rows = head.splitlines() if len(head) == size and head.endswith(b"\n") else [b""]
            if not rows[-1].startswith(f"{step},".encode()):  # rolled back past it?
                fail(f"{path} does not hold the rows to step {step} of this checkpoint")
            os.truncate(path, size)
        self.file = open(path, "a" if ckpt else "w")
        self.file.write("" if ckpt else "step,epoch,time,loss_d,loss_g,d_real,d_fake\n")
        self.args, self.first, self.step, self.last = args, step, step, last
        self.images, self.rows, self.d_fake = args.batch_size * world, [], []
        self.t0 = time.perf_counter() - (ckpt["time"] if ckpt else 0.0)  # the run's clock
        self.t_first = self.t_line = time.perf_counter()

    def record(self, step, epoch, stats):
        self.rows.append((step, epoch, time.perf_counter() - self.t0, stats))
        if time.perf_counter() - self.t_line > self.args.log_every:
            self.flush()

    def flush(self):
        if not self.rows:
            return
        values = torch.stack([row[3] for row in self.rows]).tolist()  # the one host sync
        for (step, epoch, t, _), row in zip(self.rows, values):
            self.file.write(f"{step},{epoch},{t:.3f}," + ",".join(f"{v:.5f}" for v in row) + "\n")
        self.file.flush()
        (self.step, epoch, *_), (loss_d, loss_g, d_real, d_fake) = self.rows[-1], values[-1]
        if not math.isfinite(sum(map(sum, values))):
            out = Path(self.file.name).parent
            fail(
                f"losses became NaN or infinite by step {self.step}; the last good checkpoint is "
                f"kept in {out}"
            )
        rate = (self.step - self.first) / (time.perf_counter() - self.t_first)
        left = (self.last - self.step) / rate / 60
        print(
            f"epoch {epoch}/{self.args.epochs} step {self.step}/{self.last} | loss D {loss_d:.3f} "
            f"G {loss_g:.3f} | D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | {rate * self.images:.0f} "
            f"img/s | {left:.1f} min left",
            flush=True,
        )
        if self.d_fake is not None:  # None: warned
            self.d_fake = warn_if_d_wins(self.d_fake + [row[3] for row in values], self.step)
        self.rows, self.t_line = [], time.perf_counter()

    def close(self):
        self.flush()
        self.file.close()
        steps, seconds = self.step - self.first, time.perf_counter() - self.t_first
        out, rate = Path(self.file.name).parent, steps * self.images / seconds
        print(f"trained {steps} steps in {seconds:.1f} s ({rate:.0f} images/s); run folder {out}")


def warn_if_d_wins(d_fake, step):
    """Warns once if D(G(z)) averaged under D_WINS_BELOW over D_WINS_STEPS steps: D has won."""
    recent = d_fake[-D_WINS_STEPS:]
    mean = sum(recent) / D_WINS_STEPS
    if step < D_WINS_FROM or len(recent) < D_WINS_STEPS or mean >= D_WINS_BELOW:
        return recent
    print(
        f"warning: D has won: D(G(z)) averaged below {D_WINS_BELOW} over {D_WINS_STEPS} steps to "
        f"step {step}; such runs rarely recover: restart with another --seed (README)",
        flush=True,
    )


def generate(args):
    """--generate N: exactly N PNGs in --out/generated/ (earlier ones removed), and a grid."""
    device, out = setup(args)[2], Path(args.out)
    ckpt = open_run(args, device)
    G, written = build(args, device)[0], 0
    folder, grid = out / "generated", out / "generated_grid.png"
    restore([(G, "G")], ckpt)
    dtype, rng, seconds = amp_dtype(args, device), torch.Generator().manual_seed(args.seed), 0.0
    chunk, n = max(64, args.batch_size), args.generate
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.png"):
        path.unlink()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop, as Ctrl-C
    try:
        for start in range(0, n, chunk):
            z, t = noise(chunk, args, device, rng), time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                images = ((sample(G, z).float() + 1) / 2).clamp_(0, 1)[: n - start].cpu()
            seconds += time.perf_counter() - t
            for image in images:
                save_image(image, folder / f"{written:06d}.png")
                written += 1
            if start == 0:
                save_image(images[:64], grid, nrow=8)
    except KeyboardInterrupt:
        (folder / f"{written:06d}.png").unlink(missing_ok=True)  # half written?
        fail(f"stopped: {written} of {n} images written to {folder}")
    print(
        f"wrote {n} images to {folder} and a grid of the first {min(64, n)} to {grid} "
        f"(G: {n / seconds:.0f} images/s)"
    )


def fail(message):
    """One line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add = p.add_argument
    add("--data", default="./data", help="image folder, at any depth")
    add("--epochs", type=int, default=5, help="the last epoch")
    add("--batch-size", type=int, default=128, help="images per step and process")
    add("--lr", type=float, default=2e-4, help="D's learning rate")
    add("--lr-g", type=float, default=4e-4, help="G's (detail 10)")
    add("--z-dim", type=int, default=100, help="size of z")
    add("--ngf", type=int, default=64, help="G's width (the paper's: 128)")
    add("--ndf", type=int, default=64, help="D's width (the paper's: 128)")
    act = "G's activation: relu (the paper's) or leaky (the faces table's, with no Tanh)"
    add("--g-act", choices=["relu", "leaky"], default="relu", help=act)
    add("--channels", type=int, choices=[1, 3], default=3, help="3: colour, 1: grey")
    add("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes")
    add("--cache", action="store_true", help="decode images once, into (GPU) memory")
    add("--compile", nargs="?", const="inductor", metavar="BACKEND", help="torch.compile G and D")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add("--seed", type=int, default=0, help="of weights, noise and data order")
    add("--out", default=f"runs/{SCRIPT}", help="run folder")
    add("--max-steps", type=int, help="the last step")
    add("--resume", nargs="?", const=True, metavar="CKPT", help="go on with --out's run or CKPT")
    add("--generate", type=int, metavar="N", help="write N images")
    amp = "auto: bf16 where faster, fp16 before Ampere"
    add("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], help=amp)
    add("--log-every", type=float, default=5.0, help="seconds between lines")
    args = p.parse_args(argv)
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))  # no defaults: what was typed
    args.given = [k for k, value in vars(p.parse_args(argv, unset)).items() if value is not None]
    for flag in "epochs batch_size lr lr_g z_dim ngf ndf max_steps generate log_every".split():
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:  # NaN too
            fail(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if not 0 <= args.seed < 2**63 or args.workers < 0:
        fail(f"--seed must be in [0, 2**63), --workers >= 0: got {args.seed}, {args.workers}")
    if args.compile and args.compile not in torch.compiler.list_backends(exclude_tags=()):
        known = ", ".join(torch.compiler.list_backends())
        fail(f"--compile {args.compile}: not a torch.compile backend ({known})")
    compilers = (os.getenv("CXX", "g++"), "clang++")
    if args.compile == "inductor" and not any(map(shutil.which, compilers)):
        fail("--compile needs a C++ compiler (g++, clang++ or $CXX); try --compile aot_eager")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.generate:
            generate(args)
        else:
            with hold(Path(args.out)):
                train(args)
    except OSError as e:  # a path the OS refuses, a full disk
        fail(f"{e.strerror or e}: {e.filename or args.out}")


if __name__ == "__main__":
    main()
