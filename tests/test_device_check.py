"""benchmarks/device_check.py in its short mode on the CPU: what a maintainer runs on a GPU, run here on every
change (a file of its own, so that the two test processes share the suite's time evenly)."""
import re

from helpers import REPO  # noqa: F401  (puts benchmarks/ on sys.path)
import device_check


def test_device_check_quick_run_passes_every_check_on_the_cpu(tmp_path, capsys):
    verdicts = device_check.main(["--device", "cpu", "--quick", "--work", str(tmp_path)])
    assert [name for name, _ in verdicts] == ["dcgan64 --amp", "dcgan64 --amp run on cpu resumed on cpu",
                                              "stop under torchrun"]
    assert all(verdict == "ok" for _, verdict in verdicts), verdicts
    out = capsys.readouterr().out
    # On a CPU --amp times a step of each precision and keeps the faster: either line is right.
    assert re.search(r"dcgan64 --amp: \d+ images/s, .*(bfloat16 autocast|in float32), losses finite", out)
    assert "stop under torchrun: checkpoint saved" in out
