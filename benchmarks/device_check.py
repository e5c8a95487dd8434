"""Does this device work? The scripts in fp32, with --amp, --compile and --cache, a run moved to the
CPU, and the time a stop under torchrun takes to save.

    python benchmarks/device_check.py --device cuda          # on a GPU machine
    python benchmarks/device_check.py --device mps
    python benchmarks/device_check.py --device cpu --quick   # what the tests run: tiny, seconds

Time: a few minutes on a GPU; about 25 min on a 2-core CPU (--quick: seconds).

On synthetic data (common.py: smooth random photos, block digits) it trains dcgan64.py and
vanilla_gan.py for --steps steps each in fp32 and with --amp, and dcgan64.py also with --compile
and --cache; it resumes the dcgan64.py fp32 run on the CPU (a checkpoint moving between devices);
and it sends SIGTERM to a torchrun run of dcgan64.py (two processes, gloo, on a CPU; one a GPU on
CUDA, at most two) and times how long they take to save and exit (torchrun kills them 30 s after
it forwards a signal). Each run prints images/s (from log.csv, after a warm-up), the autocast
dtype it chose and whether its losses stayed finite; then a line a check: "ok", or why not.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common

NAN = "losses became NaN or infinite"


def parse_args(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--device", default="auto", help="cuda, cuda:N, mps or cpu")
    p.add_argument("--steps", type=int, default=300, help="training steps of each run")
    help = "tiny networks, 4 steps; of the runs only dcgan64.py --amp (tested elsewhere: the rest)"
    p.add_argument("--quick", action="store_true", help=help)
    p.add_argument("--work", help="folder for the data and the runs (default: a temporary one)")
    return p.parse_args(argv)


def runs(args):
    """(name, script, flags) of each training run."""
    photo = ["--ngf", "8", "--ndf", "8", "--batch-size", "4"] if args.quick else []
    mnist = ["--batch-size", "4"] if args.quick else []
    every = [("dcgan64 fp32", "dcgan64.py", photo)]
    every += [
        (f"dcgan64 --{f}", "dcgan64.py", [*photo, f"--{f}"]) for f in ("amp", "compile", "cache")
    ]
    every += [("vanilla_gan fp32", "vanilla_gan.py", mnist)]
    every += [("vanilla_gan --amp", "vanilla_gan.py", mnist + ["--amp"])]
    return [run for run in every if not args.quick or run[0] == "dcgan64 --amp"]


def train(script, flags, data, out, device, steps):
    """One run through the command line: (images/s after the first quarter of the steps, the
    autocast it chose, whether every logged loss is finite), or the error it ended with."""
    workers = ["--workers", 1] if script == "dcgan64.py" else []
    run = ["--data", data, "--out", out, "--device", device, "--max-steps", steps, "--log-every", 1]
    try:
        stdout = common.run_script(script, *run, *workers, *flags)
    except common.ScriptFailed as e:
        return str(e).splitlines()[-1]
    rows = common.read_log(out / "log.csv")
    batch = int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 128
    warm, last = rows[len(rows) // 4], rows[-1]
    rate = (last["step"] - warm["step"]) * batch / max(last["time"] - warm["time"], 1e-9)
    said = [line[len("--amp: ") :] for line in stdout.splitlines() if line.startswith("--amp: ")]
    finite = all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in rows)
    return rate, (said or ["fp32"])[0], finite


def stop_time(data, out, device, quick):
    """Seconds from SIGTERM to the torchrun process group to a saved checkpoint.pt, and to exit."""
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += [str(min(gpus, 2) or 2), str(common.REPO / "dcgan64.py"), "--data", str(data)]
    cmd += ["--out", str(out), "--device", "cuda" if gpus else device, "--epochs", "1000"]
    cmd += ["--log-every", "0.1", "--workers", "1"]
    cmd += ["--ngf", "8", "--ndf", "8", "--batch-size", "4"] if quick else []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(cmd, cwd=common.REPO, start_new_session=True, **quiet)
    deadline = time.monotonic() + 600
    while not (out / "log.csv").exists() or len(common.read_log(out / "log.csv")) < 5:
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            return "the torchrun run ended or stalled before its fifth step"
        time.sleep(0.1)
    t = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    exited, saved = time.time() - t, out / "checkpoint.pt"
    if not saved.exists() or saved.stat().st_mtime < t:
        return "no checkpoint was saved after SIGTERM"
    return saved.stat().st_mtime - t, exited


def main(argv=None):
    args = parse_args(argv)
    device = common.auto_device() if args.device == "auto" else args.device
    steps = 4 if args.quick else args.steps
    work = Path(args.work or tempfile.mkdtemp(prefix="device_check_"))
    n = 64 if args.quick else 512
    photos = common.write_image_folder(work / "photos", n=n, size=(80, 70))
    digits = common.write_mnist(work / "digits", n_per_class=8 if args.quick else 64)
    print(f"{common.machine_line()}; device {device}", flush=True)
    folder = lambda name: work / name.replace(" ", "_").replace("--", "")  # noqa: E731
    verdicts = []
    for name, script, flags in runs(args):
        data = photos if script == "dcgan64.py" else digits
        result = train(script, flags, data, folder(name), device, steps)
        if isinstance(result, str):
            refused = device.startswith("mps") and "--amp needs a cpu or cuda device" in result
            verdicts.append((name, "ok (refused on MPS, as designed)" if refused else result))
            continue
        rate, amp, finite = result
        print(f"{name}: {rate:.0f} images/s, {amp}, losses {'finite' if finite else 'NOT finite'}")
        verdicts.append((name, "ok" if finite else NAN))
    name, _, flags = runs(args)[0]
    moved = train("dcgan64.py", flags + ["--resume"], photos, folder(name), "cpu", steps + 2)
    moved = moved if isinstance(moved, str) else "ok" if moved[2] else NAN
    verdicts.append((f"{name} run on {device} resumed on cpu", moved))
    if device.startswith("mps"):
        verdicts.append(("stop under torchrun", "ok (torchrun runs need cuda or cpu, as designed)"))
    else:
        times = stop_time(photos, work / "stop", device, args.quick)
        if not isinstance(times, str):
            print(f"stop under torchrun: checkpoint saved {times[0]:.1f} s after SIGTERM, "
                  f"all exited after {times[1]:.1f} s")  # fmt: skip
            late = f"took {times[1]:.0f} s, past torchrun's 30 s grace period"
            times = "ok" if times[1] < 30 else late
        verdicts.append(("stop under torchrun", times))
    for name, verdict in verdicts:
        print(f"check {name}: {verdict}")
    return verdicts


if __name__ == "__main__":
    main()
