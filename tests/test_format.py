"""The scripts, tools/ and benchmarks/ are formatted by `ruff format` at 100 columns (ruff.toml), and
no line is longer, comments and strings included (the formatter does not wrap those)."""
import subprocess
import sys

from helpers import REPO

FORMATTED = [*sorted(p.name for p in REPO.glob("*.py")), "tools", "benchmarks"]


def test_the_code_is_ruff_formatted():
    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", *FORMATTED], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_line_is_longer_than_100_characters():
    files = [REPO / f for f in FORMATTED if f.endswith(".py")]
    files += [p for folder in ("tools", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    long = [f"{p.name}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 100]
    assert long == []
