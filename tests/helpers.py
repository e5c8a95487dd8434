"""What the tests share, one helper for each job: running a script, reading its error line and its checkpoint,
the tiny data sets (MNIST digits, a folder of mixed photos) and the shapes a network produces.

Imported plainly (`from helpers import ...`): pytest puts tests/ on sys.path. Fixtures are in conftest.py.
PIL is used here only, to write the image formats torchvision cannot encode (BMP, WebP, CMYK, RGBA, 16-bit).
"""
import contextlib
import csv
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))                                   # the scripts, imported for main() and networks
sys.path.insert(0, str(REPO / "benchmarks"))                    # the measuring tools and their synthetic data
# The tests train on batches of a few images: one thread is as fast as two there, and it keeps OpenMP's threads
# from stalling each other when the machine is busy with something else. conftest.py sets it for the tests'
# process, ONE_THREAD for the scripts they start.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

READABLE = 14                                                   # readable images in write_photo_folder's folder


def command(script, args, processes):
    """The command line of one of the top-level scripts, under torchrun with one CPU process per rank when
    processes is given."""
    launcher = [] if processes is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                             str(processes)]
    return [sys.executable, *launcher, str(REPO / script), *map(str, args)]


def run_script(script, *args, processes=None, env=None, timeout=300):
    """Run a script through its command line, as a user would; returns the CompletedProcess."""
    return subprocess.run(command(script, args, processes), cwd=REPO, env=env or ONE_THREAD, capture_output=True,
                          text=True, timeout=timeout)


def start_script(script, *args, processes=None, **popen_options):
    """The script through its command line in the background (stdout and stderr piped), to signal or kill it."""
    return subprocess.Popen(command(script, args, processes), cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen_options)


def logged_steps(run_folder):
    """The step column of a run's log.csv, row by row."""
    with open(Path(run_folder) / "log.csv", newline="") as f:
        return [int(row[0]) for row in list(csv.reader(f))[1:] if row]


def wait_for_steps(proc, run_folder, steps, timeout=120):
    """Wait until the run that proc trains has logged at least this many steps."""
    deadline = time.monotonic() + timeout
    while not (Path(run_folder) / "log.csv").exists() or len(logged_steps(run_folder)) < steps:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1]}"
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):   # no stray run (or torchrun's children) left behind
                os.killpg(proc.pid, signal.SIGKILL)         # its own group, if it leads one
            proc.kill()
            raise AssertionError(f"fewer than {steps} steps logged after {timeout} s")
        time.sleep(0.02)


@contextlib.contextmanager
def time_limit(seconds):
    """Fail with TimeoutError instead of hanging when what runs inside does not end within seconds."""
    def give_up(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def error_of(script, *argv):
    """The message a bad command line ends with (main raises SystemExit with it; the interpreter prints it), checked
    to be one line starting with the script's name."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main([*map(str, argv)])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(f"{script}.py: error: ") and "\n" not in message, message
    return message


def load_checkpoint(run_folder):
    return torch.load(Path(run_folder) / "checkpoint.pt", weights_only=True)


def same_weights(a, b):
    return all(torch.equal(a[k][n], b[k][n]) for k in ("G", "D") for n in a[k])


def layer_shapes(net, x, kinds=nn.Module, with_types=False):
    """The output shape of every layer (module without children) of net that is one of kinds, in order, for input
    x in eval mode: (C, H, W) without the batch dimension, or with_types (layer type name, whole shape)."""
    shapes = []

    def record(m, i, o):
        shapes.append((type(m).__name__, tuple(o.shape)) if with_types else tuple(o.shape[1:]))
    hooks = [m.register_forward_hook(record) for m in net.modules()
             if isinstance(m, kinds) and not any(m.children())]
    with torch.no_grad():
        net.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


def bar_digits(n=256, seed=0):
    """A tiny MNIST: (images uint8 (n, 28, 28), labels uint8 (n,)); class c is a bright bar at row 4 + 2c with some
    noise, so the ten classes are easy to tell apart. benchmarks/common.py's write_mnist writes it."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 4 + 2 * c:6 + 2 * c, 4:24] = 255
    return images, labels


def write_photo_folder(root):
    """Nested folders of mixed sizes and modes; one truncated JPEG, one PNG that is not an image, one text file."""
    root = Path(root)
    (root / "faces").mkdir(parents=True)
    (root / "more" / "deeper").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(218, 178), (100, 150), (64, 64), (80, 70), (90, 120), (218, 178)]):
        image = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
        torchvision.io.write_jpeg(image, str(root / "faces" / f"{i:06d}.jpg"))
    for i in range(3):
        torchvision.io.write_png((torch.rand(1, 70, 90, generator=g) * 255).to(torch.uint8),
                                 str(root / "more" / f"gray{i}.png"))
    Image.new("RGBA", (70, 80), (200, 10, 30, 128)).save(root / "more" / "deeper" / "rgba.png")
    Image.new("I;16", (66, 77), 3000).save(root / "more" / "deeper" / "gray16.png")
    Image.new("CMYK", (70, 70), (10, 20, 30, 40)).save(root / "more" / "deeper" / "cmyk.jpg")
    Image.new("RGB", (70, 70), (1, 2, 3)).save(root / "more" / "photo.bmp")
    Image.new("RGB", (70, 70), (1, 200, 3)).save(root / "more" / "photo.webp")
    jpeg = (root / "faces" / "000000.jpg").read_bytes()
    (root / "faces" / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "more" / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    (root / "notes.txt").write_text("not an image, and not named like one")
    return root
