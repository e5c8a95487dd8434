"""Decoding a photo for dcgan64.py and dcgan256.py: torchvision's decoders, the PIL fallback, and that fallback
with PIL's JPEG draft mode, per image on one CPU thread; speed and how much the pixels differ.

    python benchmarks/decode.py --data ./celeba          # any folder of photos; writes results/decode.md

Each variant turns one file into the uint8 (3, S, S) tensor the scripts train on, S = 64 (dcgan64.py) and 256
(dcgan256.py):
  (a) torchvision: the script's own `load_image` (decode_image on the file's bytes with its EXIF orientation,
      resize of the shorter side to S with antialiasing, centre crop);
  (b) PIL: the same `load_image` with the script's `decode_image` set to None, so it takes its fallback for when
      torchvision's decoders are gone (pil_loader, EXIF transpose, pil_to_tensor, the same resize and crop);
  (c) PIL + draft: a copy of (b) that calls `draft("RGB", (S, S))` before the pixels are decoded, so that libjpeg
      decodes a JPEG at 1/2, 1/4 or 1/8 scale, the strongest reduction that leaves both sides at least S (a no-op
      for other formats and for photos with a side under 2S: CelebA's 178x218 at S = 256);
  (d) tutorial: the PyTorch DCGAN tutorial's pipeline (ImageFolder's loader, transforms.Resize(S),
      CenterCrop(S), ToTensor; its Normalize left out, as the scripts scale whole batches), for reference.

Timing: --rounds rounds of --passes passes over the photos; the variants take turns photo by photo, so that
another process slowing the machine slows them all alike, in every order in turn. images/s is the median over
rounds; the ratio to (b) is the median of the per-round ratios, with their range. Pixels: mean, 99th percentile
and largest absolute difference to (b)'s output over all photos and channels, in grey levels (0-255); (d)'s
floats are scaled by 255 and rounded first. --quick (2 rounds of 1 pass) only checks that it all runs.
"""
import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import PIL
import torch
import torchvision
from PIL import Image, features
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan64  # noqa: E402
import dcgan256  # noqa: E402

SCRIPTS = (dcgan64, dcgan256)
CHANNELS = 3
BASE = "(b) PIL"


def torchvision_path(script, path):
    return script.load_image(path, CHANNELS)


def pil_path(script, path):
    saved = script.decode_image
    script.decode_image = None                                  # as when torchvision's decoders are gone
    try:
        return script.load_image(path, CHANNELS)
    finally:
        script.decode_image = saved


def pil_draft_path(script, path):
    """script.load_image as (b) runs it (comments left out), with one call added: draft() has to come between
    Image.open and the decoding of the pixels, so pil_loader's lines are copied here too."""
    with open(path, "rb") as f:                                 # torchvision.datasets.folder.pil_loader ...
        pil = Image.open(f)
        pil.draft("RGB", (script.IMAGE_SIZE, script.IMAGE_SIZE))  # ... plus this, before the pixels are decoded
        pil = pil.convert("RGB")
    exif = pil.getexif().get(0x0112, 1)
    pil = pil.transpose(script.EXIF_TRANSPOSE[exif]) if exif in script.EXIF_TRANSPOSE else pil
    image = TF.pil_to_tensor(pil if CHANNELS == 3 else pil.convert("L"))
    if image.dim() == 4:
        image = image[0]
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    image = image[:3]
    if image.shape[0] != CHANNELS:
        image = TF.rgb_to_grayscale(image) if CHANNELS == 1 else image.expand(3, -1, -1)
    image = TF.resize(image, [script.IMAGE_SIZE], antialias=True)
    return TF.center_crop(image, [script.IMAGE_SIZE, script.IMAGE_SIZE]).contiguous()


TUTORIAL = {s.IMAGE_SIZE: transforms.Compose([transforms.Resize(s.IMAGE_SIZE), transforms.CenterCrop(s.IMAGE_SIZE),
                                              transforms.ToTensor()]) for s in SCRIPTS}


def tutorial_path(script, path):
    return TUTORIAL[script.IMAGE_SIZE](torchvision.datasets.folder.default_loader(path))


VARIANTS = {"(a) torchvision": torchvision_path, BASE: pil_path, "(c) PIL + draft": pil_draft_path,
            "(d) tutorial": tutorial_path}


def as_grey_levels(image):
    return (image * 255).round().to(torch.int64) if image.is_floating_point() else image.to(torch.int64)


def pixel_differences(script, paths):
    """{variant: (mean, 99th percentile, max) of the absolute difference to (b)'s output, in grey levels}."""
    counts = {name: torch.zeros(256, dtype=torch.int64) for name in VARIANTS}  # how many values differ by 0 .. 255
    for path in paths:
        base = as_grey_levels(pil_path(script, path))
        for name, load in VARIANTS.items():
            counts[name] += torch.bincount((as_grey_levels(load(script, path)) - base).abs().flatten(), minlength=256)
    levels = torch.arange(256)
    return {name: ((c * levels).sum().item() / c.sum().item(),
                   int(torch.searchsorted(c.cumsum(0), 0.99 * c.sum().item())),
                   int(levels[c > 0].max())) for name, c in counts.items()}


def draft_scales(script, paths):
    """How many photos draft() would decode at each scale: {1: n, 2: n, ...}."""
    scales = {}
    for path in paths:
        with Image.open(path) as pil:
            width = pil.width
            drafted = pil.draft("RGB", (script.IMAGE_SIZE, script.IMAGE_SIZE))  # None: not a JPEG
            scale = round(width / drafted[1][2]) if drafted else 1
        scales[scale] = scales.get(scale, 0) + 1
    return dict(sorted(scales.items()))


def read_size(path):
    with Image.open(path) as pil:
        return pil.size


def rates(script, paths, rounds, passes):
    """{variant: [images/s of each round]}. The variants take turns photo by photo, so that a busy moment of the
    machine falls on all of them alike, in every order in turn: each one as often first, and after each other
    one (which may leave caches and PIL's memory pool ready for it) as often as after any other."""
    names = list(VARIANTS)
    for name in names:                                          # warm-up: first calls, file cache
        for path in paths:
            VARIANTS[name](script, path)
    measured = {name: [] for name in names}
    orders = itertools.cycle(itertools.permutations(names))
    for _ in range(rounds):
        seconds = dict.fromkeys(names, 0.0)
        for _ in range(passes):
            for path in paths:
                for name in next(orders):
                    t = time.perf_counter()
                    VARIANTS[name](script, path)
                    seconds[name] += time.perf_counter() - t
        for name in names:
            measured[name].append(passes * len(paths) / seconds[name])
    return measured


def measure(script, paths, rounds, passes):
    """One row per variant: size, variant, images/s, ratio to (b) and its range over rounds, pixel differences."""
    per_round = rates(script, paths, rounds, passes)
    diffs = pixel_differences(script, paths)
    rows = []
    for name in VARIANTS:
        ratios = [a / b for a, b in zip(per_round[name], per_round[BASE])]
        rows.append(dict(size=script.IMAGE_SIZE, variant=name, images_per_s=statistics.median(per_round[name]),
                         ratio=statistics.median(ratios), ratio_low=min(ratios), ratio_high=max(ratios),
                         mean_diff=diffs[name][0], p99_diff=diffs[name][1], max_diff=diffs[name][2]))
    return rows


def machine():
    """common.machine_line, the CPU named by torch.cpu.get_capabilities() with its widest vector instructions."""
    info = common.machine_info()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    simd = next((label for key, label in (("avx512_f", "AVX-512"), ("avx2", "AVX2"), ("sse4_2", "SSE4.2"))
                 if caps.get(key)), caps.get("architecture"))
    info["cpu"] = " ".join(str(x) for x in (caps.get("cpu_name") or info["cpu"], simd and f"({simd})") if x)
    turbo = features.version("libjpeg_turbo")
    return (f"{common.machine_line(info)}; Pillow {PIL.__version__}"
            + (f" with libjpeg-turbo {turbo}" if turbo else ""))


def markdown(rows, args, n_photos, sizes, scales, machine_text):
    header = ["size", "variant", "images/s", "x (b)", "x (b), range over rounds", "mean abs diff to (b)",
              "99th percentile", "max"]
    table = [[f"{r['size']}x{r['size']}", r["variant"], f"{r['images_per_s']:.0f}", f"{r['ratio']:.2f}",
              f"{r['ratio_low']:.2f}-{r['ratio_high']:.2f}", f"{r['mean_diff']:.3f}", r["p99_diff"], r["max_diff"]]
             for r in rows]
    drafts = "; ".join(f"at {size}: " + ", ".join(f"{n} at 1/{s}" if s > 1 else f"{n} at full size"
                                                  for s, n in counts.items()) for size, counts in scales.items())
    command = f"python benchmarks/decode.py --data {args.data}" + (" --quick" if args.quick else "")
    return "\n".join([
        "## Decoding a photo: torchvision, PIL, PIL with JPEG draft mode\n",
        f"Machine: {machine_text}. One thread (`torch.set_num_threads(1)`).\n",
        f"Command: `{command}`\n",
        f"Photos: {n_photos} files of {args.data} ({sizes}); {args.rounds} rounds of {args.passes} pass(es) over "
        f"them per size, the variants taking turns photo by photo. draft() decodes them {drafts}.\n",
        "Each variant turns a file into the uint8 3xSxS tensor the scripts train on: (a) `load_image` of "
        "dcgan64.py / dcgan256.py as it runs; (b) the same with `decode_image` set to None (its PIL fallback); "
        "(c) (b) plus `draft(\"RGB\", (S, S))` before decoding; (d) the PyTorch DCGAN tutorial's "
        "`Resize(S)`, `CenterCrop(S)`, `ToTensor()` on ImageFolder's loader (float output, x255 for the "
        "differences). images/s: median over rounds; x (b): median of the per-round ratios to (b). Absolute "
        "differences to (b)'s output in grey levels (0-255): mean, 99th percentile and largest, over every pixel "
        "and channel of all the photos.\n",
        common.md_table(header, table)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of photos, searched recursively (e.g. ./celeba)")
    p.add_argument("--rounds", type=int, help="timing rounds, variants interleaved (21; 2 with --quick)")
    p.add_argument("--passes", type=int, help="passes over the photos per variant and round (5; 1 with --quick)")
    p.add_argument("--results", default=str(common.BENCH / "results"), help="folder for decode.md")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 1 pass")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 21)
    args.passes = args.passes or (1 if args.quick else 5)
    torch.set_num_threads(1)
    machine_text = machine()
    print(machine_text, flush=True)
    paths = dcgan64.find_images(args.data)
    sizes = sorted({read_size(path) for path in paths})
    sizes = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (", ..." if len(sizes) > 3 else "")
    rows, scales = [], {}
    for script in SCRIPTS:
        scales[script.IMAGE_SIZE] = draft_scales(script, paths)
        rows += measure(script, paths, args.rounds, args.passes)
    text = markdown(rows, args, len(paths), sizes, scales, machine_text)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / "decode.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
