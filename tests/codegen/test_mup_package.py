"""The derived MLP rules against Microsoft's `mup` package (Tensor Programs V's reference implementation):
the same per-parameter learning rates and weight decays as its MuAdamW and MuSGD, the same init scaling
with width, and, from the same weights, the same logits and losses step by step, in float64."""

import pytest
import torch
import torch.nn.functional as F
from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.runtime.coord import model_class
from torch import nn

mup = pytest.importorskip("mup")

BASE, WIDE, LAYERS = 64, 256, 3
OPTIONS = {"layers": str(LAYERS), "bias": "true"}


class MupMLP(nn.Module):
    """The MLP preset written the way the mup package asks: nn.Linear layers and a MuReadout."""

    def __init__(self, d_in, width, classes):
        super().__init__()
        sizes = [d_in] + [width] * LAYERS
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(LAYERS))
        self.readout = mup.MuReadout(width, classes)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.readout(x)


def ours(optimizer, width, seed=0):
    source = generate(load("mlp", OPTIONS), optimizer, "mup", BASE, "mup")  # the mup package's convention
    module = load_module(source, f"mup_pkg_{optimizer.replace('-', '_')}")
    torch.manual_seed(seed)
    return model_class(module)(module.Config(width=width))


def theirs(model, width, seed=0):
    """mup's model at `width`, base shapes from widths BASE and 2 * BASE (its infinite dims)."""
    d_in, classes = model.cfg.size("d_in"), model.cfg.size("classes")
    torch.manual_seed(seed)
    net = MupMLP(d_in, width, classes)
    mup.set_base_shapes(net, MupMLP(d_in, BASE, classes), delta=MupMLP(d_in, 2 * BASE, classes))
    return net


def their_optimizer(optimizer, net, lr, wd):
    # both keep biases out of weight decay (the generated rules decay matrices and embeddings only)
    groups = [
        {"params": [p for n, p in net.named_parameters() if n.endswith("weight")], "weight_decay": wd},
        {"params": [p for n, p in net.named_parameters() if n.endswith("bias")], "weight_decay": 0.0},
    ]
    if optimizer == "adamw":
        return mup.MuAdamW(groups, lr=lr, eps=1e-30)
    return mup.MuSGD(groups, lr=lr, momentum=0.9, nesterov=True)


def our_optimizer(optimizer, model, lr, wd):
    if optimizer == "adamw":
        return torch.optim.AdamW(model.param_groups(lr, weight_decay=wd, eps=1e-30))
    return torch.optim.SGD(model.param_groups(lr, weight_decay=wd), momentum=0.9, nesterov=True)


def per_parameter(opt, net):
    """name -> (lr, weight decay) of the group that holds the parameter."""
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd-nesterov"])
def test_learning_rates_and_decays_match_the_mup_package(optimizer):
    model = ours(optimizer, WIDE)
    net = theirs(model, WIDE)
    mine = per_parameter(our_optimizer(optimizer, model, 0.01, 0.1), model)
    ref = per_parameter(their_optimizer(optimizer, net, 0.01, 0.1), net)
    assert mine.keys() == ref.keys()
    for name in ref:
        assert mine[name] == pytest.approx(ref[name], rel=1e-12), name
    # away from the base width the rules are not the plain optimizer's: hidden lr / 4 (Adam), input x 4 (SGD)
    changed = "layers.1.weight" if optimizer == "adamw" else "layers.0.weight"
    assert mine[changed][0] != pytest.approx(0.01)


def test_init_scales_with_width_as_the_mup_package():
    """Width 4 x BASE against BASE: ratio of every weight's std, ours against mup's (set_base_shapes rescales
    the readout from PyTorch's init; the hidden layers keep PyTorch's 1/sqrt(fan-in))."""
    ratio = {}
    for who in ("ours", "theirs"):
        std = {}
        for width in (BASE, WIDE):
            model = ours("adamw", width)
            net = model if who == "ours" else theirs(model, width)
            std[width] = {n: p.std().item() for n, p in net.named_parameters() if n.endswith("weight")}
        ratio[who] = {n: std[WIDE][n] / std[BASE][n] for n in std[BASE]}
    assert ratio["ours"].keys() == ratio["theirs"].keys()
    for name, r in ratio["theirs"].items():
        assert ratio["ours"][name] == pytest.approx(r, rel=0.05), name  # sampling noise of the stds
    assert ratio["ours"]["layers.1.weight"] == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd-nesterov"])
def test_same_weights_train_the_same_as_the_mup_package(optimizer):
    torch.set_default_dtype(torch.float64)
    try:
        model = ours(optimizer, WIDE)
        net = theirs(model, WIDE)
        with torch.no_grad():  # the same weights: the forward multipliers are the only difference left
            for (n, p), (m, q) in zip(model.named_parameters(), net.named_parameters(), strict=True):
                assert n == m
                q.copy_(p)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(16, model.cfg.size("d_in"), generator=g)
        y = torch.randint(0, model.cfg.size("classes"), (16,), generator=g)
        opts = our_optimizer(optimizer, model, 0.02, 0.1), their_optimizer(optimizer, net, 0.02, 0.1)
        for step in range(4):
            logits, _ = model(x)  # its loss is taken in float32 (for bf16 autocast)
            ref = net(x)
            torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-12, msg=f"logits at step {step}")
            loss = F.cross_entropy(logits, y)
            for out, opt in ((loss, opts[0]), (F.cross_entropy(ref, y), opts[1])):
                out.backward()
                opt.step()
                opt.zero_grad()
        assert loss.item() < F.cross_entropy(net(x) * 0, y).item()  # it trained
    finally:
        torch.set_default_dtype(torch.float32)


PRESETS = {
    "transformer": ("transformer", {"layers": "2"}),
    "gdn": ("gdn", {"layers": "2", "vocab": "256"}),
    "gdn-heads": (
        "gdn",
        {"layers": "2", "vocab": "256", "regime": "heads", "d_k": "8", "d_v": "16", "tied": "false"},
    ),
    "gdn-hybrid": ("gdn-hybrid", {"layers": "4", "vocab": "256", "attn_every": "2"}),
}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("case", list(PRESETS))
def test_presets_get_the_mup_package_rules_and_its_readouts(case, optimizer):
    """mup's rules follow from which dims of a parameter grow (set_base_shapes on the generated model itself,
    at widths BASE and 2 x BASE). Its MuAdamW / MuSGD learning rates must be ours, up to the rounding of the
    8/3-wide MLP (mup reads the ratio off the shapes). The linear layers it requires to be MuReadout (infinite
    fan-in, finite fan-out: GDN's gate projections and an untied lm_head) must be those with the 1/width
    forward multiplier in our rules, and no other."""
    spec, opts = PRESETS[case]
    source = generate(load(spec, opts), optimizer, "mup", BASE, "mup")
    module = load_module(source, f"mup_pkg_{case.replace('-', '_')}_{optimizer}")
    model = model_class(module)(module.Config(width=WIDE))
    make = lambda width: model_class(module)(module.Config(width=width))  # noqa: E731
    mup.set_base_shapes(model, make(BASE), delta=make(2 * BASE), rescale_params=False, do_assert=False)
    ref = (mup.MuAdamW if optimizer == "adamw" else mup.MuSGD)(model.parameters(), lr=1.0)
    mine, theirs = per_parameter(torch.optim.SGD(model.param_groups(1.0)), model), per_parameter(ref, model)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert mine[name][0] == pytest.approx(theirs[name][0], rel=5e-3), name
    readouts = {
        n
        for n, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and not mod.weight.infshape[0].isinf()
        and mod.weight.infshape[1].isinf()
    }  # mup's assertion
    assert readouts  # every preset has one
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            assert mod.multiplier == pytest.approx(BASE / WIDE if name in readouts else 1.0), name
