"""How good are the samples? Scores folders of --generate PNGs against real digits or real faces.

    python benchmarks/quality.py digits --data ./data runs/dcgan_mnist/generated [more folders]
    python benchmarks/quality.py faces --data ./lfw runs/dcgan64/generated
    python benchmarks/quality.py faces --data ./lfw --validate    # is the measure to be trusted?

Time, 2-core CPU: the first command trains its network (digits about 1 min, faces about 5 min;
cached in benchmarks/cache/, keyed by the data and the recipe), then about 10 s (digits) or
2 min (faces) to read and embed the real images and seconds per folder. A GPU is not used.

Each mode trains a small CNN and scores images by the Frechet distance between the features of
its penultimate layer for them and for real images it never saw.
- digits: --data is a torchvision MNIST root. Classifier: conv 16, conv 32, linear 128, linear 10;
  1,000 Adam steps, batch 128, shifts of up to 2 pixels, on the train split; the test split is the
  reference. When both splits hold the same digits they are split at random: 40% train, 60% refer.
- faces: --data holds one folder per person (LFW's layout). Network: four conv-BN-ReLU-pool blocks
  (16-32-64-128 channels) at 64x64, linear 256 (the features), linear to the people; 1,000 Adam
  steps of batch 64 with flips and shifts of up to 4 pixels. Its target is identity: the people
  with 10 photos or more (LFW: 158 people, 90% of each one's photos; accuracy on the other 10% is
  printed). Features that tell people apart must encode what makes one real face differ from
  another (shape, parts, hair, age, light), so samples lacking that variety (collapse) or that
  detail (blur, artefacts) move away from real faces in them; a self-supervised target such as
  rotation rewards cues a GAN gets right early. The reference is every photo of the other people
  (LFW: 8,909): no photo and no person the network trained on.
Distance: the reference is split at random into halves A and B of h; for n = min(N, h) images,
distance = d(images[:n], A), floor = d(B[:n], A), d the Frechet distance of Gaussians fitted to
the features (|m1 - m2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)). Lower is better, the floor
out of reach. Digits also give confidence (mean top softmax probability) and coverage (entropy of
the predicted classes / log 10; classes with 5% or more). Not Inception FIDs. --validate writes
results/<mode>_quality_validation.md: real < blurred < noisy < noise; one image repeated >> real.
"""

import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from torch import nn
from torchvision.io import ImageReadMode

import common

CACHE = common.BENCH / "cache"
MIN_PHOTOS = 10  # faces: people with at least this many photos train the network
MIN_SHARE = 0.05  # digits: a class "is covered" when it gets at least this share of the images


class Net(nn.Module):
    """Per width a conv 3x3 (+ BatchNorm), ReLU, max-pool 2; linear to features; to classes."""

    def __init__(self, classes, channels, size, widths, features, bn):
        super().__init__()
        self.channels, self.size, layers = channels, size, []
        for c_in, c_out in zip([channels, *widths], widths):  # each halves the side
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)]
            layers += [nn.BatchNorm2d(c_out)] * bn + [nn.ReLU(), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)
        self.fc1 = nn.Linear(widths[-1] * (size >> len(widths)) ** 2, features)
        self.fc2 = nn.Linear(features, classes)

    def features(self, x):
        return F.relu(self.fc1(self.conv(x).flatten(1)))


# the recipes: a new recipe trains a new network (the cache key holds it)
MODES = {
    "digits": dict(net=dict(channels=1, size=28, widths=[16, 32], features=128, bn=False),
                   steps=1000, batch=128, shift=2, flip=False, seed=0,
                   recipe="conv16-conv32-fc128-fc10/adam1e-3/b128/steps1000/shift2/seed0/v2"),
    "faces": dict(net=dict(channels=3, size=64, widths=[16, 32, 64, 128], features=256, bn=True),
                  steps=1000, batch=64, shift=4, flip=True, seed=0,
                  recipe="faces:conv16-32-64-128bn-fc256/adam1e-3/b64/shift4/flip/seed0"),
}  # fmt: skip


def to_input(images, net):
    """uint8 (N, [C,] H, W) -> float (N, C, S, S) in [-1, 1] for net (S, C: its size, channels)."""
    x = images.float().div(255)
    x = x.unsqueeze(1) if x.dim() == 3 else x
    if x.shape[1] != net.channels:
        x = x.expand(-1, 3, -1, -1) if net.channels == 3 else TF.rgb_to_grayscale(x[:, :3])
    if x.shape[-1] != net.size or x.shape[-2] != net.size:
        x = F.interpolate(x, size=(net.size, net.size), mode="bilinear", antialias=True)
    return x.clamp(0, 1) * 2 - 1


# ---- data: (training images, labels), (reference images, labels or None), note, held-out set ---
def load_mnist(root, train):
    ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
    return ds.data, ds.targets


def digit_split(root):
    train, test = load_mnist(root, True), load_mnist(root, False)
    if train[0].shape != test[0].shape or not torch.equal(train[0], test[0]):
        return train, test, "train split / test split"
    perm = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(0))
    k = int(len(perm) * 0.4)
    note = "both splits hold the same digits: 40% train the classifier, 60% are the reference"
    return [(t[perm[:k]] for t in train), (t[perm[k:]] for t in train), note]


def read_face(path, size=64):
    image = torchvision.io.decode_image(str(path), ImageReadMode.RGB)
    return TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])


def face_split(root):
    people = {}
    for p in sorted(Path(root).rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            people.setdefault(p.parent, []).append(p)
    known = [photos for photos in people.values() if len(photos) >= MIN_PHOTOS]
    if len(known) < 2:
        raise SystemExit(
            f"quality.py: error: faces needs a folder with one folder per person (LFW's layout) "
            f"and two people with {MIN_PHOTOS} photos or more; {root} has {len(known)}"
        )
    train, held = [], []
    for label, photos in enumerate(known):
        for i, p in enumerate(photos):
            (held if i % 10 == 9 else train).append((p, label))
    ref = [p for photos in people.values() if len(photos) < MIN_PHOTOS for p in photos]
    load = lambda photos: torch.stack([read_face(p) for p in photos])  # noqa: E731
    note = f"{len(known)} people with {MIN_PHOTOS}+ photos train it (90% of each one's photos), "
    note += (
        f"the {len(ref)} photos of the other {len(people) - len(known)} people are the reference"
    )
    pairs = [(load([p for p, _ in s]), torch.tensor([y for _, y in s])) for s in (train, held)]
    return pairs[0], (load(ref), None), note, pairs[1]


# ---- the network, trained once and cached -------------------------------------------------------
def train_net(mode, images, labels, steps, log):
    spec = MODES[mode]
    g = torch.Generator().manual_seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    net = Net(int(labels.max()) + 1, **spec["net"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_all, s, size = to_input(images, net), spec["shift"], net.size
    for step in range(steps):
        idx = torch.randint(len(x_all), (min(spec["batch"], len(x_all)),), generator=g)
        x = F.pad(x_all[idx], (s, s, s, s), value=-1)
        dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=g).tolist()
        x = x[:, :, dy : dy + size, dx : dx + size]
        if spec["flip"]:
            flip = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = F.cross_entropy(net.fc2(net.features(x)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            log(f"{mode} network: step {step + 1}/{steps}, loss {loss.item():.3f}")
    return net.eval()


def load_or_train(mode, images, labels, cache, steps, log):
    h = hashlib.sha256(MODES[mode]["recipe"].encode())
    for t in (images, labels):
        h.update(t.contiguous().numpy().tobytes())
    key = h.hexdigest() + f"/steps{steps}"
    net = Net(int(labels.max()) + 1, **MODES[mode]["net"])
    if Path(cache).is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            net.load_state_dict(saved["model"])
            return net.eval()
    log(f"training the {mode} network on {len(images)} images (cached in {cache})")
    t = time.perf_counter()
    with common.threads(1):
        net = train_net(mode, images, labels, steps, log)
    log(f"trained in {time.perf_counter() - t:.0f} s")
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "model": net.state_dict()}, str(cache) + ".tmp")
    Path(str(cache) + ".tmp").replace(cache)
    return net


@torch.no_grad()
def embed(net, images, batch=500):
    """(features float64 (N, F), softmax probabilities float64 (N, classes)) of uint8 images."""
    feats, probs = [], []
    with common.threads(1):
        for i in range(0, len(images), batch):
            f = net.features(to_input(images[i : i + batch], net))
            feats.append(f.double())
            probs.append(F.softmax(net.fc2(f), dim=1).double())
    return torch.cat(feats), torch.cat(probs)


# ---- the distance -------------------------------------------------------------------------------
def gaussian_stats(feats):
    """Mean and unbiased covariance (float64) of features (N, D)."""
    return feats.double().mean(0), torch.cov(feats.double().T)


def frechet_distance(mu1, s1, mu2, s2):
    """|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2), in float64."""
    mu1, s1, mu2, s2 = (t.double() for t in (mu1, s1, mu2, s2))
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * w.clamp(min=0).sqrt()) @ v.T  # S1^1/2
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return max(float(d), 0.0)


def coverage(probs, min_share=MIN_SHARE):
    """(entropy of the predicted-class histogram / log classes, histogram, classes >= min_share)."""
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    share = counts / counts.sum()
    nz = share[share > 0]
    entropy = max(0.0, float(-(nz * nz.log()).sum() / math.log(probs.shape[1])))  # no -0.0
    return entropy, share.tolist(), int((share >= min_share).sum())


class Yardstick:
    """A mode's network and real reference halves A and B; scores uint8 images against them."""

    def __init__(self, mode, data, cache=None, steps=None, log=print):
        self.mode = mode
        split = (digit_split if mode == "digits" else face_split)(data)
        (train_x, train_y), (ref_x, ref_y), self.note = split[:3]
        cache = cache or CACHE / ("mnist_classifier.pt" if mode == "digits" else "face_net.pt")
        steps = steps or MODES[mode]["steps"]
        self.net = load_or_train(mode, train_x, train_y, cache, steps, log or (lambda _: None))
        held_x, held_y = split[3] if len(split) > 3 else (ref_x, ref_y)
        probs = embed(self.net, held_x)[1]
        self.accuracy = float((probs.argmax(1) == held_y).double().mean())
        feats, probs = embed(self.net, ref_x)
        perm = torch.randperm(len(ref_x), generator=torch.Generator().manual_seed(1))
        self.h = len(ref_x) // 2
        self.a_idx, self.b_idx = perm[: self.h], perm[self.h : 2 * self.h]
        self.ref_images, self.feats_b = ref_x, feats[self.b_idx]
        self.stats_a = gaussian_stats(feats[self.a_idx])
        self._floors = {}
        self.real = self.summary(self.feats_b, probs[self.b_idx])
        self.n_train = len(train_x)

    def summary(self, feats, probs):
        n = min(len(feats), self.h)
        out = dict(n=len(feats), n_fd=n, distance=self.distance(feats[:n]))
        if self.mode == "digits":
            entropy, hist, covered = coverage(probs)
            out.update(confidence=float(probs.max(1).values.mean()), coverage=entropy)
            out.update(classes_covered=covered, hist=hist)
        return out

    def distance(self, feats):
        return frechet_distance(*gaussian_stats(feats), *self.stats_a)

    def score(self, images):
        """Scores of uint8 images (N, [C,] H, W), with the floor for the same n."""
        out = self.summary(*embed(self.net, images))
        return {**out, "floor": self.floor(out["n_fd"])}

    def floor(self, n=None, size=None):
        """d(B[:n], A); with size, B first resized to size x size and back, as such images are."""
        n = min(n or self.h, self.h)
        if (n, size) not in self._floors:
            feats, b = self.feats_b[:n], self.ref_images[self.b_idx[:n]].float()
            if size:
                b = b if b.dim() == 4 else b[:, None]
                x = F.interpolate(b, size=(size, size), mode="bilinear", antialias=True)
                feats = embed(self.net, x.round().clamp(0, 255).to(torch.uint8))[0]
            self._floors[n, size] = self.distance(feats)
        return self._floors[n, size]

    def describe(self):
        return (
            f"{self.mode} network trained on {self.n_train} images ({self.note}; accuracy on "
            f"held-out images of its classes {100 * self.accuracy:.1f}%); reference halves of "
            f"{self.h}"
        )


def read_folder(folder, channels, limit=None):
    """uint8 (N, C, H, W) from the numbered PNGs (000000.png ...) of a folder, in order."""
    folder = Path(folder)
    files = sorted(folder.glob("[0-9]*.png")) if folder.is_dir() else []
    files = [p for p in files if p.stem.isdigit()]
    if not files:
        raise SystemExit(f"quality.py: error: no numbered PNGs (000000.png ...) in {folder}")
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    images = [torchvision.io.decode_image(str(p), mode) for p in files[:limit]]
    if len({tuple(im.shape) for im in images}) != 1:
        raise SystemExit(f"quality.py: error: images of different sizes in {folder}")
    return torch.stack(images)


def format_scores(name, s):
    text = f"{name}: {s['n']} images, distance {s['distance']:.2f} (n={s['n_fd']})"
    text += f", floor {s['floor']:.2f}"
    if "coverage" in s:
        text += (
            f", confidence {s['confidence']:.3f}, coverage {s['coverage']:.3f} "
            f"({s['classes_covered']}/10 classes >= 5%), classes % "
            f"[{' '.join(f'{100 * p:.0f}' for p in s['hist'])}]"
        )
    return text


# ---- validation: does the measure order what it should? -----------------------------------------
def blur(images, sigma):
    k = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(images, [k, k], [sigma, sigma])


def validate(ys, n, command, results):
    """Known sets against reference half A: real < blurred < noisy < noise; collapsed >> varied."""
    b = ys.ref_images[ys.b_idx[:n]]
    b = b.unsqueeze(1) if b.dim() == 3 else b
    g = torch.Generator().manual_seed(2)
    noisy = (b.float() + 25.5 * torch.randn(b.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    sets = [
        ("real held-out images (half B)", b),
        ("the same, blurred (Gaussian, sigma 1 px)", blur(b, 1.0)),
        ("the same, blurred (Gaussian, sigma 2 px)", blur(b, 2.0)),
        ("the same, with Gaussian noise (sigma 0.1 of the range)", noisy),
        ("uniform noise images", torch.randint(0, 256, b.shape, generator=g, dtype=torch.uint8)),
        ("collapsed: 10 real images, each repeated", b[:10].repeat_interleave(-(-n // 10), 0)[:n]),
        ("collapsed: one real image, repeated", b[:1].expand(n, -1, -1, -1)),
    ]
    rows = [(name, ys.score(images)["distance"]) for name, images in sets]
    d = [r[1] for r in rows]
    checks = {
        "real < blurred 1 < blurred 2 < uniform noise": d[0] < d[1] < d[2] < d[4],
        "real < noisy < uniform noise": d[0] < d[3] < d[4],
        "real (varied) < 10 images repeated < 1 repeated": d[0] < d[5] < d[6],
    }
    text = "\n".join([
        f"## Validation of the {ys.mode} quality measure\n",
        f"Machine: {common.machine_line()}.\n",
        f"Command: `{command}`\n",
        f"{ys.describe()}. n = {n} images a set, against reference half A; lower is better.\n",
        common.md_table(["set", "distance"], [(name, f"{v:.2f}") for name, v in rows]),
        *(f"- {name}: {'holds' if ok else 'FAILS'}" for name, ok in checks.items()),
    ]) + "\n"  # fmt: skip
    path = Path(results) / f"{ys.mode}_quality_validation.md"
    path.write_text(text)
    print(text, f"\nwrote {path}", sep="")
    return rows, checks


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("mode", choices=list(MODES), help="digits or faces")
    p.add_argument("folders", nargs="*", help="folders of generated images (000000.png ...)")
    p.add_argument("--data", required=True, help="an MNIST root, or a folder of person folders")
    p.add_argument("--cache", help="the network's cache file (default: benchmarks/cache/...)")
    p.add_argument("--steps", type=int, help="training steps of the network (default: recipe's)")
    p.add_argument("--validate", action="store_true", help="score known sets; write the table")
    p.add_argument("--n", type=int, default=2000, help="--validate: images in each set")
    p.add_argument("--results", default=str(common.BENCH / "results"))
    args = p.parse_intermixed_args(argv)
    try:
        ys = Yardstick(args.mode, args.data, cache=args.cache, steps=args.steps)
    except (RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f"quality.py: error: cannot read {args.data}: {e}")
    print(ys.describe())
    if args.validate:
        command = f"python benchmarks/quality.py {args.mode} --data {args.data} --validate"
        validate(ys, min(args.n, ys.h), f"{command} --n {args.n}", args.results)
    print(format_scores("real images (half B)", {**ys.real, "floor": ys.floor(ys.real["n_fd"])}))
    for folder in args.folders:
        images = read_folder(folder, ys.net.channels)
        print(format_scores(folder, ys.score(images)), flush=True)


if __name__ == "__main__":
    main()
