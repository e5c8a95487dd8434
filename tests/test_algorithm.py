"""The algorithm of the five scripts, pinned against the papers on fixed inputs and tiny networks.

- Losses: loss_D and loss_G as train_step returns them, and the gradients its D step and G step
  apply, are the papers', written out here: Goodfellow et al. 2014 eq. 1 for D and the
  -log D(G(z)) of its section 3 for G (vanilla_gan, dcgan_mnist, dcgan64, dcgan256);
  Mao et al. 2017 eq. 9 with a = 0, b = 1, c = 1 and its 1/2 factors for lsgan.
- Directions, in float32 and under bfloat16 autocast: the D step raises D(x) and lowers D(G(z))
  (LSGAN: moves both toward their codes 1 and 0), the G step raises D(G(z)) (LSGAN: toward 1). The
  D step changes no weight of G; the G step changes no weight of D and leaves it no gradient.
- What the docstrings fix: initial weights, Adam's learning rates and betas, z ~ N(0, I), and real
  pixels scaled to [-1, 1] on their way to train_step.

tests/mutants.py breaks the scripts in plausible ways, one at a time: these tests catch each.
"""
import copy
import functools
import importlib

import pytest
import torch
from torch import nn

import helpers  # noqa: F401 (puts the scripts on sys.path)

# Tiny networks through each script's own flags.
TINY = {
    "vanilla_gan": ["--z-dim", "8", "--g-hidden", "16", "--d-hidden", "16"],
    "lsgan": ["--z-dim", "8", "--g-hidden", "16", "--d-hidden", "16"],
    "dcgan_mnist": ["--z-dim", "8"],                            # its widths are fixed
    "dcgan64": ["--z-dim", "8", "--ngf", "2", "--ndf", "2"],
    "dcgan256": ["--z-dim", "8", "--ngf", "1", "--ndf", "1"],
}
PHOTO = {"dcgan64", "dcgan256"}                                 # the others: the MNIST family
# Adam's (lr of G, lr of D) as the docstrings and --help give them: the CS231n notebook's 1e-3 in
# the MNIST family; in the photo scripts the DCGAN paper's 2e-4 for D and twice that for G.
DOCUMENTED_LR = {"vanilla_gan": (1e-3, 1e-3), "lsgan": (1e-3, 1e-3), "dcgan_mnist": (1e-3, 1e-3),
                 "dcgan64": (4e-4, 2e-4), "dcgan256": (4e-4, 2e-4)}
BETAS = (0.5, 0.999)                                            # all five: DCGAN's beta1
B, LR = 4, 1e-3                                 # batch size; plain SGD's step for the directions
CPU = torch.device("cpu")


def train_step(script, G, D, opt_G, opt_D, x, z, bf16=False):
    """The script's train_step: the one place here that knows its signature. The photo scripts take
    D twice (the second is D without DDP, for the G step). float32 or bfloat16 autocast."""
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    frozen = (D,) if script in PHOTO else ()
    module = importlib.import_module(script)
    return module.train_step(G, D, *frozen, opt_G, opt_D, x, z, amp, scaler)


def tiny(script):
    """(G, D, x, z), fresh copies: the tiny nets as the script's build() makes them (seed 0), fixed
    noise z from its noise() and a fixed real batch x of "ones": a bright stroke (+1) on -1."""
    return copy.deepcopy(built(script))


@functools.cache
def built(script):
    module = importlib.import_module(script)
    args = module.parse_args([*TINY[script], "--device", "cpu"])
    torch.manual_seed(0)
    G, D, _, _ = module.build(args, CPU)
    z = module.noise(B, args, CPU, torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = -torch.ones_like(G(z))                              # (B, C, H, W) like G's images
    width = x.shape[-1]
    x[..., width // 3:width // 2] = 1.0
    return G, D, x, z


class Recording(torch.optim.SGD):
    """Plain SGD on one net (lr 0: its weights stay) that records, when stepped, the gradients it
    applies and the weights just before and after; counts its steps."""

    def __init__(self, net, lr=0.0):
        super().__init__(net.parameters(), lr=lr)
        self.steps = 0

    def step(self, closure=None):
        params = self.param_groups[0]["params"]
        self.grads = [p.grad.clone() for p in params]          # fails if a weight has no gradient
        self.before = weights(params)
        super().step(closure)
        self.after, self.steps = weights(params), self.steps + 1


def weights(params):
    return [p.detach().clone() for p in params]


def same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def paper_losses(script, r, f, g):
    """(loss_D, loss_G) from D's outputs: r on x, f on G(z) in the D step, g on G(z) in the G
    step."""
    if script == "lsgan":
        # Mao et al. eq. 9: min_D 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2],
        #                   min_G 1/2 E[(D(G(z)) - c)^2]
        a, b, c = 0.0, 1.0, 1.0
        loss_d = 0.5 * ((r - b) ** 2).mean() + 0.5 * ((f - a) ** 2).mean()
        return loss_d, 0.5 * ((g - c) ** 2).mean()
    d_x, d_f, d_g = torch.sigmoid(r), torch.sigmoid(f), torch.sigmoid(g)  # logits to probabilities
    # Goodfellow eq. 1: D maximises V = E log D(x) + E log(1 - D(G(z)));
    # section 3: G maximises E log D(G(z)) rather than minimising E log(1 - D(G(z))).
    return -(torch.log(d_x).mean() + torch.log(1 - d_f).mean()), -torch.log(d_g).mean()


def score(script, out):
    """D(.) as train_step reports it: LSGAN's raw score, the others' probability."""
    return out if script == "lsgan" else torch.sigmoid(out)


@pytest.mark.parametrize("script", TINY)
def test_losses_and_gradients_are_the_papers(script):
    G, D, x, z = tiny(script)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)                 # as they were, for the equations
    opt_G, opt_D = Recording(G), Recording(D)                   # lr 0: the G step meets D as it was
    stats = train_step(script, G, D, opt_G, opt_D, x, z)
    fake = G0(z)
    r, f, g = D0(x), D0(fake.detach()), D0(fake)                # real and fake apart (BatchNorm)
    loss_d, loss_g = paper_losses(script, r, f, g)
    expected = torch.stack([loss_d, loss_g, score(script, r).mean(), score(script, f).mean()])
    torch.testing.assert_close(stats, expected.detach(), rtol=1e-4, atol=1e-6)
    # The gradients each optimiser was stepped with: of loss_D for D's weights, loss_G for G's.
    for loss, net, opt in ((loss_d, D0, opt_D), (loss_g, G0, opt_G)):
        wanted = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
        for got, want in zip(opt.grads, wanted, strict=True):
            scale = float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * scale + 1e-12)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("script", TINY)
def test_each_step_changes_its_own_net_only(script, bf16):
    G, D, x, z = tiny(script)
    G_start = weights(G.parameters())
    opt_G, opt_D = Recording(G, LR), Recording(D, LR)
    train_step(script, G, D, opt_G, opt_D, x, z, bf16)
    assert opt_D.steps == opt_G.steps == 1
    assert not same(opt_D.before, opt_D.after) and not same(opt_G.before, opt_G.after)
    assert same(opt_G.before, G_start), "the D step changed G"
    assert same(weights(D.parameters()), opt_D.after), "the G step changed D"
    assert same([p.grad for p in D.parameters()], opt_D.grads), "the G step left gradients on D"
    assert all(p.requires_grad for p in D.parameters()), "D is still frozen after the G step"


def gaps(script, G, D, x, z):
    """How far D's outputs are from where the steps want them: (D(x) from real, D(G(z)) from fake,
    D(G(z)) from real). Mean probabilities; for LSGAN mean squares from the codes b = 1, a = 0,
    c = 1."""
    with torch.no_grad():
        r, f = D(x), D(G(z))
    if script == "lsgan":
        return ((r - 1) ** 2).mean(), (f ** 2).mean(), ((f - 1) ** 2).mean()
    return 1 - torch.sigmoid(r).mean(), torch.sigmoid(f).mean(), 1 - torch.sigmoid(f).mean()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("script", TINY)
@pytest.mark.parametrize("step", ["D", "G"])
def test_a_step_moves_d_s_outputs_the_right_way(step, script, bf16):
    """One step alone (the other net's lr is 0): D's brings D(x) toward real and D(G(z)) toward
    fake, G's brings D(G(z)) toward real. Measured in float32 on the same batches before and after.
    The D step's two moves hold only where D's gradients on x and on G(z) are not too alike: x (a
    stroke, not noise) is chosen so that they hold for every script's initial nets with a margin
    (dcgan_mnist's is the narrowest: re-check x if the networks change)."""
    G, D, x, z = tiny(script)
    if script == "lsgan":   # centre D's scores on 0.5, between the codes 0 and 1, as the others'
        last = [m for m in D.modules() if isinstance(m, nn.Linear)][-1]  # logits start near 0:
        with torch.no_grad():   # from below both codes, a step toward the wrong one looks right
            last.bias += 0.5 - (D(x).mean() + D(G(z)).mean()) / 2
    before = gaps(script, G, D, x, z)
    lr_G, lr_D = (0.0, LR) if step == "D" else (LR, 0.0)
    train_step(script, G, D, Recording(G, lr_G), Recording(D, lr_D), x, z, bf16)
    after = gaps(script, G, D, x, z)
    closer = [a < b for a, b in zip(after, before)]
    assert (closer[:2] == [True, True]) if step == "D" else closer[2], (before, after)


@pytest.mark.parametrize("script", TINY)
def test_initial_weights_are_as_documented(script):
    """The photo scripts: N(0, 0.02) weights, BatchNorm scales N(1, 0.02), biases 0 (DCGAN section 4
    and the PyTorch tutorial). The MNIST family keeps PyTorch's defaults (benchmarks/README.md: the
    CS231n notebook's Xavier initialisation was tried and not kept): weights and biases ~ U(-k, k),
    k = 1/sqrt(fan_in); BatchNorm scale 1, shift 0."""
    G, D, _, _ = tiny(script)
    G.requires_grad_(False), D.requires_grad_(False)            # plain tensors to measure
    kinds, norm_kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d), (nn.BatchNorm1d, nn.BatchNorm2d)
    layers = [m for net in (G, D) for m in net.modules() if isinstance(m, kinds)]
    norms = [m for net in (G, D) for m in net.modules() if isinstance(m, norm_kinds)]
    if script in PHOTO:
        w = torch.cat([m.weight.flatten() for m in layers])
        assert abs(float(w.mean())) < 1e-3 and 0.019 < float(w.std()) < 0.021
        scales = torch.cat([m.weight for m in norms])
        assert abs(float(scales.mean()) - 1) < 0.01 and 0.015 < float(scales.std()) < 0.025
        biases = [m.bias for m in layers + norms if m.bias is not None]
        assert biases and all(not b.any() for b in biases)
        return
    for m in layers:
        k = m.weight[0].numel() ** -0.5     # fan_in as PyTorch counts it: dim 1 times the kernel
        for t in (m.weight, m.bias):        # a uniform's std is k / sqrt(3)
            assert float(t.abs().max()) <= k
            assert t.numel() < 1000 or abs(float(t.std()) * 3 ** 0.5 / k - 1) < 0.05
    assert all(m.weight.eq(1).all() and not m.bias.any() for m in norms)


@pytest.mark.parametrize("script", TINY)
def test_adam_with_the_documented_learning_rates_and_betas_and_z_standard_normal(script):
    module = importlib.import_module(script)
    lr_g_flag = ["--lr-g", "3e-5"] if script in PHOTO else []  # the MNIST family: one --lr
    flags_and_rates = (([], DOCUMENTED_LR[script]),             # (lr of G, lr of D)
                       (["--lr", "1e-5", *lr_g_flag], (3e-5 if lr_g_flag else 1e-5, 1e-5)))
    for flags, (lr_G, lr_D) in flags_and_rates:
        args = module.parse_args([*TINY[script], "--device", "cpu", *flags])
        G, D, opt_G, opt_D = module.build(args, CPU)
        for opt, net, lr in ((opt_G, G, lr_G), (opt_D, D, lr_D)):
            [group] = opt.param_groups
            assert isinstance(opt, torch.optim.Adam) and group["betas"] == BETAS
            assert group["lr"] == lr
            assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]
    z = module.noise(4096, args, CPU, torch.Generator().manual_seed(0))
    assert z.shape[:2] == (4096, 8) and z.numel() == 4096 * 8
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


class Seen(Exception):
    """Raised by the watch on train_step with the batch it was given: one is enough."""


@pytest.mark.parametrize("script", TINY)
def test_real_pixels_reach_train_step_in_minus_1_to_1(script, request, tmp_path, monkeypatch):
    """The script's training through main() on tiny data, up to the first call of train_step."""
    module = importlib.import_module(script)

    def watch(*args):       # the real batch: the image-sized argument (z is (B, z_dim[, 1, 1]))
        raise Seen(next(a for a in args if torch.is_tensor(a) and a.dim() == 4 and a.shape[-1] > 9))
    monkeypatch.setattr(module, "train_step", watch)
    data = request.getfixturevalue("photo_folder" if script in PHOTO else "tiny_mnist")
    workers = ["--workers", "0"] if script in PHOTO else []
    with pytest.raises(Seen) as seen:
        module.main([*TINY[script], "--data", str(data), "--out", str(tmp_path / "run"),
                     "--batch-size", "8", "--device", "cpu", *workers])
    x = seen.value.args[0]
    assert x.dtype == torch.float32 and float(x.min()) < -0.9 and float(x.max()) > 0.9
    pixels = (x + 1) * 127.5                                    # back to the image files' 0-255
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 255
    torch.testing.assert_close(pixels, pixels.round(), rtol=0, atol=1e-3)
