"""What the tools share: running a script or pytorch/examples' dcgan/main.py (the peer), reading
their logs, describing the machine, and small synthetic data sets in the scripts' layouts."""

import argparse
import contextlib
import csv
import os
import platform
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(REPO))  # the scripts, imported for their networks and steps
LOG_COLUMNS = ["step", "epoch", "time", "loss_d", "loss_g", "d_real", "d_fake"]
# dcgan/main.py's line a step: [epoch/epochs][i/batches] Loss_D Loss_G D(x) D(G(z)) before / after G
PEER_LINE = re.compile(
    r"^\[(\d+)/\d+\]\[(\d+)/(\d+)\] Loss_D: (\S+) Loss_G: (\S+) D\(x\): (\S+) D\(G\(z\)\): (\S+)"
)


def parser(doc):
    """An ArgumentParser whose --help opens with the tool's question, commands and time."""
    head = "\n\n".join(doc.split("\n\n")[:3])
    return argparse.ArgumentParser(
        description=head, formatter_class=argparse.RawDescriptionHelpFormatter
    )


class ScriptFailed(RuntimeError):
    pass


def run_script(script, *args, log=None, scripts_dir=REPO, python=(sys.executable,)):
    """Run scripts_dir/script with args as a user would (cwd = scripts_dir); return its stdout.

    The output is appended to the file `log` when given. A non-zero exit raises ScriptFailed with
    the end of stderr. `python` is the command that runs the file (a wrapper may come first).
    """
    cmd = [*python, str(Path(scripts_dir) / script), *map(str, args)]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=scripts_dir, capture_output=True, text=True)
    shown = " ".join(cmd[len(python) :])
    if log:
        with open(log, "a") as f:
            f.write(f"$ {shown}\n{p.stdout}{p.stderr}")
            f.write(f"[exit {p.returncode}, {time.perf_counter() - t:.1f} s]\n")
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
        raise ScriptFailed(f"{shown} exited with {p.returncode}:\n{tail}")
    return p.stdout


def run_peer(main_py, args, stop_after=None, log=None):
    """Run dcgan/main.py of a pytorch/examples checkout, unmodified; its steps as log.csv rows.

    `time` is when the step's line reached this process (PYTHONUNBUFFERED; the line follows an
    `.item()`, so the step is done), in seconds from the end of step 1. The peer has no step
    limit: with stop_after it is ended once the line of step stop_after + 1 arrives.
    """
    cmd = [sys.executable, str(main_py), *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows, lines = [], []
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # one pipe cannot fill up unread
    with subprocess.Popen(cmd, cwd=Path(main_py).parent, env=env, text=True, **pipes) as proc:
        for line in proc.stdout:
            lines.append(line)
            if m := PEER_LINE.match(line):
                epoch, i, n = int(m[1]), int(m[2]), int(m[3])
                values = [
                    epoch * n + i + 1,
                    epoch + 1,
                    time.perf_counter(),
                    *map(float, m.groups()[3:]),
                ]
                rows.append(dict(zip(LOG_COLUMNS, values)))
                if stop_after and rows[-1]["step"] > stop_after:
                    proc.terminate()
                    break
    if log:
        Path(log).write_text("".join(lines))
    if not rows or (proc.returncode != 0 and not stop_after):
        raise ScriptFailed(f"{cmd[1]} exited with {proc.returncode}:\n{''.join(lines[-10:])}")
    start = rows[0]["time"]
    return [{**r, "time": r["time"] - start} for r in rows[:stop_after]]


def read_log(path):
    """log.csv as a list of dicts of floats (step and epoch as ints)."""
    ints = ("step", "epoch")
    return [{k: (int(v) if k in ints else float(v)) for k, v in r.items()} for r in read_csv(path)]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, rows, columns=None):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns or list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def export_pngs(images, folder):
    """uint8 digits (N, 28, 28) as 000000.png ..., once (a file 'complete' marks it done)."""
    folder = Path(folder)
    if not (folder / "complete").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            torchvision.io.write_png(im[None].contiguous(), str(folder / f"{i:06d}.png"))
        (folder / "complete").write_text(f"{len(images)}\n")
    return folder


def link_photos(src, folder, n=None, multiple=1):
    """folder/photos/ with n links to the photos below src, repeated (the peer's ImageFolder wants a
    class folder); n by default: as many as make whole batches of `multiple`. Returns n, photos."""
    suffixes = (".jpg", ".jpeg", ".png")
    photos = sorted(p.resolve() for p in Path(src).rglob("*") if p.suffix.lower() in suffixes)
    if not photos:
        raise SystemExit(f"error: no photos in {src}")  # one line, no traceback
    n = n or len(photos) // multiple * multiple
    (Path(folder) / "photos").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = Path(folder) / "photos" / f"{i:06d}{photos[i % len(photos)].suffix}"
        if not link.is_symlink():
            link.symlink_to(photos[i % len(photos)])
    return n, len(photos)


@contextlib.contextmanager
def threads(n):
    """Torch on n threads: one is as fast as two for a small network, faster on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


def auto_device():
    """The device the scripts pick with --device auto."""
    mps = "mps" if torch.backends.mps.is_available() else "cpu"
    return "cuda" if torch.cuda.is_available() else mps


def machine_line():
    """Device, CPU (and whether it has bf16 instructions), cores, versions: written with figures."""
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    caps = torch.cpu.get_capabilities()
    bf16 = [k for k, v in caps.items() if v is True and k.startswith(("avx512_bf16", "amx"))]
    cuda = f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""
    cpu = f"{(cpu or [platform.processor()])[0]} ({', '.join(bf16) or 'no bf16 instructions'})"
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    threads = f"{os.cpu_count()} cores ({torch.get_num_threads()} torch threads)"
    return f"device {auto_device()}{cuda}; CPU {cpu}, {threads}; {versions}"


def md_table(header, rows):
    """A Markdown table from a header list and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(path, panels, title=""):
    """One figure, a panel for each (x label, y label, {line: (xs, ys)}, dotted y or None);
    log scales (y: with a dotted line). Without matplotlib, a note (benchmarks/requirements.txt)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return print("matplotlib is not installed: no plots (see benchmarks/requirements.txt)")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (xlabel, ylabel, lines, dotted) in zip(axes[0], panels):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, "o-", label=label)
        if dotted is not None:
            ax.axhline(dotted, color="k", ls=":", lw=1, label="real images")
        ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log", yscale="log" if dotted else "linear")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- synthetic data: for the tests and for running the tools anywhere; nothing here is real -----
def digit_patterns(n_per_class, seed=0):
    """(images uint8 (10n, 28, 28), labels (10n,)): class k is a 10x4 block at the k-th of ten
    places, shifted by up to one pixel, with random brightness and a little noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10 * n_per_class) % 10
    y = (3 + 12 * (labels // 5) + torch.randint(-1, 2, labels.shape, generator=g))[:, None, None]
    x = (2 + 5 * (labels % 5) + torch.randint(-1, 2, labels.shape, generator=g))[:, None, None]
    i = torch.arange(28)
    block = (i[:, None] >= y) & (i[:, None] < y + 10) & (i >= x) & (i < x + 4)
    images = block * (torch.rand(len(labels), 1, 1, generator=g) * 0.3 + 0.7)
    images = images + 0.1 * torch.rand(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def write_mnist(root, n_per_class=256, seed=0, digits=None):
    """digits (images uint8 (n, 28, 28), labels), by default digit_patterns, as both splits of a
    torchvision MNIST root (uncompressed IDX files in root/MNIST/raw/); returns root."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files = list(zip(("images-idx3", "labels-idx1"), digits or digit_patterns(n_per_class, seed)))
    for split in ("train", "t10k"):
        for kind, t in files:
            t = t.to(torch.uint8).contiguous()  # IDX: magic 0x0800 | ndim, big-endian sizes, bytes
            header = struct.pack(">I", 0x0800 | t.dim()) + struct.pack(f">{t.dim()}I", *t.shape)
            (raw / f"{split}-{kind}-ubyte").write_bytes(header + t.numpy().tobytes())
    return Path(root)


def write_image_folder(folder, n=32, size=(218, 178), seed=0, people=0):
    """n smooth random RGB JPEGs (height, width = size), 000001.jpg ...; with people, n of each of
    that many people in a folder each (LFW's layout), a person's photos alike. Returns folder."""
    g, spread = torch.Generator().manual_seed(seed), 0.3 if people else 1.0
    for person in range(max(people, 1)):
        where = Path(folder) / (f"person_{person:03d}" if people else "")
        where.mkdir(parents=True, exist_ok=True)
        face = torch.rand(1, 3, 6, 5, generator=g)
        for i in range(n):
            coarse = face * bool(people) + torch.rand(1, 3, 6, 5, generator=g) * spread
            img = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic")[0]
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
            torchvision.io.write_jpeg(img, str(where / f"{i + 1:06d}.jpg"), quality=90)
    return Path(folder)
