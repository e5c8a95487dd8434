"""Vanilla GAN on MNIST, with multilayer-perceptron networks.

Paper: Goodfellow et al. 2014, "Generative Adversarial Nets", arXiv:1406.2661. Networks (tables
in the README): the Stanford CS231n GAN notebook's MLPs, or giakou4/gans' "Simple GAN" by flags.

    python vanilla_gan.py  # MNIST is downloaded into --data; then --resume, --generate N

Implementation details, each tied to the paper:
 1. The minimax game V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))] (eq. 1): one D step, then
    one G step, a minibatch (Algorithm 1, k = 1).
 2. G maximises log D(G(z)): "the same fixed point of the dynamics of G and D but ... much
    stronger gradients early in learning" than minimising log(1 - D(G(z))) (section 3).
 3. D outputs a logit; BCEWithLogitsLoss fuses the sigmoid: numerically stable, safe under autocast.
 4. Real pixels are scaled to [-1, 1], the range of G's Tanh.
 5. Adam (lr 1e-3, beta1 0.5), as in the CS231n notebook; the paper used SGD with momentum.
"""

import argparse, contextlib, math, os, shutil, signal, time  # noqa: E401
from pathlib import Path

try:  # the run folder's lock: POSIX only
    import fcntl
except ImportError:
    fcntl = None

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.utils import save_image

SCRIPT = Path(__file__).stem
D_WINS_STEPS, D_WINS_BELOW = 300, 0.05  # warn: D(G(z)) averaged below this over so many steps
KEEP_EPOCHS = 3  # epoch checkpoints kept
PARTS = ("G", "D", "opt_G", "opt_D", "scaler")  # in a checkpoint
RUN_PARTS = ("checkpoint.pt", "checkpoints", "log.csv", "samples", "real.png")  # a run's folder
CHANGEABLE = ("epochs", "lr", "data")  # a resume may change them
THIS_COMMAND = "out resume generate max_steps device log_every given".split()  # not the run's


# ---- Networks: CS231n's MLPs, or the Simple GAN's. B: the batch size
class Generator(nn.Sequential):
    """z -> image. CS231n: Linear z->1024, ReLU, Linear 1024->1024, ReLU, Linear 1024->784, Tanh."""

    def __init__(self, z_dim=96, hidden=(1024, 1024), act="relu"):
        layers, width = [], z_dim  # input z: (B, z_dim)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU() if act == "relu" else nn.LeakyReLU(0.01)]
            width = h  # (B, h) after each
        super().__init__(
            *layers,
            nn.Linear(width, 28 * 28),  # (B, 784)
            nn.Tanh(),  # (B, 784), pixels in [-1, 1] (detail 4)
            nn.Unflatten(1, (1, 28, 28)),  # (B, 1, 28, 28)
        )


class Discriminator(nn.Sequential):
    """image -> logit. CS231n: Linear 784->256, LeakyReLU(0.01), Linear 256->256, LeakyReLU(0.01),
    Linear 256->1. The Simple GAN's ends with Tanh, no probability; ours with a logit (detail 3)."""

    def __init__(self, hidden=(256, 256)):
        layers, width = [nn.Flatten()], 28 * 28  # input x: (B, 1, 28, 28) -> (B, 784)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.01)]
            width = h  # (B, h) after each
        super().__init__(
            *layers,
            nn.Linear(width, 1),  # (B, 1): the logit of D(x)
            nn.Flatten(0),  # (B,)
        )


def noise(n, args, device, rng=None):
    """n samples of z ~ N(0, I), the prior p_z: (n, z_dim). Departure: the CS231n notebook draws z
    uniform in [-1, 1] (the paper leaves p_z open); we follow the PyTorch DCGAN tutorial. Drawn on
    the CPU: the same z on any device."""
    z = torch.randn(n, args.z_dim, generator=rng, pin_memory=device.type == "cuda")
    return z.to(device, non_blocking=device.type == "cuda")


def build(args, device):
    """G, D and their fused Adam optimizers (detail 5)."""
    G = Generator(args.z_dim, args.g_hidden, args.g_act).to(device)
    D = Discriminator(args.d_hidden).to(device)
    betas = (args.beta1, 0.999)
    return G, D, *(torch.optim.Adam(m.parameters(), args.lr, betas, fused=True) for m in (G, D))


# ---- Losses and one iteration of Algorithm 1
def train_step(G, D, opt_G, opt_D, x, z, amp, scaler):
    """One iteration of Algorithm 1 (k = 1) on real x (B, 1, 28, 28) and noise z; amp: autocast,
    scaler: float16's. Returns (4,): loss_d, loss_g, D(x), D(G(z))."""
    B = len(x)
    ones, zeros = torch.ones(B, device=x.device), torch.zeros(B, device=x.device)

    # (1) Update D: maximise log D(x) + log(1 - D(G(z))) (eq. 1), i.e. minimise BCE(D(x), 1) +
    # BCE(D(G(z)), 0). Real and fake as one batch (D has no BatchNorm); fake.detach(): G is fixed.
    with amp:
        fake = G(z)  # (B, 1, 28, 28), used by both steps
        logits = D(torch.cat([x, fake.detach()])).float()  # (2B,): B real, then B fake
        real_logits, fake_logits = logits[:B], logits[B:]  # (B,), (B,)
        loss_d = F.binary_cross_entropy_with_logits(real_logits, ones)  # "real"
        loss_d = loss_d + F.binary_cross_entropy_with_logits(fake_logits, zeros)  # "fake"
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_D)

    # (2) Update G: maximise log D(G(z)) (section 3), i.e. minimise BCE(D(G(z)), 1), D frozen.
    # Departure: Algorithm 1 draws fresh z here; we reuse the D step's fakes, as the PyTorch
    # DCGAN tutorial does.
    D.requires_grad_(False)
    with amp:
        gen_logits = D(fake).float()  # (B,), of the updated D
        loss_g = F.binary_cross_entropy_with_logits(gen_logits, ones)
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_G)
    scaler.update()  # once, for both
    D.requires_grad_(True)

    d_x = torch.sigmoid(real_logits.detach()).mean()  # D(x), a probability
    d_g_z = torch.sigmoid(fake_logits.detach()).mean()  # D(G(z)), a probability
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


# ---- The training loop
def train(args):
    (device, dtype), out = setup(args), Path(args.out)
    ckpt = open_run(args, device)  # None: a new run
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    try:  # (N, 28, 28) uint8
        data = torchvision.datasets.MNIST(args.data, train=True, download=True).data.to(device)
    except Exception as e:  # torchvision's last line says why
        why, root = (str(e).splitlines() or [""])[-1][:60], Path(args.data) / "MNIST" / "raw"
        files = "train-images-idx3-ubyte and train-labels-idx1-ubyte"
        fail(f"no readable MNIST in {root} and no download ({why}); put the unzipped {files} there")
    B, per_epoch = args.batch_size, len(data) // args.batch_size  # no partial batch
    if not per_epoch or getattr(args, "images", len(data)) != len(data):
        why = f"not the run's {args.images}" if per_epoch else f"fewer than one batch of {B}"
        fail(f"{args.data} holds {len(data)} images, {why}")
    args.images = len(data)
    torch.manual_seed(args.seed)  # initial weights
    G, D, opt_G, opt_D = nets = build(args, device)
    fixed_z = noise(64, args, device, torch.Generator().manual_seed(args.seed))  # the grids' z
    step = epoch = batch = 0  # batch: steps into the epoch
    if ckpt:
        restore(zip((*nets, scaler), PARTS), ckpt)
        for group in opt_G.param_groups + opt_D.param_groups:
            group["lr"] = args.lr  # a resume may change it
        fixed_z, step, epoch, batch = ckpt["fixed_z"], ckpt["step"], ckpt["epoch"], ckpt["batch"]
    last_step = min(args.max_steps or math.inf, args.epochs * per_epoch)
    if last_step <= step:
        fail(f"the run in {out} is already at step {step} (epoch {epoch}); raise --epochs")
    for folder in ("checkpoints", "samples"):
        (out / folder).mkdir(exist_ok=True)
    log = RunLog(out, args, step, last_step, ckpt)
    save_image(data[:64].unsqueeze(1) / 255, out / "real.png", nrow=8)  # (64, 1, 28, 28)

    # Ctrl-C, SIGTERM (to the group too): stop after the step, saved
    asked, stop = [], lambda signum, frame: asked.append(signum)
    handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    while step < last_step and not asked:
        # order and z from (--seed, epoch), (--seed, 0, step): resumes need no state
        rng = torch.Generator().manual_seed(hash((args.seed, epoch)))
        order = torch.randperm(len(data), generator=rng).to(device)
        for batch in range(batch, per_epoch):
            x = data[order[batch * B : (batch + 1) * B]].unsqueeze(1)  # (B, 1, 28, 28) uint8
            x = x.float().div_(127.5).sub_(1.0)  # in [-1, 1] (detail 4)
            z = noise(B, args, device, torch.Generator().manual_seed(hash((args.seed, 0, step))))
            stats = train_step(G, D, opt_G, opt_D, x, z, amp, scaler)
            step += 1
            log.record(step, epoch + 1, stats)
            if asked or step == last_step:
                break
        epoch, batch = (epoch + 1, 0) if batch + 1 == per_epoch else (epoch, batch + 1)
        log.flush()  # NaN checked: none is saved
        state = {k: m.state_dict() for k, m in zip(PARTS, (*nets, scaler))}
        state.update(script=SCRIPT, args=vars(args), fixed_z=fixed_z, step=step, epoch=epoch)
        state.update(batch=batch, log_bytes=log.file.tell(), time=time.perf_counter() - log.t0)
        tmp = out / "checkpoint.tmp"  # renamed: atomic
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # a full disk
            tmp.unlink(missing_ok=True)
            fail(f"cannot write a checkpoint in {out} ({str(e)[:40]}: disk full?); last one kept")
        os.replace(tmp, out / "checkpoint.pt")
        if batch == 0:  # an epoch's end
            shutil.copyfile(out / "checkpoint.pt", out / "checkpoints" / f"epoch_{epoch:04d}.pt")
            for path in (out / "checkpoints").glob("epoch_[0-9][0-9][0-9][0-9].pt"):
                if not epoch - KEEP_EPOCHS < int(path.stem[6:]) <= epoch:  # later: rolled back
                    path.unlink()
        grid = (sample(G, fixed_z).float() + 1) / 2  # (64, 1, 28, 28) in [0, 1]
        save_image(grid, out / "samples" / f"epoch_{epoch + (batch > 0):04d}.png", nrow=8)
    for s, handler in handlers.items():
        signal.signal(s, handler)
    log.file.close()
    n, seconds = step - log.first_step, time.perf_counter() - log.t_first
    rate = n * B / seconds
    print(f"trained {n} steps in {seconds:.1f} s ({rate:.0f} images/s); run folder {out}")


# ---- Plumbing
def setup(args):
    """The device (auto: cuda, mps, cpu) and --amp's dtype (None: float32): bfloat16, or float16
    before Ampere; on CPUs only if a timed step is 5% faster."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    try:
        auto = next((d for d, ok in available.items() if ok), "cpu")
        device = torch.device(auto if args.device == "auto" else args.device)
    except RuntimeError:
        fail(f"unknown device {args.device!r} (use auto, cpu, cuda, cuda:N or mps)")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    if not available.get(device.type, True) or (device.index or 0) >= gpus:
        fail(f"--device {args.device}: not available on this machine (try --device cpu)")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # first: nothing lands on GPU 0
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
    if args.amp == "auto" and device.type == "cpu" and not args.generate:
        fp32, bf16 = (step_seconds(args, device, d) for d in (None, torch.bfloat16))
        dtype, said = (dtype, said) if bf16 < 0.95 * fp32 else (None, "float32")
        ratio, speed = max(fp32, bf16) / min(fp32, bf16), "faster" if bf16 < fp32 else "slower"
        said = f"bfloat16 is {ratio:.1f}x {speed} than float32 here; training in {said}"
    print("--amp: " + said)
    return device, dtype


def step_seconds(args, device, dtype):
    G, D, opt_G, opt_D = build(args, device)
    x, z = torch.rand(args.batch_size, 1, 28, 28), noise(args.batch_size, args, device)
    amp, times = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), []
    for _ in range(5):
        t = time.perf_counter()
        train_step(G, D, opt_G, opt_D, x.to(device), z, amp, torch.amp.GradScaler(enabled=0))
        times.append(time.perf_counter() - t)
    return min(times[2:])


def fail(message):
    """One line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"{SCRIPT}.py: error: {message}")


@contextlib.contextmanager
def hold(out):
    """Locks out/lock while training: a second process refuses."""
    if out.is_file():
        fail(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lock", "w") as lock:
        try:
            fcntl and fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another process is training into {out}: wait for it, or pick another --out")
        yield


def load_checkpoint(path, device):
    if not path.is_file():
        fail(f"no checkpoint at {path} (train first, or pick --out)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        name = type(e).__name__
        fail(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({name})")
    owner = ckpt.get("script") if isinstance(ckpt, dict) else None
    if owner != SCRIPT:
        but = f" but of {owner}.py" if isinstance(owner, str) else ""
        fail(f"{path} is not a checkpoint of {SCRIPT}.py{but}")
    return ckpt


def open_run(args, device):
    """None for a new run (no RUN_PARTS in --out), or the checkpoint to go on from, its flags put
    into args: any given must match, but CHANGEABLE."""
    out, here = Path(args.out), Path(args.out) / "checkpoint.pt"
    if not args.resume and not args.generate:
        held = ", ".join(n for n in RUN_PARTS if (out / n).is_file() or any((out / n).glob("*")))
        if held:
            fail(f"--out {out} already holds a run ({held}): --resume it, or pick another --out")
        args.run = os.urandom(8).hex()  # the run's name
        return None
    path = here if args.resume in (None, True) else Path(args.resume)
    ckpt = load_checkpoint(path, device)
    run = ckpt["args"].get("run")
    ours = path == here or here.is_file() and load_checkpoint(here, "cpu")["args"].get("run") == run
    if not ours:
        fail(f"{path} is not a checkpoint of the run in {out}")
    changeable = CHANGEABLE + ("seed", "batch_size") * (args.generate is not None)  # its own z
    for flag, then in ckpt["args"].items():
        if flag in THIS_COMMAND or flag in args.given and flag in changeable:
            continue
        if flag in args.given and getattr(args, flag) != then:  # as typed: 1024 1024
            then, now = (str(v).strip("[]").replace(",", "") for v in (then, getattr(args, flag)))
            why = "leave the flag out to go on with the run's"
            fail(f"{path} was trained with --{flag.replace('_', '-')} {then}, not {now}; {why}")
        setattr(args, flag, then)
    return ckpt


def restore(parts, ckpt):
    try:
        for part, key in parts:
            part.load_state_dict(ckpt[key] or part.state_dict())  # {}: a disabled scaler's
    except (KeyError, RuntimeError, ValueError) as e:
        why = " ".join(str(e).split())[:150]
        fail(f"the checkpoint does not fit {SCRIPT}.py's networks: {why}")


class RunLog:
    """log.csv, a row a step, and a line every --log-every seconds (one host sync a line)."""

    def __init__(self, out, args, step, last_step, ckpt):
        self.args, self.first_step, self.last_step = args, step, last_step
        self.pending, self.recent, self.told = [], [], False
        self.t0 = time.perf_counter() - (ckpt["time"] if ckpt else 0.0)  # the run's clock
        self.t_first = self.t_line = time.perf_counter()
        path = out / "log.csv"
        if ckpt:  # cut back to the checkpoint's step
            size = ckpt["log_bytes"]
            head = path.read_bytes()[:size] if path.is_file() else b""
            rows = head.splitlines() if len(head) == size and head.endswith(b"\n") else [b""]
            if not rows[-1].startswith(f"{step},".encode()):  # rolled back past it?
                fail(f"{path} does not hold the rows to step {step} of this checkpoint")
            os.truncate(path, size)
        self.file = open(path, "a" if ckpt else "w", buffering=1)  # line-buffered
        self.file.write("" if ckpt else "step,epoch,time,loss_d,loss_g,d_real,d_fake\n")

    def record(self, step, epoch, stats):
        self.pending.append((step, epoch, time.perf_counter() - self.t0, stats))
        if time.perf_counter() - self.t_line > self.args.log_every:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        values = torch.stack([stats for *_, stats in self.pending]).tolist()  # the one host sync
        for (step, epoch, t, _), row in zip(self.pending, values):
            self.file.write(f"{step},{epoch},{t:.3f}," + ",".join(f"{v:.5f}" for v in row) + "\n")
        (step, epoch, *_), (loss_d, loss_g, d_real, d_fake) = self.pending[-1], values[-1]
        if not math.isfinite(sum(map(sum, values))):
            fail(f"losses became NaN or infinite by step {step}; the last good checkpoint is kept")
        self.recent = (self.recent + [row[3] for row in values])[-D_WINS_STEPS:]  # D(G(z))
        mean = sum(self.recent) / D_WINS_STEPS
        if not self.told and len(self.recent) == D_WINS_STEPS and mean < D_WINS_BELOW:
            self.told = True  # once; flushed below
            why = f"D(G(z)) averaged {mean:.3f} over the last {D_WINS_STEPS} steps (to step {step})"
            print(f"warning: D is winning outright: {why}, so G learns little; see the README")
        rate = (step - self.first_step) / (time.perf_counter() - self.t_first)  # steps/s
        left = (self.last_step - step) / rate / 60
        print(
            f"epoch {epoch}/{self.args.epochs} step {step}/{self.last_step} | loss D {loss_d:.3f} "
            f"G {loss_g:.3f} | D(x) {d_real:.2f} D(G(z)) {d_fake:.2f} | "
            f"{rate * self.args.batch_size:.0f} img/s | {left:.1f} min left",
            flush=True,
        )
        self.pending, self.t_line = [], time.perf_counter()


def sample(G, z):
    """G(z), no gradients."""
    with torch.no_grad():
        return G(z)


def generate(args):
    """--generate N: exactly N PNGs in --out/generated/ (earlier ones removed), and a grid."""
    (device, dtype), out = setup(args), Path(args.out)
    ckpt = open_run(args, device)  # the run's flags, into args
    G, folder, written = build(args, device)[0], out / "generated", 0
    restore([(G, "G")], ckpt)
    rng, chunk, seconds = torch.Generator().manual_seed(args.seed), max(64, args.batch_size), 0.0
    n, grid = args.generate, out / "generated_grid.png"
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
    said = f"a grid of the first {min(64, n)} to {grid} (G: {n / seconds:.0f} images/s)"
    print(f"wrote {n} images to {folder} and {said}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add = p.add_argument
    add("--data", default="./data", help="MNIST root; downloaded if missing")
    add("--epochs", type=int, default=100, help="the last epoch")
    add("--batch-size", type=int, default=128, help="images per step")
    add("--lr", type=float, default=1e-3, help="Adam's, for G and D")
    add("--beta1", type=float, default=0.5, help="Adam's beta1")
    add("--z-dim", type=int, default=96, help="size of z")
    add("--g-hidden", type=int, nargs="+", default=[1024, 1024], help="G's hidden widths")
    add("--d-hidden", type=int, nargs="+", default=[256, 256], help="D's hidden widths")
    add("--g-act", choices=["relu", "leaky"], default="relu", help="G's hidden activation")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add("--seed", type=int, default=0, help="of weights, noise and data order")
    add("--out", default=f"runs/{SCRIPT}", help="run folder")
    add("--max-steps", type=int, help="the last step")
    add("--resume", nargs="?", const=True, metavar="CKPT", help="--out's run, or CKPT")
    add("--generate", type=int, metavar="N", help="write N images")
    amp = "bf16 if timed faster (CPUs), fp16 before Ampere"
    add("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], help=amp)
    add("--log-every", type=float, default=5.0, help="seconds between lines")
    args = p.parse_args(argv)
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))  # what was typed
    args.given = [k for k, v in vars(p.parse_args(argv, unset)).items() if v is not None]
    for flag in "epochs batch_size lr z_dim max_steps generate log_every g_hidden d_hidden".split():
        value = getattr(args, flag)
        if value is not None and not min(value if isinstance(value, list) else [value]) > 0:
            fail(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if not 0 <= args.seed < 2**63 or not 0 <= args.beta1 < 1:
        fail(f"--seed must be in [0, 2**63) and --beta1 in [0, 1): got {args.seed}, {args.beta1}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.generate:
            generate(args)
        else:
            with hold(Path(args.out)):
                train(args)
    except OSError as e:  # a path refused, a full disk
        fail(f"{e.strerror or e}: {e.filename or args.out}")


if __name__ == "__main__":
    main()
