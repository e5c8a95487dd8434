"""What results.py and speed.py share: running a script through its command line, reading its log.csv, and
describing the machine the figures come from."""

import csv
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


class ScriptFailed(RuntimeError):
    pass


def run_script(script, *args, log=None, timeout=None, scripts_dir=REPO, python=(sys.executable,)):
    """Run scripts_dir/script with args (as a user would, cwd = scripts_dir); return its stdout.

    The output is appended to the file `log` when given. A non-zero exit raises ScriptFailed with the end of
    stderr. `python` is the command that runs the file (a wrapper may be put before the script).
    """
    cmd = [*python, str(Path(scripts_dir) / script), *map(str, args)]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=scripts_dir, capture_output=True, text=True, timeout=timeout)
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd[len(python):])}\n{p.stdout}{p.stderr}"
                    f"[exit {p.returncode}, {time.perf_counter() - t:.1f} s]\n")
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
        raise ScriptFailed(f"{' '.join(cmd[len(python):])} exited with {p.returncode}:\n{tail}")
    return p.stdout


def read_log(path):
    """log.csv as a list of dicts of floats (step and epoch as ints)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in r.items()} for r in rows]


GENERATE_RE = re.compile(r"wrote (\d+) images to .* \(G: ([\d.]+) images/s\)")


def generated_rate(stdout):
    """Images/s of G from the `wrote N images to DIR ... (G: X images/s)` line of --generate."""
    m = GENERATE_RE.search(stdout)
    if not m:
        raise ScriptFailed(f"no 'wrote N images ... (G: X images/s)' line in:\n{stdout[-500:]}")
    return float(m.group(2))


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def auto_device():
    """The device the scripts pick with --device auto."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def machine_info():
    """Device, CPU, cores, versions: printed with every figure."""
    device = auto_device()
    name = torch.cuda.get_device_name(0) if device == "cuda" else ("Apple MPS" if device == "mps" else "CPU")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"device": f"{device} ({name})", "cpu": cpu_model(), "cores": cores,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}


def machine_line(info=None):
    i = info or machine_info()
    return (f"device {i['device']}; CPU {i['cpu']}, {i['cores']} cores ({i['torch_threads']} torch threads); "
            f"torch {i['torch']}, torchvision {i['torchvision']}, Python {i['python']}, {i['os']}")


def md_table(header, rows):
    """A Markdown table from a header list and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False
