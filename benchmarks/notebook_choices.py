"""dcgan_mnist.py with its defaults against the CS231n notebook's initialisation and prior, to step 3750.

    python benchmarks/notebook_choices.py --mnist ./data

The notebook reports D 0.91 / G 1.15 at iteration 3750 for these networks; dcgan_mnist.py's D wins more clearly.
Besides its data, the notebook differs in two choices: `initialize_weights` puts Xavier's uniform scheme on
every nn.Linear and nn.ConvTranspose2d (nn.Conv2d keeps PyTorch's default), and `sample_noise` draws z
uniformly from [-1, 1]. This tool trains dcgan_mnist.py both ways (same seed, same data, its other defaults),
side by side, each in a fresh process with half the cores that imports the script and replaces its `build` and
`noise` for the notebook's run (the script itself has no such flags), generates --generate digits from each
with its own prior, and scores them with mnist_quality.py. Writes results/notebook_choices.md: the losses at --steps and the mean of the last
50 steps, D(x), D(G(z)), and the scores.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import mnist_quality  # noqa: E402

sys.path.insert(0, str(common.REPO))
import dcgan_mnist  # noqa: E402

VARIANTS = {"ours": "PyTorch's default initialisation, z ~ N(0, I) (dcgan_mnist.py)",
            "notebook": "the notebook's Xavier-uniform layers, z ~ U[-1, 1]"}
BUILD = dcgan_mnist.build                                       # the script's own, before the notebook's replaces it


def notebook_build(args, device):
    """dcgan_mnist.build, then the notebook's initialize_weights on both networks."""
    G, D, opt_G, opt_D = BUILD(args, device)
    for m in [*G.modules(), *D.modules()]:
        if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
    return G, D, opt_G, opt_D


def notebook_noise(n, args, device, rng=None):
    """The notebook's sample_noise: z ~ U[-1, 1], drawn on the CPU (rng is a CPU generator) as dcgan_mnist.noise
    draws its z, then moved to the device."""
    return (torch.rand(n, args.z_dim, generator=rng) * 2 - 1).to(device)


def child(variant, argv):
    """Run dcgan_mnist.main(argv) in this process, as the variant."""
    torch.set_num_threads(max(1, torch.get_num_threads() // 2))  # the two runs go side by side
    if variant == "notebook":
        dcgan_mnist.build, dcgan_mnist.noise = notebook_build, notebook_noise
    dcgan_mnist.main(argv)


def train_and_generate(variant, mnist, out, args):
    for argv in (["--data", mnist, "--out", out, "--epochs", 10 ** 6, "--max-steps", args.steps, "--log-every", 60],
                 ["--out", out, "--generate", args.generate]):
        common.run_script(Path(__file__).name, "--child", variant, "--", *argv, scripts_dir=common.BENCH,
                          log=Path(out).with_suffix(".txt"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", help="torchvision MNIST root, e.g. ./data")
    p.add_argument("--steps", type=int, default=3750)
    p.add_argument("--generate", type=int, default=5000)
    p.add_argument("--results", default=str(common.BENCH / "results"))
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.rest)
    if not args.mnist:
        p.error("--mnist is required")
    mnist = str(Path(args.mnist).resolve())
    print(common.machine_line(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gan-notebook-") as tmp:
        yardstick = mnist_quality.Yardstick(mnist)
        with ThreadPoolExecutor(len(VARIANTS)) as pool:
            list(pool.map(lambda v: train_and_generate(v, mnist, Path(tmp) / v, args), VARIANTS))
        for variant, name in VARIANTS.items():
            out = Path(tmp) / variant
            log = common.read_log(out / "log.csv")
            last = log[-50:]
            s = yardstick.score_folder(out / "generated")
            rows.append([name, f"{log[-1]['loss_d']:.3f}", f"{log[-1]['loss_g']:.3f}",
                         *(f"{statistics.mean(r[k] for r in last):.3f}" for k in ("loss_d", "loss_g", "d_real",
                                                                                   "d_fake")),
                         f"{s['distance']:.1f} (floor {s['floor']:.2f})", f"{s['classes_covered']}/10"])
            print(mnist_quality.format_scores(name, s), flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "notebook_choices.md", "w") as f:
        f.write(f"## dcgan_mnist.py to step {args.steps}: its defaults and the CS231n notebook's choices\n\n"
                f"Machine: {common.machine_line()}.\n\nCommand: `python benchmarks/notebook_choices.py --mnist ./data "
                f"--steps {args.steps} --generate {args.generate}`\n\nScores of {args.generate} generated digits: "
                f"{yardstick.describe()}. The notebook's own losses at 3750: D 0.9103, G 1.15.\n\n")
        f.write(common.md_table(["run", f"D at {args.steps}", f"G at {args.steps}", "D, mean of 50",
                                 "G, mean of 50", "D(x), mean of 50", "D(G(z)), mean of 50", "distance",
                                 "classes >= 5%"], rows))
    print((results / "notebook_choices.md").read_text())


if __name__ == "__main__":
    main()
