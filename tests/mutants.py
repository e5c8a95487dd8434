"""Plausible one-token mistakes in the five scripts, and a runner that tells which the tests catch.

    python tests/mutants.py                 # every mutant against tests/test_algorithm.py (~7 min)
    python tests/mutants.py --own --rev HEAD    # the scripts' own test files, on the committed tree
    python tests/mutants.py dcgan64 lsgan   # only these scripts' mutants

For each mutant the repository (its working tree, or the tree of commit --rev) is copied into a
temporary folder, the one substitution made in the copy (an error if its old text is not there
exactly once: keep the list in step with the scripts), and the tests run there in one process,
stopping at the first failure: the mutant is killed when a test fails, survives when all pass.
Exit status 1 when one survives. Not collected by pytest.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MNIST = ("vanilla_gan", "lsgan", "dcgan_mnist")


def target_zero(what, name, ones="torch.ones_like({})", zeros="torch.zeros_like({})"):
    """The mutant that gives D's output `name` the target 0 where the script wants 1."""
    return what, f"({name}, {ones.format(name)})", f"({name}, {zeros.format(name)})"


# (what goes wrong, the exact old text, the new text), by the code they apply to.
BCE_MNIST = [  # vanilla_gan.py and dcgan_mnist.py, and the photo scripts
    target_zero("D's target for real x 0", "real_logits", "ones", "zeros"),
    target_zero("G's target 0", "gen_logits", "ones", "zeros"),
    ("saturating G loss: G minimises log(1 - D(G(z)))",
     "loss_g = F.binary_cross_entropy_with_logits(gen_logits, ones)",
     "loss_g = -F.binary_cross_entropy_with_logits(gen_logits, zeros)"),
]
LSGAN = [
    target_zero("D's code b for real x 0", "real_scores", "ones", "zeros"),
    target_zero("G's code c 0", "gen_scores", "ones", "zeros"),
    ("minimax G loss: G maximises D's fake term",
     "loss_g = 0.5 * F.mse_loss(gen_scores, ones)",
     "loss_g = -0.5 * F.mse_loss(gen_scores, zeros)"),
    ("G's loss without eq. 9's 1/2", "loss_g = 0.5 * F.mse_loss", "loss_g = F.mse_loss"),
]
PIXELS = ("pixels left in [0, 1]", "x.float().div_(127.5).sub_(1.0)", "x.float().div_(255.0)")
MNIST_REST = [  # the three MNIST scripts
    ("no detach of the fakes in the D step", "cat([x, fake.detach()])", "cat([x, fake])"),
    ("D not frozen in the G step", "D.requires_grad_(False)", "D.requires_grad_(True)"),
    ("Adam's default beta1 0.9", "betas = (args.beta1, 0.999)", "betas = (0.9, 0.999)"),
    PIXELS,
]
PHOTO = [  # dcgan64.py and dcgan256.py: the same losses as the MNIST DCGAN and vanilla GAN
    *BCE_MNIST,
    ("no detach of the fakes in the D step", "D(fake.detach())", "D(fake)"),
    ("D not frozen in the G step", "D_frozen.requires_grad_(False)",
     "D_frozen.requires_grad_(True)"),
    ("learning rates of G and D swapped", "((G, args.lr_g), (D, args.lr))",
     "((G, args.lr), (D, args.lr_g))"),
    ("Adam's default beta1 0.9", "betas=(0.5, 0.999)", "betas=(0.9, 0.999)"),
    ("initialisation skipped", "net.apply(init_weights)", "net"),
    PIXELS,
]
BY_SCRIPT = {"vanilla_gan": BCE_MNIST + MNIST_REST, "lsgan": LSGAN + MNIST_REST,
             "dcgan_mnist": BCE_MNIST + MNIST_REST, "dcgan64": PHOTO, "dcgan256": PHOTO}
MUTANTS = [(script, *mutant) for script, mutants in BY_SCRIPT.items() for mutant in mutants]


def tests(script, own):
    """What a mutant of script runs: test_algorithm.py's tests of it, or the script's own files."""
    if not own:
        return ["tests/test_algorithm.py", "-k", script]
    if script in MNIST:
        return ["tests/test_mnist_scripts.py"]
    photo = sorted(str(p.relative_to(REPO)) for p in REPO.glob("tests/test_photo_*.py"))
    return [f"tests/test_{script}.py", *photo]


def original(script, rev):
    """The script's source in the working tree, or at commit rev."""
    if rev is None:
        return (REPO / f"{script}.py").read_text()
    return subprocess.run(["git", "show", f"{rev}:{script}.py"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def mutated(script, old, new, rev):
    """The script's source with old replaced by new; exits unless old is there exactly once."""
    source = original(script, rev)
    if source.count(old) != 1:
        sys.exit(f"{script}.py holds {old!r} {source.count(old)} times, not once: "
                 "update tests/mutants.py")
    return source.replace(old, new)


def failing(script, source, selection, rev):
    """The first test that fails (None: all pass) in a copy of the repository with source as the
    script's."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        if rev is None:
            skipped = shutil.ignore_patterns(".git", "runs", "__pycache__")
            shutil.copytree(REPO, copy, ignore=skipped)
        else:
            copy.mkdir()
            tree = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True,
                                  check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(copy)], input=tree, check=True)
        (copy / f"{script}.py").write_text(source)
        pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist",  # one process
                  "-p", "no:cacheprovider", "-o", "addopts=-m 'not extras'"]
        done = subprocess.run([*pytest, *selection], cwd=copy, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode not in (0, 1):                   # 1: a test failed; else no verdict
        sys.exit(f"pytest could not run ({done.returncode}):\n{done.stdout[-2000:]}"
                 f"{done.stderr[-2000:]}")
    failed = (line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED "))
    return next(failed, None)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scripts", nargs="*", help="only these scripts' mutants (default: all five)")
    p.add_argument("--own", action="store_true", help="the scripts' own tests instead")
    p.add_argument("--rev", help="mutate the tree of this commit, not the working tree")
    args = p.parse_args()
    chosen = [m for m in MUTANTS if not args.scripts or m[0] in args.scripts]
    sources = [mutated(script, old, new, args.rev) for script, _, old, new in chosen]  # all first
    controls = {tuple(tests(m[0], args.own)): m[0] for m in chosen}  # each selection, unmutated
    for selection, script in controls.items():
        test = failing(script, original(script, args.rev), selection, args.rev)
        if test:
            sys.exit(f"{test} fails on the unchanged scripts: no mutant can be judged")
    survivors = 0
    for (script, what, _, _), source in zip(chosen, sources):
        start = time.monotonic()
        test = failing(script, source, tests(script, args.own), args.rev)
        survivors += test is None
        print(f"{'killed' if test else 'SURVIVED':8s} {script:12s} {what} "
              f"({time.monotonic() - start:.0f} s)" + (f"\n         by {test}" if test else ""),
              flush=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} mutants killed, {survivors} survived")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
