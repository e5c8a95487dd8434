"""A stand-in for the five GAN scripts that follows their command-line contract in a few milliseconds.

It trains nothing: it writes what a run writes (log.csv with a `time` column, checkpoint.pt, real.png,
samples/epoch_NNNN.png, progress.gif), `--generate N` writes N 28x28 grayscale PNGs (class i % 10 drawn as a bar
at row 4 + 2 * (i % 10), like the tiny MNIST of helpers.bar_digits, or --fake-class for all of them) and
generated_grid.png beside them, and it prints the `trained ...` and `wrote N images to DIR and a grid of the first
K to FILE (G: X images/s)` lines. Standard library only, so the benchmark tools' tests run without waiting for real
training. Unknown flags are accepted and ignored.
"""
import argparse
import json
import struct
import sys
import zlib
from pathlib import Path

STEPS_PER_EPOCH = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="./data")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="runs/fake")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--generate", type=int)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--fake-class", type=int, help="draw every generated image as this class")
    args, _ = p.parse_known_args(argv)
    return args


def write_png(path, rows):
    """8-bit grayscale PNG from a list of equal-length bytes rows."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                           + chunk(b"IEND", b""))


def bar(c):
    return [bytes([255] * 20 if 4 + 2 * c <= y < 6 + 2 * c else [20] * 20).rjust(24, b"\x14").ljust(28, b"\x14")
            for y in range(28)]


def train(args):
    out = Path(args.out)
    ckpt = out / "checkpoint.pt"
    state = json.loads(ckpt.read_text()) if args.resume else {"step": 0, "time": 0.0}
    last = args.epochs * STEPS_PER_EPOCH if args.max_steps is None else min(args.max_steps,
                                                                           args.epochs * STEPS_PER_EPOCH)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    if not args.resume:
        write_png(out / "real.png", bar(0))
        (out / "log.csv").write_text("step,epoch,time,loss_d,loss_g,d_real,d_fake\n")
    with open(out / "log.csv", "a") as f:
        for step in range(state["step"] + 1, last + 1):
            state["time"] += 0.01
            f.write(f"{step},{(step - 1) // STEPS_PER_EPOCH + 1},{state['time']:.3f},1.3,0.8,0.6,0.4\n")
    epoch = -(-last // STEPS_PER_EPOCH)
    write_png(out / "samples" / f"epoch_{epoch:04d}.png", bar(epoch % 10))
    (out / "progress.gif").write_bytes((out / "samples" / f"epoch_{epoch:04d}.png").read_bytes())
    trained = last - state["step"]
    state["step"] = last
    ckpt.write_text(json.dumps(state))
    print(f"trained {trained} steps in 0.1 s ({trained * args.batch_size * 10} images/s)")


def generate(args):
    folder = Path(args.out) / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.generate):
        write_png(folder / f"{i:06d}.png", bar(i % 10 if args.fake_class is None else args.fake_class))
    write_png(folder.parent / "generated_grid.png", bar(0))
    print(f"wrote {args.generate} images to {folder} and a grid of the first {min(args.generate, 64)} to "
          f"{folder.parent / 'generated_grid.png'} (G: 12345 images/s)")


def main(argv=None):
    args = parse_args(argv)
    generate(args) if args.generate else train(args)


if __name__ == "__main__":
    sys.exit(main())
