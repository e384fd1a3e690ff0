"""The model the decay-gradient probes share (decay_grad_probe.py, decay_grad_sign.py, decay_grad_radial.py):
the GDN preset, 2 layers, byte vocabulary, generated for muP SGD at base width 64, in float64, on the coord
check's fixed batch of 1 x 32 bytes."""

import torch
from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.runtime import coord
from mudelta.runtime.models import model_class


def probe_module(name: str, tied: bool = True, options: dict | None = None):
    """The generated module (preset options on top of layers=2, vocab=256, tied)."""
    opts = {"layers": "2", "vocab": "256", "tied": "true" if tied else "false", **(options or {})}
    return load_module(generate(load("gdn", opts), "sgd", "mup", base_width=64), name)


def seeded(module, width: int, seed: int, **config):
    """(model, inputs, targets) of one seed: the model initialised from `seed`, in float64."""
    torch.manual_seed(seed)
    model = model_class(module)(module.Config(width=width, **config)).double()
    return (model, *coord._batch(model, 1, 32, seed))
