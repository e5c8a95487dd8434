"""Least Squares GAN (LSGAN) on MNIST, with multilayer-perceptron networks.

Paper: Mao et al. 2017, "Least Squares Generative Adversarial Networks", arXiv:1611.04076.
Game and training loop: Goodfellow et al. 2014, "Generative Adversarial Nets", arXiv:1406.2661.
Networks: those of vanilla_gan.py, the MLPs of the Stanford CS231n GAN notebook (default); the smaller
"Simple GAN" MLPs of the giakou4/gans repository through flags.

    python lsgan.py                                   # MNIST is downloaded into --data if missing
    python lsgan.py --z-dim 64 --g-hidden 256 --d-hidden 128 --g-act leaky   # the Simple GAN's networks
    python lsgan.py --resume --epochs 200             # continue the run in --out
    python lsgan.py --generate 1000                   # write images from --out/checkpoint.pt
Run folder (--out): real.png, samples/ (a grid of the same fixed noise each epoch), log.csv (a row a step),
checkpoint.pt (resumes bit for bit on CPU) and checkpoints/ (the last 3 epochs', for --resume PATH), generated/.

Implementation details, each tied to the paper:
 1. Least-squares losses instead of the sigmoid cross-entropy (Mao et al., eq. 2), with the 0-1 coding of
    section 3.2.2 (a = 0 for fake, b = 1 for real, c = 1 what G wants D to say), eq. 9:
        min_D  1/2 E_x[(D(x) - 1)^2] + 1/2 E_z[D(G(z))^2]
        min_G  1/2 E_z[(D(G(z)) - 1)^2]
    Fakes that D scores correctly but lie far from the decision boundary are still penalised, so G gets
    gradients where the sigmoid cross-entropy saturates (section 3.1).
 2. D outputs a raw score: no sigmoid, the least-squares loss acts on D's linear output directly.
 3. One D step and one G step per minibatch, as in Algorithm 1 of Goodfellow et al. with k = 1.
 4. Real pixels are scaled to [-1, 1] to match G's Tanh output.
 5. Adam (lr 1e-3, beta1 0.5), as in the CS231n notebook (the paper: lr 2e-4 for its LSUN nets).
"""
import argparse, contextlib, math, os, shutil, signal, time  # noqa: E401 (the standard library)
from pathlib import Path

try:  # the run folder's lock: POSIX only, so Windows trains without it
    import fcntl
except ImportError:
    fcntl = None

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.utils import save_image

SCRIPT = Path(__file__).stem
D_WINS_STEPS, D_WINS_BELOW = 300, 0.05  # warn when D(G(z)) averaged below this over so many steps: G learns little
KEEP_EPOCHS = 3         # epoch checkpoints kept in checkpoints/ beside checkpoint.pt
PARTS = ("G", "D", "opt_G", "opt_D", "scaler")  # the checkpoint's names for what train() keeps state in
RUN_PARTS = ("checkpoint.pt", "checkpoints", "log.csv", "samples", "real.png")  # any of them: a run's folder
CHANGEABLE = ("epochs", "lr", "data")  # the flags a resume may change (README)
THIS_COMMAND = ("out", "resume", "generate", "max_steps", "device", "log_every", "given")  # not the run's


# ---- Networks: the CS231n notebook's MLPs, or the Simple GAN's through flags. B is the batch size --------
class Generator(nn.Sequential):
    """z -> image. CS231n: Linear z->1024, ReLU, Linear 1024->1024, ReLU, Linear 1024->784, Tanh."""

    def __init__(self, z_dim=96, hidden=(1024, 1024), act="relu"):
        layers, width = [], z_dim                               # input z: (B, z_dim)
        for h in hidden:
            layers += [nn.Linear(width, h),                     # (B, h)
                       nn.ReLU() if act == "relu" else nn.LeakyReLU(0.01)]  # (B, h)
            width = h
        super().__init__(*layers, nn.Linear(width, 28 * 28),    # (B, 784)
                         nn.Tanh(),                             # (B, 784), pixels in [-1, 1] (detail 4)
                         nn.Unflatten(1, (1, 28, 28)))          # (B, 1, 28, 28)


class Discriminator(nn.Sequential):
    """image -> score. CS231n: Linear 784->256, LeakyReLU(0.01), Linear 256->256, LeakyReLU(0.01), Linear 256->1.
    The Simple GAN's table writes Tanh on D's output; we keep D's output linear (detail 2): the least-squares
    loss regresses it onto the codes 0 and 1, and a Tanh would only squash the gradients LSGAN is designed to keep."""

    def __init__(self, hidden=(256, 256)):
        layers, width = [nn.Flatten()], 28 * 28                 # input x: (B, 1, 28, 28) -> (B, 784)
        for h in hidden:
            layers += [nn.Linear(width, h),                     # (B, h)
                       nn.LeakyReLU(0.01)]                      # (B, h)
            width = h
        super().__init__(*layers, nn.Linear(width, 1),          # (B, 1): the score D(x), no sigmoid
                         nn.Flatten(0))                         # (B,)


def noise(n, args, device, rng=None):
    """n samples of z ~ N(0, I), the prior p_z of the paper: (n, z_dim). Drawn on the CPU (rng: a CPU generator),
    so a seed gives the same z on every device; on CUDA into pinned memory, copied asynchronously."""
    z = torch.randn(n, args.z_dim, generator=rng, pin_memory=device.type == "cuda")
    return z.to(device, non_blocking=device.type == "cuda")


def build(args, device):
    """G, D and their Adam optimizers (detail 5), fused (one kernel for all parameters) on every device."""
    G = Generator(args.z_dim, args.g_hidden, args.g_act).to(device)
    D = Discriminator(args.d_hidden).to(device)
    return G, D, *(torch.optim.Adam(m.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=True) for m in (G, D))


# ---- Losses (Mao et al. eq. 9) and one iteration of Algorithm 1 of Goodfellow et al. ---------------------
def train_step(G, D, opt_G, opt_D, x, z, amp, scaler):
    """One D step, then one G step (Goodfellow et al. Algorithm 1, k = 1) with the losses of eq. 9, on real x
    (B, 1, 28, 28) and noise z. amp: the autocast context. scaler: float16's gradient scaler for both optimizers
    (a no-op when disabled). Returns a (4,) tensor: loss of D, loss of G, D's mean scores on x and G(z) (no sync)."""
    B = len(x)
    with amp:
        fake = G(z)                                             # (B, 1, 28, 28), used by both steps
        # -- D step (eq. 9): minimise 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2] with b = 1, a = 0. Real and
        # fake go through D as one batch: D has no BatchNorm, so this equals two separate passes and is
        # faster. fake.detach(): G is not updated here.
        scores = D(torch.cat([x, fake.detach()])).float()       # (2B,) scores: B real, then B fake
        real_scores, fake_scores = scores[:B], scores[B:]       # (B,), (B,)
        loss_d = (0.5 * F.mse_loss(real_scores, torch.ones_like(real_scores))      # the code b = 1 for real
                  + 0.5 * F.mse_loss(fake_scores, torch.zeros_like(fake_scores)))  # the code a = 0 for fake
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_D)

    # -- G step (eq. 9): minimise 1/2 E[(D(G(z)) - c)^2] with c = 1, so that D takes fakes for real.
    # The fake batch is reused; D is frozen so no D weight gradient is computed.
    D.requires_grad_(False)
    with amp:
        gen_scores = D(fake).float()                            # (B,) scores of the updated D
        loss_g = 0.5 * F.mse_loss(gen_scores, torch.ones_like(gen_scores))  # the code c = 1: "real"
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_G)
    scaler.update()                                             # once an iteration, for both optimizers
    D.requires_grad_(True)

    d_x = real_scores.detach().mean()                           # D(x), a mean score: aims at b = 1
    d_g_z = fake_scores.detach().mean()                         # D(G(z)), a mean score: aims at a = 0
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


# ---- The training loop -----------------------------------------------------------------------------------
def train(args):
    (device, dtype), out = setup(args), Path(args.out)          # dtype: --amp's autocast dtype, None for float32
    ckpt = open_run(args, device)                               # None for a new run
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # float16's, for both optimizers
    try:                                                        # MNIST's training images, downloaded if missing
        data = torchvision.datasets.MNIST(args.data, train=True, download=True).data.to(device)  # (N, 28, 28) uint8
    except Exception as e:                                      # no network, a firewall, damaged files...
        cause = (str(e).splitlines() or [""])[-1][:60]          # torchvision's last line says why (may be empty)
        fail(f"no readable MNIST in {Path(args.data) / 'MNIST' / 'raw'} and no download ({cause}); put the unzipped "
             "train-images-idx3-ubyte and train-labels-idx1-ubyte from the MNIST site there")
    B, per_epoch = args.batch_size, len(data) // args.batch_size  # an epoch's last partial batch is left out
    if per_epoch == 0 or getattr(args, "images", len(data)) != len(data):  # a resume: the run's count
        fail(f"{args.data} holds {len(data)} images, " + (f"not the run's {args.images}" if per_epoch else
                                                          f"fewer than one batch of {B}"))
    args.images = len(data)
    torch.manual_seed(args.seed)                                # initial weights
    G, D, opt_G, opt_D = nets = build(args, device)
    fixed_z = noise(64, args, device, torch.Generator().manual_seed(args.seed))  # the grids' z, every epoch
    step = epoch = batch = 0                                    # steps, whole epochs, batches of this epoch done
    if ckpt:
        restore(zip((*nets, scaler), PARTS), ckpt)
        for group in opt_G.param_groups + opt_D.param_groups:
            group["lr"] = args.lr                               # a resumed run may change the learning rate
        fixed_z, step, epoch, batch = ckpt["fixed_z"], ckpt["step"], ckpt["epoch"], ckpt["batch"]
    last_step = min(args.max_steps or math.inf, args.epochs * per_epoch)
    if last_step <= step:
        fail(f"the run in {out} is already at step {step} (epoch {epoch}); raise --epochs or --max-steps")
    for folder in ("checkpoints", "samples"):
        (out / folder).mkdir(exist_ok=True)
    log = RunLog(out, args, step, last_step, ckpt)
    save_image(data[:64].unsqueeze(1) / 255, out / "real.png", nrow=8)  # (64, 1, 28, 28) in [0, 1]

    # Ctrl-C and SIGTERM (also to the whole process group) ask the run to stop: it finishes the step, saves, exits 0.
    asked = []                                                  # the signals received
    handlers = {s: signal.signal(s, lambda signum, _: asked.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    while step < last_step and not asked:
        # This epoch's order of the digits, and below each step's z: drawn on the CPU from generators seeded
        # by the pair (--seed, epoch) and the triple (--seed, 0, step) alone, so a resume needs no random state.
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(hash((args.seed, epoch))))
        order = order.to(device)
        for batch in range(batch, per_epoch):                   # the rest of this epoch
            x = data[order[batch * B:(batch + 1) * B]].unsqueeze(1)  # (B, 1, 28, 28) uint8 in [0, 255]
            x = x.float().div_(127.5).sub_(1.0)                 # real images in [-1, 1] (detail 4)
            z = noise(B, args, device, torch.Generator().manual_seed(hash((args.seed, 0, step))))  # (B, z_dim)
            stats = train_step(G, D, opt_G, opt_D, x, z, amp, scaler)  # (4,), on the device
            step += 1
            log.record(step, epoch + 1, stats)
            if asked or step == last_step:
                break
        epoch, batch = (epoch + 1, 0) if batch + 1 == per_epoch else (epoch, batch + 1)
        # checkpoint.pt atomically (a .tmp file, then renamed), with the log's length to cut it to on resume
        log.flush()                                             # and NaN checked: no NaN reaches a checkpoint
        try:
            torch.save({"script": SCRIPT, "args": vars(args), "step": step, "epoch": epoch, "batch": batch,
                        **{k: m.state_dict() for k, m in zip(PARTS, (*nets, scaler))}, "fixed_z": fixed_z,
                        "time": time.perf_counter() - log.t0, "log_bytes": log.file.tell()}, out / "checkpoint.tmp")
        except RuntimeError as e:                               # torch.save's error when the disk is full
            (out / "checkpoint.tmp").unlink(missing_ok=True)
            fail(f"cannot write a checkpoint in {out} ({str(e)[:60]}: a full disk?); the last one is kept")
        os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")
        if batch == 0:                                          # an epoch's end: keep the last KEEP_EPOCHS epochs'
            shutil.copyfile(out / "checkpoint.pt", out / "checkpoints" / f"epoch_{epoch:04d}.pt")
            for path in (out / "checkpoints").glob("epoch_[0-9][0-9][0-9][0-9].pt"):
                if not epoch - KEEP_EPOCHS < int(path.stem[6:]) <= epoch:  # later ones too: from before a roll-back
                    path.unlink()
        grid = (sample(G, fixed_z).float() + 1) / 2             # (64, 1, 28, 28) in [0, 1]
        save_image(grid, out / "samples" / f"epoch_{epoch + (batch > 0):04d}.png", nrow=8)
    for s, handler in handlers.items():
        signal.signal(s, handler)                               # back as they were
    log.file.close()
    n, seconds = step - log.first_step, time.perf_counter() - log.t_first
    print(f"trained {n} steps in {seconds:.1f} s ({n * B / seconds:.0f} images/s); run folder {out}")


# ---- Plumbing: devices, errors, the run folder (checkpoint, log), generating, flags ----------------------
def setup(args):
    """The device (auto: cuda, then mps, then cpu; cuda:N is made current at once) and --amp's autocast dtype, said
    in one line (None: float32): bfloat16, or float16 with a gradient scaler on GPUs before compute capability 8."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    try:
        device = torch.device(next(d for d, ok in available.items() if ok) if args.device == "auto" else args.device)
    except RuntimeError:
        fail(f"unknown device {args.device!r} (use auto, cpu, cuda, cuda:N or mps)")
    if not available.get(device.type) or device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"--device {args.device}: not available on this machine (try --device cpu)")
    if device.type == "cuda":
        torch.cuda.set_device(device)                           # first: nothing lands on GPU 0 by default
    if not args.amp:
        return device, None
    if device.type == "mps":
        fail("--amp needs a cpu or cuda device, not mps")
    major, minor = torch.cuda.get_device_capability(device) if device.type == "cuda" else (8, 0)
    half = args.amp == "fp16" or args.amp == "auto" and major < 8
    dtype = torch.float16 if half else torch.bfloat16
    said = "float16 autocast with a gradient scaler" if half else "bfloat16 autocast"
    if major < 8:
        said += f" (cuda, compute capability {major}.{minor} has no native bfloat16)"
    if args.amp == "auto" and device.type == "cpu" and not args.generate:  # bfloat16 must be 5% faster
        fp32, bf16 = (step_seconds(args, device, d) for d in (None, torch.bfloat16))
        dtype, said = (dtype, said) if bf16 < 0.95 * fp32 else (None, "float32")
        said = f"bfloat16 is {max(fp32, bf16) / min(fp32, bf16):.1f}x {'faster' if bf16 < fp32 else 'slower'}" \
               f" than float32 here; training in {said}"
    print("--amp: " + said)
    return device, dtype


def step_seconds(args, device, dtype):
    """Seconds of a train_step in dtype (None: float32) on new networks and random images, the best of two after a
    warm-up: how --amp on a CPU compares float32 and bfloat16, whose speed the CPU's flags do not tell (with
    avx512_bf16 it was 1.6x faster on an AMD EPYC and 1.4-1.9x slower on an Intel Xeon)."""
    G, D, opt_G, opt_D = build(args, device)
    x, z = torch.rand(args.batch_size, 1, 28, 28, device=device) * 2 - 1, noise(args.batch_size, args, device)
    amp, times = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), []
    for _ in range(3):
        t = time.perf_counter()
        train_step(G, D, opt_G, opt_D, x, z, amp, torch.amp.GradScaler(device.type, enabled=False))
        times.append(time.perf_counter() - t)
    return min(times[1:])


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


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


def open_run(args, device):
    """A new run (None) into a folder with no part of one (RUN_PARTS), or the checkpoint to go on from: --out's, or
    --resume PATH of the same run (e.g. its checkpoints/epoch_0007.pt), with the run's flags put back into args."""
    out = Path(args.out)
    if not args.resume and not args.generate:
        held = [name for name in RUN_PARTS if (out / name).is_file() or any((out / name).glob("*"))]
        if held:
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
        if flag in args.given and getattr(args, flag) != then:  # said as typed: [1024, 1024] is 1024 1024
            then, now = (str(v).strip("[]").replace(",", "") for v in (then, getattr(args, flag)))
            fail(f"{path} was trained with --{flag.replace('_', '-')} {then}, not {now}; leave the flag out to "
                 "go on with the run's")
        setattr(args, flag, then)
    return ckpt


def restore(parts, ckpt):
    """Loads each part's state ({} for a scaler saved disabled: kept), or one line when the networks do not fit."""
    try:
        for part, key in parts:
            part.load_state_dict(ckpt[key] or part.state_dict())
    except (KeyError, RuntimeError, ValueError) as e:
        fail(f"the checkpoint does not fit {SCRIPT}.py's networks (an older version's?): {' '.join(str(e).split())[:150]}")


class RunLog:
    """log.csv, a row a step, and a progress line every --log-every seconds; the stats stay on the device until then
    (one host sync a line, not a step). On resume log.csv is cut to its length at the checkpoint (log_bytes)."""

    def __init__(self, out, args, step, last_step, ckpt):
        self.out, self.args, self.first_step, self.last_step = out, args, step, last_step
        self.pending, self.recent, self.told = [], [], False
        self.t0 = time.perf_counter() - (ckpt["time"] if ckpt else 0.0)  # the run's clock, across resumes
        self.t_first = self.t_line = time.perf_counter()
        if ckpt:                                                # its rows must end with the checkpoint's step
            head = (out / "log.csv").read_bytes()[:ckpt["log_bytes"]] if (out / "log.csv").is_file() else b""
            if len(head) < ckpt["log_bytes"] or not head.endswith(b"\n") or not head.splitlines()[-1].startswith(
                    f"{step},".encode()):
                fail(f"{out / 'log.csv'} does not hold the rows to step {step} of this checkpoint (rolled back past it?)")
            os.truncate(out / "log.csv", ckpt["log_bytes"])     # drop the rows a killed run wrote after ckpt
        self.file = open(out / "log.csv", "a" if ckpt else "w", buffering=1)  # line-buffered: each row reaches the OS
        self.file.write("" if self.file.tell() else "step,epoch,time,loss_d,loss_g,d_real,d_fake\n")

    def record(self, step, epoch, stats):
        self.pending.append((step, epoch, time.perf_counter() - self.t0, stats))
        if time.perf_counter() - self.t_line > self.args.log_every:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        values = torch.stack([stats for *_, stats in self.pending]).tolist()  # the one host sync
        self.file.writelines(f"{step},{epoch},{t:.3f}," + ",".join(f"{v:.5f}" for v in row) + "\n"
                             for (step, epoch, t, _), row in zip(self.pending, values))
        (step, epoch, *_), (loss_d, loss_g, d_real, d_fake) = self.pending[-1], values[-1]
        if not math.isfinite(sum(map(sum, values))):            # the last good checkpoint stays
            fail(f"losses became NaN or infinite by step {step}; the last good checkpoint is kept in {self.out}")
        rate = (step - self.first_step) / (time.perf_counter() - self.t_first)  # steps/s
        print(f"epoch {epoch}/{self.args.epochs} step {step}/{self.last_step} | loss D {loss_d:.3f} G {loss_g:.3f}"
              f" | D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | {rate * self.args.batch_size:.0f} img/s | "
              f"{(self.last_step - step) / rate / 60:.1f} min left", flush=True)
        self.pending, self.t_line = [], time.perf_counter()
        self.recent = (self.recent + [row[3] for row in values])[-D_WINS_STEPS:]  # D(G(z)) of the last steps
        if not self.told and len(self.recent) == D_WINS_STEPS and sum(self.recent) / D_WINS_STEPS < D_WINS_BELOW:
            self.told = True                                    # said once a run
            print(f"warning: D is winning outright: D(G(z)) averaged {sum(self.recent) / D_WINS_STEPS:.3f} over the "
                  f"last {D_WINS_STEPS} steps (to step {step}), so G learns little; see the README", flush=True)


def sample(G, z):
    """G(z) for the sample grids and --generate, without gradients (G has no BatchNorm: nothing else to set)."""
    with torch.no_grad():
        return G(z)


def generate(args):
    """--generate N: exactly N PNGs in --out/generated/ (earlier ones removed) and generated_grid.png (the first 64),
    from --out's checkpoint or --resume PATH, z drawn as in training, in chunks of max(64, --batch-size): memory does
    not grow with N, and BatchNorm sees 64 images or more. A stop says how many it wrote."""
    (device, dtype), out = setup(args), Path(args.out)
    ckpt = open_run(args, device)                               # the run's network flags, into args
    G, folder, written = build(args, device)[0], out / "generated", 0
    restore([(G, "G")], ckpt)
    rng, chunk, seconds = torch.Generator().manual_seed(args.seed), max(64, args.batch_size), 0.0
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.png"):
        path.unlink()
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # a stop, as Ctrl-C: KeyboardInterrupt
    try:
        for start in range(0, args.generate, chunk):
            z, t = noise(chunk, args, device, rng), time.perf_counter()
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
    p.add_argument("--resume", nargs="?", const=True, metavar="CKPT", help="continue the run in --out, or from CKPT")
    p.add_argument("--generate", type=int, metavar="N", help="write N images from --out/checkpoint.pt, no training")
    p.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], help="bf16, fp16 before Ampere")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))     # no defaults: what the command line gave
    args.given = [flag for flag, value in vars(p.parse_args(argv, unset)).items() if value is not None]
    for flag in ("epochs", "batch_size", "lr", "z_dim", "max_steps", "generate", "log_every", "g_hidden", "d_hidden"):
        value = getattr(args, flag)
        if value is not None and not min(value if isinstance(value, list) else [value]) > 0:  # NaN is not > 0
            fail(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if not 0 <= args.seed < 2**63 or not 0 <= args.beta1 < 1:
        fail(f"--seed must be in [0, 2**63) and --beta1 in [0, 1), got {args.seed} and {args.beta1}")
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
