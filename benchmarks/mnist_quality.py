"""Sample quality of generated MNIST digits, measured with a small digit classifier trained here.

Usage:
    python benchmarks/mnist_quality.py --data ./data runs/vanilla_gan/generated [more folders ...]

A folder is what `--generate N` writes: 000000.png, 000001.png, ... (files of other names are ignored), grayscale
or RGB (converted to grayscale), 28x28 or any other size (resized to 28x28 with antialiasing, e.g. dcgan64.py's 64x64).

How the numbers are computed
1. Data. `--data` is a torchvision MNIST root (MNIST/raw/ with the four IDX files). The classifier is trained on the
   train split and the real reference is the test split. When both splits hold the same digits (as in a folder where
   only the 10,000 official test digits are available and are copied into both splits), the digits are shuffled
   once with a fixed seed and split instead: 40% train the classifier, the other 60% are the real reference. Either
   way the classifier never saw the reference digits, so real and generated digits are both new to it.
2. Classifier. Conv(1->16, 3x3) ReLU MaxPool, Conv(16->32, 3x3) ReLU MaxPool, Linear(1568->128) ReLU, Linear(128->10).
   Adam (lr 1e-3), batch 128, 1,000 steps, inputs shifted at random by up to 2 pixels; seed 0. Its accuracy on the
   reference digits is printed. It is cached in benchmarks/cache/mnist_classifier.pt together with a SHA-256 of
   its training digits and labels and of this recipe; a different data set or recipe trains it again.
3. Features. The 128 activations after the first Linear+ReLU (the penultimate layer), in float64.
4. Distance. The real reference is split once at random (fixed seed) into two halves A and B of h digits each.
   For generated images G (first n = min(len(G), h) of them):
       distance = d(G[:n], A),   floor = d(B[:n], A),
   where d is the Frechet distance between Gaussians fitted to the two feature sets (means m, unbiased covariances S):
       d = |m1 - m2|^2 + Tr(S1) + Tr(S2) - 2 Tr( (S1^1/2 S2 S1^1/2)^1/2 ),
   square roots via symmetric eigen-decompositions (negative eigenvalues from rounding set to 0). The floor is what
   real digits the classifier never saw score against A with the same n, so a generator cannot be expected to go
   below it, and the two numbers are directly comparable. Lower is better.
5. Confidence. Mean over all generated images of the classifier's largest softmax probability (readable digits
   score near the reference's value; blurry or ambiguous ones lower).
6. Coverage. The histogram of predicted classes over all generated images; coverage = its entropy divided by log 10
   (1.0 = all ten classes equally often, 0.0 = one class only), plus how many classes get at least 5% of the images.
   Mode collapse shows up here. The reference digits' own values are printed for comparison.

These numbers use a small MNIST classifier's features, not Inception-v3's: they are NOT comparable with FID values
from papers or other tools, only with each other (same data, same cached classifier, same n). Numbers on different
data (e.g. 10,000 test digits vs the 60,000 training digits) are not comparable either; say which data was used.

Also usable as a library: `Yardstick(data_root)` then `.score(images)` or `.score_folder(path)` -> dict.
"""

import argparse
import contextlib
import hashlib
import math
import re
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode

RECIPE = "conv16-conv32-fc128-fc10/adam1e-3/b128/steps1000/shift2/seed0"
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache" / "mnist_classifier.pt"
TRAIN_STEPS = 1000
CLASSIFIER_SHARE = 0.4  # share of the digits that train the classifier when both splits hold the same digits
MIN_SHARE = 0.05  # a class "is covered" when it gets at least this share of the images
FILE_RE = re.compile(r"^\d+\.png$")


class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)  # (B, 16, 28, 28), pooled to (B, 16, 14, 14)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)  # (B, 32, 14, 14), pooled to (B, 32, 7, 7)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)  # (B, 128): the features
        self.fc2 = nn.Linear(128, 10)  # (B, 10): class logits

    def features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.features(x))


def load_mnist(root, train):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split of a torchvision MNIST root, without download."""
    ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
    return ds.data, ds.targets


def digest(*tensors):
    h = hashlib.sha256(RECIPE.encode())
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def split_data(root):
    """Classifier training digits and real reference digits, see the module docstring (1.)."""
    train_x, train_y = load_mnist(root, train=True)
    test_x, test_y = load_mnist(root, train=False)
    same = train_x.shape == test_x.shape and torch.equal(train_x, test_x)
    if not same:
        return dict(train=(train_x, train_y), ref=(test_x, test_y), same_digits=False)
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    k = int(len(perm) * CLASSIFIER_SHARE)
    return dict(train=(train_x[perm[:k]], train_y[perm[:k]]), ref=(train_x[perm[k:]], train_y[perm[k:]]),
                same_digits=True)


def to_input(images):
    """uint8 (N, H, W) or (N, 1, H, W) -> float (N, 1, 28, 28) in [-1, 1]; other sizes resized with antialiasing."""
    x = images.float().div(255)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x * 2 - 1


@contextlib.contextmanager
def one_thread():
    """Run the small classifier on one CPU thread: as fast as two on an idle 2-core machine, and several times
    faster than two when other processes (a GAN in training) keep the cores busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@one_thread()
def train_classifier(images, labels, steps=TRAIN_STEPS, batch_size=128, seed=0, log=print):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = to_input(images)
    n = len(x_all)
    for step in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=g)
        x = F.pad(x_all[idx], (2, 2, 2, 2), value=-1)
        dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
        x = x[:, :, dy:dy + 28, dx:dx + 28]
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step + 1) % 500 == 0:
            log(f"classifier step {step + 1}/{steps} loss {loss.item():.4f}")
    return model.eval()


def load_or_train_classifier(images, labels, cache=DEFAULT_CACHE, steps=TRAIN_STEPS, log=print):
    """The classifier for these training digits: from the cache when its key matches, else trained and cached."""
    key = digest(images, labels) + f"/steps{steps}"
    cache = Path(cache)
    if cache.is_file():
        try:
            ckpt = torch.load(cache, map_location="cpu", weights_only=True)
            if ckpt.get("key") == key:
                model = DigitClassifier()
                model.load_state_dict(ckpt["model"])
                return model.eval()
        except Exception as e:  # a damaged cache is rebuilt
            if log:
                log(f"ignoring unreadable classifier cache {cache}: {e}")
    if log:
        log(f"training the digit classifier on {len(images)} digits (cached in {cache})")
    model = train_classifier(images, labels, steps=steps, log=log)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "recipe": RECIPE, "model": model.state_dict()}, str(cache) + ".tmp")
    Path(str(cache) + ".tmp").replace(cache)
    return model


def read_folder(folder, limit=None):
    """uint8 (N, 1, H, W) grayscale images from the numbered PNGs (000000.png ...) of a folder, in order."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if FILE_RE.match(p.name)) if folder.is_dir() else []
    if not files:
        raise SystemExit(f"mnist_quality: error: no numbered PNGs (000000.png ...) in {folder}")
    files = files[:limit] if limit else files
    images = [torchvision.io.read_image(str(p), ImageReadMode.GRAY) for p in files]
    if len({tuple(im.shape) for im in images}) != 1:
        raise SystemExit(f"mnist_quality: error: images of different sizes in {folder}")
    return torch.stack(images)


@one_thread()
@torch.no_grad()
def features_and_probs(model, images, batch_size=1000):
    """(features float64 (N, 128), softmax probabilities float64 (N, 10)) of uint8 images."""
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(to_input(images[i:i + batch_size]))
        feats.append(f.double())
        probs.append(F.softmax(model.fc2(f), dim=1).double())
    return torch.cat(feats), torch.cat(probs)


def gaussian_stats(feats):
    """Mean and unbiased covariance (float64) of features (N, D)."""
    feats = feats.double()
    return feats.mean(0), torch.cov(feats.T)


def sqrtm_psd(s):
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


@one_thread()
def frechet_distance(mu1, s1, mu2, s2):
    """|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2), in float64."""
    mu1, s1, mu2, s2 = (t.double() for t in (mu1, s1, mu2, s2))
    r1 = sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return max(float(d), 0.0)


def coverage(probs, num_classes=10, min_share=MIN_SHARE):
    """(normalised entropy of the predicted-class histogram, histogram as shares, classes with >= min_share)."""
    counts = torch.bincount(probs.argmax(1), minlength=num_classes).double()
    share = counts / counts.sum()
    nz = share[share > 0]
    entropy = max(0.0, float(-(nz * nz.log()).sum() / math.log(num_classes)))  # no -0.0
    return entropy, share.tolist(), int((share >= min_share).sum())


class Yardstick:
    """Classifier, real reference halves A and B, and their statistics; scores images against them."""

    def __init__(self, data_root, cache=DEFAULT_CACHE, steps=TRAIN_STEPS, log=print):
        split = split_data(data_root)
        self.same_digits = split["same_digits"]
        self.n_train = len(split["train"][0])
        self.model = load_or_train_classifier(*split["train"], cache=cache, steps=steps, log=log)
        ref_x, ref_y = split["ref"]
        self.n_ref = len(ref_x)
        feats, probs = features_and_probs(self.model, ref_x)
        self.accuracy = float((probs.argmax(1) == ref_y).double().mean())
        perm = torch.randperm(len(ref_x), generator=torch.Generator().manual_seed(1))
        self.h = len(ref_x) // 2
        self.a_idx, self.b_idx = perm[:self.h], perm[self.h:2 * self.h]
        self.ref_images = ref_x
        self.stats_a = gaussian_stats(feats[self.a_idx])
        self.feats_b = feats[self.b_idx]
        self._floors = {}
        self.real = self._summary(feats[self.b_idx], probs[self.b_idx])

    def _summary(self, feats, probs):
        n = min(len(feats), self.h)
        cov_entropy, hist, covered = coverage(probs)
        return dict(n=len(feats), n_fd=n, distance=frechet_distance(*gaussian_stats(feats[:n]), *self.stats_a),
                    confidence=float(probs.max(1).values.mean()), coverage=cov_entropy, classes_covered=covered,
                    hist=hist)

    def score(self, images):
        """Scores of uint8 images (N, [1,] H, W); see the module docstring. Includes "floor" for the same n."""
        feats, probs = features_and_probs(self.model, images)
        out = self._summary(feats, probs)
        out["floor"] = self.floor(out["n_fd"])
        return out

    def score_folder(self, folder, limit=None):
        return self.score(read_folder(folder, limit))

    def floor(self, n=None, size=None):
        """d(B[:n], A); with size, the B digits first go through a resize to size x size and back (bilinear)."""
        n = min(n or self.h, self.h)
        if (n, size) not in self._floors:
            self._floors[n, size] = self._floor(n, size)
        return self._floors[n, size]

    def _floor(self, n, size):
        if size is None:
            return frechet_distance(*gaussian_stats(self.feats_b[:n]), *self.stats_a)
        x = self.ref_images[self.b_idx[:n]].float().unsqueeze(1)
        up = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        feats, _ = features_and_probs(self.model, up.round().clamp(0, 255).to(torch.uint8))
        return frechet_distance(*gaussian_stats(feats), *self.stats_a)

    def describe(self):
        where = ("both splits hold the same digits: split 40/60 at random (seed 0)" if self.same_digits
                 else "train split / test split")
        return (f"classifier trained on {self.n_train} digits, accuracy {100 * self.accuracy:.2f}% on "
                f"{self.n_ref} reference digits it never saw ({where}); reference halves of {self.h} digits")


def format_scores(name, s):
    hist = " ".join(f"{100 * p:.0f}" for p in s["hist"])
    return (f"{name}: {s['n']} images, distance {s['distance']:.2f} (n={s['n_fd']} vs {s['n_fd']} real; "
            f"floor {s['floor']:.2f}), confidence {s['confidence']:.3f}, coverage {s['coverage']:.3f} "
            f"({s['classes_covered']}/10 classes >= {100 * MIN_SHARE:.0f}%), classes % [{hist}]")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="*", help="folders of generated images (000000.png ...)")
    p.add_argument("--data", required=True,
                   help="torchvision MNIST root (MNIST/raw/*-ubyte), e.g. ./data, where the MNIST scripts download it")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="classifier cache file")
    p.add_argument("--limit", type=int, default=None, help="score at most this many images of each folder")
    p.add_argument("--classifier-steps", type=int, default=TRAIN_STEPS, help="training steps of the classifier")
    args = p.parse_args(argv)
    try:
        ys = Yardstick(args.data, cache=args.cache, steps=args.classifier_steps)
    except (RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f"mnist_quality: error: cannot read MNIST under {args.data}: {e}")
    print(ys.describe())
    r = ys.real
    print(f"floor (real vs real): distance {ys.floor():.2f} (n={ys.h} vs {ys.h}); real digits: confidence "
          f"{r['confidence']:.3f}, coverage {r['coverage']:.3f} ({r['classes_covered']}/10 classes)")
    for folder in args.folders:
        print(format_scores(folder, ys.score_folder(folder, args.limit)))


if __name__ == "__main__":
    sys.exit(main())
