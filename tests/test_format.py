"""The scripts, tools/ and benchmarks/ are formatted by `ruff format` at 100 columns (ruff.toml), and
no line is longer, comments and strings included (the formatter does not wrap those)."""
import subprocess
import sys

from helpers import REPO

FILES = [*REPO.glob("*.py"), *REPO.glob("tools/*.py"), *REPO.glob("benchmarks/*.py")]


def test_the_code_is_ruff_formatted():
    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", *map(str, FILES)],
                          cwd=REPO, capture_output=True, text=True)
    assert len(FILES) > 10 and done.returncode == 0, done.stdout + done.stderr


def test_no_line_is_longer_than_100_characters():
    long = [f"{p.name}:{n}" for p in FILES for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 100]
    assert long == []
