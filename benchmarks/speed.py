"""Training and generation speed of the five scripts on this machine's default device: one command.

    python benchmarks/speed.py --mnist ./data --images ./celeba

Each script runs through its real command line (device auto: cuda, then mps, then cpu), in fp32 and with --amp,
at the batch sizes users use (MNIST scripts and dcgan64.py 128; dcgan256.py 8, 16 and 32), for --warmup + --steps
steps (--max-steps). Figures:
- training images/s = batch size x measured steps / (time of the last step - time of the last warm-up step),
  from the `time` column of log.csv (per-step wall clock, so start-up, data loading before the first step and the
  warm-up steps are left out; on CUDA the clock is read without a sync, which evens out over the measured steps);
- G images/s: the `wrote N images ... (G: X images/s)` line of --generate N (G's forward passes only);
- peak memory of the training steps: the largest resident set size of the script's main process (sampled every
  2 ms up to the last optimizer step, so the sample grid written at the end is left out; DataLoader worker
  processes not included); on CUDA also torch.cuda.max_memory_allocated() at the last step. Each run is a fresh
  process, started by benchmarks/peak_memory.py, which runs the script with runpy; the script itself is unchanged.
Data: MNIST from --mnist and photos from --images (repeated with symbolic links so that a measured run stays within
one epoch, with real decoding cost); either one missing -> small synthetic data in a temporary folder
(benchmarks/synthetic.py), so the tool runs anywhere (images/s do not depend on what the pixels show).
Writes benchmarks/results/speed.md and speed.csv with the device, CPU, core count and torch version.
"""

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import synthetic  # noqa: E402
from peak_memory import MEMORY_TAG  # noqa: E402

# script, data kind, batch sizes, (warm-up, measured) steps, images for --generate, extra flags
CONFIGS = [
    ("vanilla_gan", "mnist", [128], (5, 50), 5000, []),
    ("lsgan", "mnist", [128], (5, 50), 5000, []),
    ("dcgan_mnist", "mnist", [128], (3, 20), 5000, []),
    ("dcgan64", "images", [128], (2, 6), 512, []),
    ("dcgan256", "images", [8, 16, 32], (2, 4), 64, []),
]
QUICK = {"vanilla_gan": [16], "lsgan": [16], "dcgan_mnist": [16], "dcgan64": [4], "dcgan256": [2]}
# Put before the script: benchmarks/peak_memory.py runs it as __main__ and prints the peak memory of its training
# steps after MEMORY_TAG when it ends.
WRAPPER = Path(__file__).resolve().parent / "peak_memory.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", help="torchvision MNIST root, e.g. ./data (where the MNIST scripts download it); "
                   "synthetic digits when not given")
    p.add_argument("--images", help="folder of photos, searched recursively (e.g. ./celeba); synthetic photos "
                   "when not given")
    p.add_argument("--scripts", nargs="+", choices=[c[0] for c in CONFIGS], default=[c[0] for c in CONFIGS])
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply the measured steps (more = steadier)")
    p.add_argument("--no-amp", action="store_true", help="fp32 only")
    p.add_argument("--results", default=str(common.BENCH / "results"), help="folder for speed.md and speed.csv")
    p.add_argument("--scripts-dir", default=str(common.REPO), help="folder holding the five scripts")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny batches, 1 + 2 steps, fp32 only")
    args = p.parse_args(argv)
    if args.steps_scale <= 0:
        p.error("--steps-scale must be positive")
    return args


def image_folder(src, tmp, n_needed):
    """A folder with at least n_needed photos: src itself, or links repeating its photos (or synthetic ones); and
    the number of distinct photos."""
    if src is None:
        src = synthetic.write_image_folder(Path(tmp) / "synthetic-photos", n=min(n_needed, 64))
    suffixes = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    photos = sorted(p for p in Path(src).rglob("*") if p.suffix.lower() in suffixes)
    if not photos:
        raise SystemExit(f"speed.py: error: no photos in {src}")
    if len(photos) >= n_needed:
        return Path(src).resolve(), len(photos)  # resolved: the scripts run in --scripts-dir
    folder = Path(tmp) / "photos"
    folder.mkdir(exist_ok=True)
    for i in range(n_needed):
        link = folder / f"{i:06d}{photos[i % len(photos)].suffix.lower()}"
        if not link.exists():
            link.symlink_to(photos[i % len(photos)].resolve())
    return folder, len(photos)


def measure(script, data, batch, amp, warmup, steps, n_generate, flags, args, tmp):
    """One training run (fresh process) and one --generate run; returns a dict of figures."""
    out = Path(tmp) / f"{script}-b{batch}-{'amp' if amp else 'fp32'}"
    amp_flag = ["--amp"] if amp else []
    stdout = common.run_script(f"{script}.py", "--data", data, "--out", out, "--batch-size", batch,
                               "--epochs", 100000, "--max-steps", warmup + steps, "--log-every", 1000,
                               *amp_flag, *flags, scripts_dir=args.scripts_dir,
                               python=(sys.executable, str(WRAPPER)), log=Path(tmp) / "stdout.txt")
    log = common.read_log(out / "log.csv")
    t0 = next(r["time"] for r in log if r["step"] == warmup)
    last = log[-1]
    rate = batch * (last["step"] - warmup) / (last["time"] - t0)
    mem = stdout[stdout.rindex(MEMORY_TAG):].split()
    gen = common.run_script(f"{script}.py", "--out", out, "--generate", n_generate, *amp_flag, *flags,
                            scripts_dir=args.scripts_dir, log=Path(tmp) / "stdout.txt")
    return dict(script=script, batch=batch, precision="bf16 autocast" if amp else "fp32",
                steps=f"{warmup}+{last['step'] - warmup}", train_images_per_s=round(rate, 1),
                g_images_per_s=common.generated_rate(gen), peak_rss_mib=round(int(mem[3]) / 2**20),
                cuda_peak_mib=round(int(mem[5]) / 2**20))


def estimate_minutes(configs, args):
    """Rough minutes on a 2-core CPU (start-up and generation included), printed before starting."""
    rough = {"vanilla_gan": 0.4, "lsgan": 0.4, "dcgan_mnist": 1, "dcgan64": 2.5, "dcgan256": 2.5}  # per precision
    runs = 1 if args.no_amp else 2
    return sum(rough[c[0]] * runs * args.steps_scale for c in configs)


def write_markdown(rows, machine, args, path, notes):
    header = ["script", "batch", "precision", "steps (warm-up+measured)", "training images/s", "G images/s",
              "peak RSS (MiB)"] + (["peak CUDA memory (MiB)"] if machine["device"].startswith("cuda") else [])
    table = [[f"`{r['script']}.py`", r["batch"], r["precision"], r["steps"], f"{r['train_images_per_s']:.0f}",
              f"{r['g_images_per_s']:.0f}", r["peak_rss_mib"]] +
             ([r["cuda_peak_mib"]] if machine["device"].startswith("cuda") else []) for r in rows]
    cmd = "python benchmarks/speed.py" + (f" --mnist {args.mnist}" if args.mnist else "") + \
        (f" --images {args.images}" if args.images else "") + (" --quick" if args.quick else "")
    text = "\n".join([
        "## Speed\n",
        f"Machine: {common.machine_line(machine)}.\n",
        f"Command: `{cmd}`\n",
        "Training images/s from log.csv's per-step times after the warm-up steps; G images/s from `--generate` "
        "(G's forward passes only); peak RSS of the script's main process during the training steps (DataLoader "
        "workers not counted). "
        "Each script with its default settings apart from the batch size; `--amp` is bfloat16 autocast.\n",
        *notes,
        common.md_table(header, table)])
    Path(path).write_text(text)


def main(argv=None):
    args = parse_args(argv)
    machine = common.machine_info()
    print(common.machine_line(machine), flush=True)
    configs = [c for c in CONFIGS if c[0] in args.scripts]
    missing = [c[0] for c in configs if not (Path(args.scripts_dir) / f"{c[0]}.py").is_file()]
    notes = [f"Not measured (script not found): {', '.join(f'`{m}.py`' for m in missing)}.\n"] if missing else []
    configs = [c for c in configs if c[0] not in missing]
    if not args.quick:
        print(f"rough duration on a 2-core CPU: {estimate_minutes(configs, args):.0f} min (much less on a GPU)",
              flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gan-speed-") as tmp:
        # enough images that no epoch ends (and writes a sample grid) during a measured run
        per_run = max((b * (round(c[3][1] * args.steps_scale) + c[3][0] + 1) if not args.quick else b * 4
                       for c in configs for b in (QUICK[c[0]] if args.quick else c[2])), default=1)
        mnist = str(Path(args.mnist).resolve()) if args.mnist else str(  # the scripts run in --scripts-dir
            synthetic.write_mnist(Path(tmp) / "mnist", n_per_class=-(-per_run // 10)))
        if not args.mnist:
            notes.append("MNIST scripts: synthetic digits (no --mnist given).\n")
        images = None
        if any(c[1] == "images" for c in configs):
            folder, n_photos = image_folder(args.images, tmp, per_run)
            images, linked = str(folder), folder == Path(tmp) / "photos"
            source = f"the {n_photos} photos of {args.images}" if args.images else "synthetic photos"
            notes.append(f"Photo scripts: {source}"
                         f"{', repeated by links so that a run stays within one epoch' if linked else ''}.\n")
        for script, kind, batches, (warmup, steps), n_gen, flags in configs:
            if args.quick:
                batches, warmup, steps, n_gen = QUICK[script], 1, 2, 8
            steps = max(1, round(steps * args.steps_scale)) if not args.quick else steps
            for batch in batches:
                for amp in ([False] if args.no_amp or args.quick else [False, True]):
                    t = time.perf_counter()
                    try:
                        r = measure(script, mnist if kind == "mnist" else images, batch, amp, warmup, steps,
                                    n_gen, flags, args, tmp)
                    except common.ScriptFailed as e:
                        print(f"{script} batch {batch}{' --amp' if amp else ''} failed: {e}", flush=True)
                        notes.append(f"`{script}.py` batch {batch}{' --amp' if amp else ''}: failed "
                                     f"({str(e).splitlines()[-1][:200]}).\n")
                        continue
                    rows.append(r)
                    print(f"{script} batch {batch} {r['precision']}: {r['train_images_per_s']:.0f} training "
                          f"images/s, G {r['g_images_per_s']:.0f} images/s, peak RSS {r['peak_rss_mib']} MiB "
                          f"({time.perf_counter() - t:.0f} s)", flush=True)
    with open(results / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["script"])
        w.writeheader()
        w.writerows(rows)
    write_markdown(rows, machine, args, results / "speed.md", notes)
    print(f"wrote {results / 'speed.md'} and {results / 'speed.csv'}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
