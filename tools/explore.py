"""The DCGAN paper's experiments on a trained run folder of any of the five scripts.

Paper: Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", arXiv:1511.06434 (section numbers below are its own).

  --interpolate N   Section 6.1, "Walking in the latent space", figure 4: N walks of 10 images
                    between two random points of z. Smooth transitions, every image a plausible
                    one, are the paper's argument that the model has not memorised the training
                    images (memorisation shows as sharp jumps).
  --sheet N         N numbered samples and their z, to pick the exemplars of --arithmetic by eye.
  --arithmetic "A - B + C"
                    Section 6.3.2, "Vector arithmetic on face samples", figure 7: A, B, C are
                    comma-separated indices into the sheet; the z of each group are averaged and
                    mean(A) - mean(B) + mean(C) goes through G, with 8 small perturbations of it.
  --nearest K       The K training images nearest to 8 samples in pixel (L2) distance. Not in the
                    DCGAN paper, which leaves it out on purpose (section 6: pixel distances are
                    "trivially fooled" by small shifts, Theis et al. 2015): it is the memorisation
                    check of Goodfellow et al. 2014 (arXiv:1406.2661), figure 2, a quick look and
                    no proof either way.

Everything is written into RUN/explore/. Examples:
    python tools/explore.py runs/dcgan_mnist --interpolate 8 --sheet 64
    python tools/explore.py runs/dcgan_mnist --arithmetic "3,17,40 - 5,8,21 + 9,12,30"
    python tools/explore.py runs/dcgan64 --nearest 5 --data ./celeba --device cuda
"""

import argparse
import csv
import importlib
import inspect
import math
import re
import sys
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_pil_image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the scripts: Generator, noise, sample, data
CONTEXT = 64  # every image is made as if beside 64 fixed z
WALK = 10  # images per walk of --interpolate
GAP = 2  # white pixels between the images of a picture
LABEL = 13  # pixels above each row of a picture, for its labels
STREAMS = {"context": 0, "samples": 1, "walks": 2, "perturb": 3}  # one random stream per use
FLAG_OF = {"hidden": "g_hidden", "act": "g_act"}  # Generator argument -> flag, where they differ
MOST = {"interpolate": 100, "sheet": 1000, "nearest": 100}  # at most 1000 images in a picture


def fail(message):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"explore.py: error: {message}")


# --------------------------------------------------------------------------------------------------
# The trained G, and images from it
# --------------------------------------------------------------------------------------------------
class Run:
    """G of RUN/checkpoint.pt, its script's own Generator. z is (n, z_dim) here; images
    (n, C, S, S) in [0, 1]."""

    def __init__(self, folder, device, seed):
        path = Path(folder) / "checkpoint.pt"
        if not path.is_file():
            example = "e.g. runs/dcgan_mnist"
            fail(f"no checkpoint at {path} (give the run folder of one of the scripts, {example})")
        try:
            # On the CPU: load_state_dict moves the weights to G's device.
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ckpt = ckpt if isinstance(ckpt, dict) else {}  # a tensor, a number: no "script"
            script, weights = ckpt["script"], ckpt["G"]
            self.args = argparse.Namespace(**ckpt["args"])
        except Exception as e:
            name = type(e).__name__
            fail(f"cannot read {path}: it is damaged or not a checkpoint of the scripts ({name})")
        named = isinstance(script, str) and script.isidentifier()
        if not (named and (REPO / f"{script}.py").is_file()):
            fail(f"{path} names the script {script}.py, which is not in {REPO}")
        self.module = importlib.import_module(script)  # as benchmarks/ do: `import dcgan64`
        if hasattr(self.module, "pick_device"):  # dcgan64, dcgan256
            self.device = self.module.pick_device(device)
        else:  # MNIST: setup() resolves --device and --amp
            self.device = self.module.setup(argparse.Namespace(device=device, amp=None))[0]
        # The script's Generator, built with the flags of the run: Generator(z_dim, hidden, act) of
        # the MLP scripts gets --z-dim, --g-hidden, --g-act; Generator(z_dim, ngf, channels, act) of
        # the photo scripts --z-dim, --ngf, --channels, --g-act. A flag newer than the run: its
        # default.
        params = inspect.signature(self.module.Generator).parameters.items()
        flag = {name: FLAG_OF.get(name, name) for name, _ in params}
        kwargs = {name: getattr(self.args, flag[name], p.default) for name, p in params}
        vars(self.args).update({flag[name]: v for name, v in kwargs.items()})  # for noise()
        try:
            self.G = self.module.Generator(**kwargs).to(self.device)
            self.G.load_state_dict(weights)
        except Exception as e:  # other widths, or no weights
            flags = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            fail(
                f"the G in {path} does not fit {script}.py's Generator with the run's flags "
                f"({flags}): damaged, or another script's ({type(e).__name__})"
            )
        self.z_dim, self.seed = self.args.z_dim, seed
        self.photos = hasattr(self.module, "find_images")  # dcgan64, dcgan256 (else MNIST)
        z = self.module.noise(1, self.args, torch.device("cpu"))  # (1, z_dim) or (1, z_dim, 1, 1)
        self.z_shape = z.shape[1:]
        self.out = Path(folder) / "explore"
        self.out.mkdir(exist_ok=True)
        self.use_context(self.noise(CONTEXT, "context").to(self.device))

    def use_context(self, context):
        """Make G normalise every batch with the BatchNorm statistics of the 64 context samples.

        The script's sample() normalises with the statistics of the batch it is given (as its
        --generate does), so an image depends a little on the other z of its batch. Here "the image
        of z" must be one image, whatever else is asked for in the same call (a sheet, a walk):
        every image is made as if beside the same 64 others, drawn once from --seed. sample() runs
        once on them while a hook records the mean and variance each BatchNorm normalises with;
        these become its running statistics, which eval mode uses for any batch. (The context's own
        images are then exactly sample()'s; the MLP scripts have no BatchNorm.)
        """
        seen = {}  # BatchNorm module -> (mean, variance) it normalised with

        def record(norm, inputs):  # inputs[0]: (B, channels) or (B, channels, H, W)
            x = inputs[0].transpose(0, 1).flatten(1)  # (channels, B * H * W)
            seen[norm] = x.mean(1), x.var(1, unbiased=False)  # the variance batch statistics use

        batchnorm = torch.nn.modules.batchnorm._BatchNorm
        norms = [m for m in self.G.modules() if isinstance(m, batchnorm)]
        hooks = [m.register_forward_pre_hook(record) for m in norms]
        self.module.sample(self.G, self.as_input(context))
        for h in hooks:
            h.remove()
        # After sample(), which leaves G's own statistics alone.
        for norm, (mean, variance) in seen.items():
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(variance)
        self.G.eval()
        self.context = context  # (64, z_dim)

    def generator(self, stream):
        """A generator of its own for each use of random numbers, from --seed: --sheet draws the
        same samples whether or not --interpolate ran first. On the CPU, so that every device gets
        the same numbers."""
        return torch.Generator().manual_seed(self.seed * len(STREAMS) + STREAMS[stream])

    def noise(self, n, stream):
        """n draws of z ~ N(0, I) by the script's noise(), as (n, z_dim), one at a time: the first
        do not depend on n (sample 3 of a sheet of 64 is sample 3 of a sheet of 100; --nearest's 8
        samples are the sheet's first 8)."""
        gen, cpu = self.generator(stream), torch.device("cpu")
        return torch.cat([self.module.noise(1, self.args, cpu, gen) for _ in range(n)]).flatten(1)

    def as_input(self, z):
        """(n, z_dim) -> the shape the script's G takes: (n, z_dim) for the MNIST scripts,
        (n, z_dim, 1, 1) else."""
        return z.view(len(z), *self.z_shape)

    @torch.no_grad()
    def images(self, z):
        """G(z) for z (n, z_dim), as images (n, C, S, S) in [0, 1] on the CPU; BatchNorm as set by
        use_context."""
        parts = z.to(self.device).split(256)
        x = torch.cat([self.G(self.as_input(part)).float().cpu() for part in parts])
        return ((x + 1) / 2).clamp(0, 1)

    def save_z(self, name, z):
        """z into RUN/explore/name, in the shape G takes, for module.sample(G, z)."""
        torch.save(self.as_input(z).clone(), self.out / name)

    def load_z(self, name, remedy):
        path = self.out / name
        if not path.is_file():
            fail(f"no {path}: {remedy}")
        try:
            z = torch.load(path, weights_only=True).float().flatten(1)  # (n, z_dim)
        except Exception as e:
            fail(f"cannot read {path}, which is damaged ({type(e).__name__}): {remedy}")
        if not len(z) or z.shape[1] != self.z_dim:
            fail(f"{path} holds z of shape {tuple(z.shape)}, not (N, {self.z_dim}): {remedy}")
        return z


# --------------------------------------------------------------------------------------------------
# Pictures: images in a grid of cells, with labels
# --------------------------------------------------------------------------------------------------
def zoom(size):
    """How many times an image is enlarged in the pictures: 2 for MNIST's 28x28, so that labels
    fit; else 1."""
    return max(1, 64 // size)


def font(size):
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow 10.1 and later)
    except TypeError:
        return ImageFont.load_default()


def corner(r, c, size, labelled):
    """Top-left pixel (x, y) of the image in cell (r, c) of a picture of size x size images (as
    shown); with labels, each row of cells has a band of LABEL pixels above it for them."""
    band = LABEL if labelled else 0
    return GAP + c * (size + GAP), GAP + band + r * (size + GAP + band)


def picture(cells, labels=()):
    """cells {(row, col): image (C, S, S) in [0, 1], or a short text}, labels {(row, col): text}
    -> PIL image.

    Images are enlarged zoom(S) times by repeating pixels, so their pixels stay exact (the tests
    read them back).
    """
    first = next(v for v in cells.values() if torch.is_tensor(v))
    channels, size = first.shape[0], first.shape[-1] * zoom(first.shape[-1])
    rows, cols = (max(key[i] for key in cells) + 1 for i in (0, 1))
    # The image of the cell past the last one, less the label band above it.
    width, height = corner(rows, cols, size, bool(labels))
    height -= LABEL if labels else 0
    canvas = Image.new("L" if channels == 1 else "RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for (r, c), v in cells.items():
        x, y = corner(r, c, size, bool(labels))
        if torch.is_tensor(v):  # (C, S, S) in [0, 1] -> uint8, rounded
            k = zoom(v.shape[-1])
            pixels = (v * 255).round().to(torch.uint8)
            pixels = pixels.repeat_interleave(k, 1).repeat_interleave(k, 2)
            canvas.paste(to_pil_image(pixels), (x, y))
        else:  # an operator of --arithmetic
            middle = (x + size / 2, y + size / 2)
            draw.text(middle, v, fill="black", font=font(size // 2), anchor="mm")
    for (r, c), text in dict(labels).items():  # in the band above the image
        x, y = corner(r, c, size, True)
        draw.text((x, y - LABEL), text, fill="black", font=font(LABEL - 2))
    return canvas


def grid(images, cols):
    """{(row, col): image} for images laid out row by row, cols a row."""
    return {(i // cols, i % cols): x for i, x in enumerate(images)}


# --------------------------------------------------------------------------------------------------
# The experiments
# --------------------------------------------------------------------------------------------------
def slerp(z0, z1, t):
    """Spherical interpolation between the rows of z0 and z1 (n, z_dim) at the fractions t (T,)
    -> (n, T, z_dim).

    Why not the straight line (1 - t) z0 + t z1? z ~ N(0, I) in z_dim dimensions lies near the
    sphere of radius sqrt(z_dim), and two independent draws are nearly orthogonal, so the middle of
    the line has a norm near sqrt(z_dim / 2): points of unusually small norm, which G never saw in
    training. Slerp walks along the great circle instead and keeps the norm typical (White 2016,
    "Sampling Generative Networks", arXiv:1609.04468).
    """
    cos = (z0 * z1).sum(1) / (z0.norm(dim=1) * z1.norm(dim=1))  # (n,)
    omega = torch.arccos(cos.clamp(-1, 1))[:, None, None]  # (n, 1, 1): the angle between z0 and z1
    t = t[None, :, None]  # (1, T, 1)
    walk = torch.sin((1 - t) * omega) * z0[:, None] + torch.sin(t * omega) * z1[:, None]
    return walk / torch.sin(omega)


def interpolate(run, n):
    """Section 6.1, figure 4: n walks between two random points of z, as a picture and as an
    animation.

    The paper's argument: a model that had memorised its training images would jump sharply from
    one of them to the next along a walk; smooth transitions, with a plausible image at every step,
    say that G has learned a space of images rather than a list of them. (The paper draws z
    uniformly; the scripts here draw it from N(0, I), hence slerp rather than the straight line,
    see slerp.)
    """
    ends = run.noise(2 * n, "walks").view(n, 2, run.z_dim)  # (n, 2, z_dim): each walk's start, end
    walks = slerp(ends[:, 0], ends[:, 1], torch.linspace(0, 1, WALK))  # (n, 10, z_dim)
    images = run.images(walks.flatten(0, 1))  # (n * 10, C, S, S)
    images = images.view(n, WALK, *images.shape[1:])  # (n, 10, C, S, S)
    png = run.out / "interpolation.png"
    picture(grid(images.flatten(0, 1), WALK)).save(png)
    run.save_z("interpolation_z.pt", ends.flatten(0, 1))  # (2n, ...): start, end, start, end, ...
    # The animation: frame t shows every walk at its step t, forwards then back.
    cols, steps = math.ceil(math.sqrt(n)), [*range(WALK), *range(WALK - 2, 0, -1)]
    frames = [picture(grid(images[:, t], cols)) for t in steps]
    gif = run.out / "interpolation.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=150, loop=0)
    print(f"wrote {png} and interpolation.gif ({n} walks of {WALK} images)")


def sheet(run, n):
    """n samples labelled with their index, and their z (sheet_z.pt), for choosing exemplars by
    eye."""
    z = run.noise(n, "samples")  # (n, z_dim)
    cols = math.ceil(math.sqrt(n))
    labels = {(i // cols, i % cols): str(i) for i in range(n)}
    picture(grid(run.images(z), cols), labels).save(run.out / "sheet.png")
    run.save_z("sheet_z.pt", z)
    print(f"wrote {run.out / 'sheet.png'} and sheet_z.pt ({n} samples)")


def parse_arithmetic(text, n):
    """Text "3,17,40 - 5,8,21 + 9,12,30" -> three lists of indices into a sheet of n samples."""
    match = re.fullmatch(r"\s*([\d,\s]+)-([\d,\s]+)\+([\d,\s]+)", text)
    parts = match.groups() if match else ()
    groups = [[int(i) for i in g.replace(",", " ").split()] for g in parts]
    if not match or not all(groups):
        form = '"A - B + C", each a comma-separated list of sheet indices'
        fail(f'--arithmetic {text!r}: expected {form}, e.g. "3,17,40 - 5,8,21 + 9,12,30"')
    for i in sum(groups, []):
        if i >= n:
            fail(f"--arithmetic: index {i} is not on the sheet, which has samples 0 to {n - 1}")
    return groups


def arithmetic(run, text):
    """Section 6.3.2, figure 7: the image of mean(z of A) - mean(z of B) + mean(z of C), and of 8
    perturbations.

    One exemplar per concept was "unstable", the paper says; averaging the z of three made the
    arithmetic work. Each mean has a small norm (variance 1/3 per coordinate for three exemplars),
    but the result Y has variance 1 + 1 + 1 over 3 = 1 again: a typical z. Figure 7 adds "uniform
    noise sampled with scale +-0.25" to Y for the 8 other samples of its 3x3 grid, to show that G
    varies smoothly around Y.
    """
    remedy = "write a sheet first with --sheet N, and choose the indices on sheet.png"
    z = run.load_z("sheet_z.pt", remedy)
    groups = parse_arithmetic(text, len(z))
    means = torch.stack([z[g].mean(0) for g in groups])  # (3, z_dim)
    y = means[0] - means[1] + means[2]  # (z_dim,)
    gen = run.generator("perturb")
    uniform = torch.rand(8, run.z_dim, generator=gen) * 2 - 1  # (8, z_dim) in [-1, 1)
    noisy = y + 0.25 * uniform  # (8, z_dim): Y + U(-0.25, 0.25)
    results = run.images(torch.cat([y[None], noisy]))  # (9, C, S, S): Y first
    # Layout as in figure 7: each group a column of its exemplars with its mean below them, the
    # operators between the means, and the 3x3 grid of results to the right with Y in the centre,
    # level with the means.
    h = max(map(len, groups))
    cells, labels = {}, {}
    for k, g in enumerate(groups):
        for r, (i, image) in enumerate(zip(g, run.images(z[g]))):
            cells[r, 2 * k], labels[r, 2 * k] = image, str(i)
    for k, image in enumerate(run.images(means)):
        cells[h, 2 * k], labels[h, 2 * k] = image, "mean " + "ABC"[k]
    cells.update({(h, 1): "-", (h, 3): "+", (h, 5): "="})
    around = [(r, c) for r in (h - 1, h, h + 1) for c in (6, 7, 8) if (r, c) != (h, 7)]
    cells.update(zip([(h, 7), *around], results))
    labels[h, 7] = "Y"
    picture(cells, labels).save(run.out / "arithmetic.png")
    print(f"wrote {run.out / 'arithmetic.png'}")


def training_images(run, root, chunk, workers):
    """The training set, read by the script's own loader, as chunks (indices (b,), uint8 images
    (b, C, S, S)), and a function from an index to that image and its name. Memory: one chunk at a
    time (and DataLoader's prefetching), whatever the size of the folder."""
    m = run.module
    if not run.photos:  # MNIST: 47 MB as one tensor, as the scripts hold it
        try:  # where the script read it (--data)
            mnist = torchvision.datasets.MNIST(root, train=True)
        except RuntimeError as e:  # torchvision: "Dataset not found..."
            fail(f"no MNIST in {root}: {e}")
        data = mnist.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        starts = range(0, len(data), chunk)
        chunks = ((torch.arange(s, s + len(x)), x) for s, x in zip(starts, data.split(chunk)))
        return chunks, lambda i: (data[i], f"MNIST training image {i}")
    # The photos decoded, resized and cropped as in training.
    flags = ["--data", str(root), "--channels", str(run.args.channels), "--batch-size", "1"]
    files = m.Photos(m.parse_args(flags), 0, 1, torch.device("cpu"))

    def chunks():
        start = 0
        loader = DataLoader(files, batch_size=chunk, num_workers=workers)
        for x, skipped, _ in loader:  # x: (b, C, S, S) uint8
            index = torch.arange(start, start + len(x))
            start += len(x)
            ok = skipped < 0  # an unreadable file's stand-in is left out
            yield index[ok], x[ok]

    return chunks(), lambda i: (files[i][0], files.paths[i])


def nearest(run, k, root, chunk, workers):
    """The k training images nearest to each of 8 samples (samples 0-7 of --sheet), by L2 distance
    in pixels.

    One pass over the data in chunks; per sample only the k best so far are kept, and each chunk's
    distances are merged into them with one topk: memory does not grow with the size of the folder.
    """
    samples = run.images(run.noise(8, "samples"))  # (8, C, S, S) in [0, 1]
    query = samples.flatten(1).to(run.device)  # (8, D), D = C * S * S
    best = torch.full((8, k), math.inf, device=run.device)  # (8, k) distances, smallest first
    best_index = torch.full((8, k), -1, device=run.device)  # (8, k) indices into the training set
    t0 = t_print = time.perf_counter()  # the time printed includes reading the data
    chunks, lookup = training_images(run, root, chunk, workers)
    seen = 0
    for index, x in chunks:
        x = x.to(run.device).flatten(1).float() / 255  # (b, D) in [0, 1]
        # (8, b), exact: not computed as |a|^2 - 2ab + |b|^2
        d = torch.cdist(query, x, compute_mode="donot_use_mm_for_euclid_dist")
        d, pos = torch.cat([best, d], 1).topk(k, dim=1, largest=False, sorted=True)  # (8, k)
        indices = torch.cat([best_index, index.to(run.device).expand(8, -1)], 1)  # (8, k + b)
        best_index = indices.gather(1, pos)
        best, seen = d, seen + len(x)
        if time.perf_counter() - t_print > 10:
            print(f"nearest: {seen} images compared", flush=True)
            t_print = time.perf_counter()
    best, best_index = best.cpu(), best_index.cpu()
    cells, labels, rows = {}, {}, []
    for s in range(8):
        cells[s, 0], labels[s, 0] = samples[s], f"sample {s}"
        for r in range(k):
            if best_index[s, r] < 0:  # fewer than k images in the data
                continue
            image, name = lookup(int(best_index[s, r]))
            cells[s, r + 1], labels[s, r + 1] = image.float() / 255, f"{best[s, r]:.1f}"
            rows.append([s, r + 1, int(best_index[s, r]), f"{best[s, r]:.4f}", name])
    png = run.out / "nearest.png"
    picture(cells, labels).save(png)
    with open(run.out / "nearest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["sample", "rank", "index", "distance", "image"], *rows])
    found = f"the {k} nearest of {seen} training images to 8 samples"
    print(f"wrote {png} and nearest.csv: {found} ({time.perf_counter() - t0:.1f} s)")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    intro, paper, modes = __doc__.split("\n\n", 2)
    p = argparse.ArgumentParser(
        prog="explore.py",
        description=f"{intro}\n\n{paper}",
        epilog=modes,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of one of the scripts (holds checkpoint.pt)")
    p.add_argument("--interpolate", type=int, metavar="N", help="section 6.1, figure 4: walks in z")
    p.add_argument("--sheet", type=int, metavar="N", help="N numbered samples, for --arithmetic")
    p.add_argument(
        "--arithmetic", metavar='"A - B + C"', help="section 6.3.2, figure 7: arithmetic on z"
    )
    p.add_argument(
        "--nearest", type=int, metavar="K", help="K nearest training images (Goodfellow figure 2)"
    )
    p.add_argument("--data", help="the training images, for --nearest (as given to the script)")
    p.add_argument(
        "--chunk", type=int, default=256, help="images compared at once by --nearest (default 256)"
    )
    p.add_argument(
        "--workers", type=int, default=2, help="processes decoding photos for --nearest (default 2)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: cuda, mps, else cpu), cpu, cuda[:N], mps"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of every z (samples, walks, context; default 0)"
    )
    args = p.parse_args(argv)
    for flag in ("interpolate", "sheet", "nearest", "chunk"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            fail(f"--{flag} must be positive, got {value}")
        if value is not None and value > MOST.get(flag, value):
            fail(f"--{flag} {value}: at most {MOST[flag]}")
    if args.workers < 0:
        fail(f"--workers must be 0 or more, got {args.workers}")
    if not 0 <= args.seed < 2**62:
        fail(f"--seed must be in [0, 2**62), got {args.seed}")
    if args.arithmetic is not None:  # its form; its indices later
        parse_arithmetic(args.arithmetic, math.inf)
    if not (args.interpolate or args.sheet or args.arithmetic is not None or args.nearest):
        options = "--interpolate, --sheet, --arithmetic, --nearest"
        fail(f"nothing to do: give at least one of {options} (see --help)")
    if args.nearest and not args.data:
        data = "the training images of the run (the folder given to the script)"
        fail(f"--nearest needs --data, {data}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        run = Run(args.run, args.device, args.seed)
        with torch.inference_mode():
            if args.interpolate:
                interpolate(run, args.interpolate)
            if args.sheet:  # before --arithmetic, which reads it
                sheet(run, args.sheet)
            if args.arithmetic is not None:
                arithmetic(run, args.arithmetic)
            if args.nearest:
                nearest(run, args.nearest, args.data, args.chunk, args.workers)
    except SystemExit as e:  # a script's own one-line error, as ours
        if isinstance(e.code, str) and not e.code.startswith("explore.py"):
            fail(e.code.split(": error: ", 1)[-1])
        raise
    except OSError as e:  # RUN/explore a file...
        fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))


if __name__ == "__main__":
    main()
