"""Run a script as __main__ and report the peak memory of its training steps when it ends (used by speed.py).

    python benchmarks/peak_memory.py vanilla_gan.py --max-steps 20 ...

The script runs unchanged, as `python SCRIPT ARGS` would run it (its own folder first on sys.path). A thread
samples the resident set size of this process every 2 ms; an optimizer-step hook (installed as soon as the script
has imported torch.optim) marks the last step, so the sample grid and checkpoint written after it are left out.
On exit one line reports the largest resident set size up to the last step (the process's peak when no step was
seen) and, on CUDA, torch.cuda.max_memory_allocated() at the last step:

    speed.py memory: peak_rss_bytes N cuda_peak_bytes M
"""
import os
import runpy
import sys
import threading
import time

MEMORY_TAG = "speed.py memory:"


def main():
    import resource  # Unix only: imported here, so that speed.py can import MEMORY_TAG anywhere

    path = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    samples, last_step, cuda_peak, done = [], [0.0], [0], threading.Event()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def on_step(*_):
        last_step[0] = time.perf_counter()
        torch = sys.modules["torch"]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda_peak[0] = torch.cuda.max_memory_allocated()

    def poll():
        hooked = False
        while not done.wait(0.002):
            if not hooked and "torch.optim" in sys.modules:
                sys.modules["torch.optim"].optimizer.register_optimizer_step_post_hook(on_step)
                hooked = True
            try:
                with open("/proc/self/statm") as f:
                    samples.append((time.perf_counter(), int(f.read().split()[1]) * page))
            except OSError:
                return

    threading.Thread(target=poll, daemon=True).start()
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        done.set()
        during = [rss for t, rss in samples if t <= last_step[0]]
        peak = max(during) if during else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
            1 if sys.platform == "darwin" else 1024)
        print(MEMORY_TAG, "peak_rss_bytes", peak, "cuda_peak_bytes", cuda_peak[0], flush=True)


if __name__ == "__main__":
    main()
