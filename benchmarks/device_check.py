"""Checks a device end to end: the scripts in fp32, with --amp, --compile and --cache, a run moved to the CPU, and
the time a stop under torchrun takes to save.

    python benchmarks/device_check.py --device cuda          # on a GPU machine: a few minutes
    python benchmarks/device_check.py --device mps
    python benchmarks/device_check.py --device cpu --quick   # what the tests run (tiny networks, a few steps)

On synthetic data (benchmarks/synthetic.py: smooth random photos, bar digits) it trains dcgan64.py and
vanilla_gan.py for --steps steps each in fp32 and with --amp, and dcgan64.py also with --compile and --cache; it
resumes the dcgan64.py fp32 run on the CPU for a few more steps (a checkpoint moving between devices); and it sends
SIGTERM to a torchrun run of dcgan64.py (two processes, gloo, on a CPU; one process per GPU on CUDA, at most two)
and times how long the processes take to save and exit (torchrun kills them 30 s after it forwards a signal).
For each run it prints images/s (from log.csv, after a warm-up), the autocast dtype the run chose and whether its
losses stayed finite, and it ends with one line per check: "ok", or why not.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import synthetic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cuda:N, mps or cpu")
    p.add_argument("--steps", type=int, default=300, help="training steps of each run")
    p.add_argument("--quick", action="store_true", help="tiny networks, 4 steps, only dcgan64.py --amp before the "
                   "move and the stop: the tests' short run (the other paths have tests of their own)")
    p.add_argument("--work", help="folder for the data and the runs (default: a temporary one)")
    return p.parse_args(argv)


def runs(args):
    """(name, script, flags) of each training run."""
    photo = ["--ngf", "8", "--ndf", "8", "--batch-size", "4"] if args.quick else []
    mnist = ["--batch-size", "4"] if args.quick else []
    every = [("dcgan64 fp32", "dcgan64.py", photo), ("dcgan64 --amp", "dcgan64.py", photo + ["--amp"]),
             ("dcgan64 --compile", "dcgan64.py", photo + ["--compile"]), ("dcgan64 --cache", "dcgan64.py",
                                                                          photo + ["--cache"]),
             ("vanilla_gan fp32", "vanilla_gan.py", mnist), ("vanilla_gan --amp", "vanilla_gan.py", mnist + ["--amp"])]
    return [run for run in every if not args.quick or run[0] == "dcgan64 --amp"]


def train(script, flags, data, out, device, steps):
    """One run through the command line; returns (images/s after the first quarter of the steps, the autocast
    the run said it chose, whether every logged loss is finite), or the error it ended with."""
    workers = ["--workers", 1] if script == "dcgan64.py" else []
    try:
        stdout = common.run_script(script, "--data", data, "--out", out, "--device", device, "--max-steps", steps,
                                   "--log-every", 1, *workers, *flags)
    except common.ScriptFailed as e:
        return str(e).splitlines()[-1]
    rows = common.read_log(out / "log.csv")
    batch = int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 128
    warm = rows[len(rows) // 4]
    rate = (rows[-1]["step"] - warm["step"]) * batch / max(rows[-1]["time"] - warm["time"], 1e-9)
    amp = next((line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("--amp: ")), "fp32")
    finite = all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in rows)
    return rate, amp, finite


def run_folder(work, name):
    return work / name.replace(" ", "_").replace("--", "")


def stop_time(data, out, device, quick):
    """Seconds from SIGTERM to the torchrun process group to a saved checkpoint.pt, and to every process's exit."""
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    processes = min(gpus, 2) if gpus else 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(common.REPO / "dcgan64.py"), "--data", str(data), "--out", str(out), "--device",
           "cuda" if gpus else device, "--epochs", "1000", "--log-every", "0.1", "--workers", "1",
           *(["--ngf", "8", "--ndf", "8", "--batch-size", "4"] if quick else [])]
    proc = subprocess.Popen(cmd, cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while not (out / "log.csv").exists() or len(common.read_log(out / "log.csv")) < 5:
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            return "the torchrun run ended or stalled before its fifth step"
        time.sleep(0.1)
    t = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    exited = time.time() - t
    if not (out / "checkpoint.pt").exists() or (out / "checkpoint.pt").stat().st_mtime < t:
        return "no checkpoint was saved after SIGTERM"
    return (out / "checkpoint.pt").stat().st_mtime - t, exited


def main(argv=None):
    args = parse_args(argv)
    device = common.auto_device() if args.device == "auto" else args.device
    steps = 4 if args.quick else args.steps
    work = Path(args.work or tempfile.mkdtemp(prefix="device_check_"))
    photos = synthetic.write_image_folder(work / "photos", n=64 if args.quick else 512, size=(80, 70))
    digits = synthetic.write_mnist(work / "digits", n_per_class=8 if args.quick else 64)
    print(f"{common.machine_line(common.machine_info())}; device {device}", flush=True)
    verdicts = []
    for name, script, flags in runs(args):
        result = train(script, flags, photos if script == "dcgan64.py" else digits,
                       run_folder(work, name), device, steps)
        if isinstance(result, str):
            refused = device.startswith("mps") and "--amp" in flags and "--amp needs a cpu or cuda device" in result
            verdicts.append((name, "ok (refused on MPS, as designed)" if refused else result))
            continue
        rate, amp, finite = result
        print(f"{name}: {rate:.0f} images/s, {amp}, losses {'finite' if finite else 'NOT finite'}", flush=True)
        verdicts.append((name, "ok" if finite else "losses became NaN or infinite"))
    first = runs(args)[0]
    moved = train("dcgan64.py", first[2] + ["--resume"], photos, run_folder(work, first[0]), "cpu", steps + 2)
    verdicts.append((f"{first[0]} run on {device} resumed on cpu",
                     "ok" if not isinstance(moved, str) and moved[2] else moved if isinstance(moved, str)
                     else "losses became NaN or infinite"))
    if device.startswith("mps"):
        verdicts.append(("stop under torchrun", "ok (torchrun runs need cuda or cpu, as designed)"))
    else:
        times = stop_time(photos, work / "stop", device, args.quick)
        if not isinstance(times, str):
            print(f"stop under torchrun: checkpoint saved {times[0]:.1f} s after SIGTERM, all exited after "
                  f"{times[1]:.1f} s", flush=True)
        verdicts.append(("stop under torchrun", times if isinstance(times, str) else
                         "ok" if times[1] < 30 else f"took {times[1]:.0f} s, past torchrun's 30 s grace period"))
    for name, verdict in verdicts:
        print(f"check {name}: {verdict}")
    return verdicts


if __name__ == "__main__":
    main()
