"""Generated models: lint-clean, import and train on CPU, match the graph, and apply the rules exactly."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mudelta.codegen import CodegenError, generate, load_module
from mudelta.graphs.ir import SpecError
from mudelta.graphs.presets import load
from mudelta.runtime.cli import main
from mudelta.runtime.coord import model_class

CASES = {
    "mlp": ("mlp", {"layers": "3", "bias": "true"}),
    "transformer": ("transformer", {"layers": "2"}),
    "gdn": ("gdn", {"layers": "2", "vocab": "256"}),
    "gdn-heads": ("gdn", {"layers": "2", "vocab": "256", "regime": "heads", "d_k": "8", "d_v": "16",
                          "tied": "false"}),
    "gdn-hybrid": ("gdn-hybrid", {"layers": "4", "vocab": "256", "attn_every": "2"}),
}
BASE = 64
RUFF = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))


def build(module, width, seed=0, **cfg):
    torch.manual_seed(seed)
    return model_class(module)(module.Config(width=width, **cfg))


def batch(module, model, seed=1):
    g = torch.Generator().manual_seed(seed)
    if hasattr(module.Config, "vocab"):
        idx = torch.randint(0, model.cfg.vocab, (2, 24), generator=g)
        return idx[:, :-1], idx[:, 1:]
    d_in, classes = model.cfg.size("d_in"), model.cfg.size("classes")
    return torch.randn(8, d_in, generator=g), torch.randint(0, classes, (8,), generator=g)


@pytest.fixture(scope="module")
def sources():
    out = {}
    for case, (spec, opts) in CASES.items():
        graph = load(spec, opts)
        for par in ("mup", "sp"):
            out[case, par] = (graph, generate(graph, "adamw", par, base_width=BASE))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_generated_model_is_lint_clean(case, sources, tmp_path):
    if not Path(RUFF).exists():
        pytest.skip("ruff not installed")
    path = tmp_path / "model.py"
    path.write_text(sources[case, "mup"][1])
    for cmd in (["check", "--isolated", "--select", "E,F,W,I,B,UP"], ["format", "--isolated", "--check"]):
        res = subprocess.run([RUFF, *cmd, str(path)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_generated_model_matches_graph_and_trains(case, sources):
    graph, src = sources[case, "mup"]
    module = load_module(src, f"gen_{case.replace('-', '_')}")
    for width in (BASE, 2 * BASE):
        model = build(module, width)
        assert {n for n, _ in model.named_parameters()} == set(graph.params)
        x, y = batch(module, model)
        opt = torch.optim.AdamW(model.param_groups(1e-2, weight_decay=0.1))
        losses = []
        for _ in range(3):
            module.TAPS = {}
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert all(torch.isfinite(torch.tensor(losses)))
        # every graph node with a value is recorded under its own name
        values = {n for n, node in graph.nodes.items() if node.op not in ("input", "cross_entropy")}
        assert set(module.TAPS) == values
    module.TAPS = None


@pytest.mark.parametrize("case", list(CASES))
def test_mup_and_sp_coincide_at_the_base_width(case, sources):
    outs = {}
    for par in ("mup", "sp"):
        module = load_module(sources[case, par][1], f"gen_{case.replace('-', '_')}_{par}")
        model = build(module, BASE)
        outs[par] = model(batch(module, model)[0])[0]
        if par == "mup":  # and differ away from it
            wide = build(module, 4 * BASE)
            mup_wide = wide(batch(module, wide)[0])[0]
        else:
            wide = build(module, 4 * BASE)
            sp_wide = wide(batch(module, wide)[0])[0]
    torch.testing.assert_close(outs["mup"], outs["sp"], rtol=0, atol=0)
    assert not torch.allclose(mup_wide, sp_wide)


@pytest.mark.parametrize("case", ["mlp", "gdn", "transformer"])
def test_two_conventions_are_the_same_model(case):
    """TP5 Table 3 (no multipliers) and the mup package's convention (readout multipliers): same logits at
    init and the same losses for 3 AdamW steps, in float64, away from the base width."""
    spec, opts = CASES[case]
    graph = load(spec, opts)
    torch.set_default_dtype(torch.float64)
    try:
        losses = {}
        for conv in ("tp5", "mup"):
            module = load_module(generate(graph, "adamw", "mup", BASE, conv), f"conv_{case}_{conv}")
            model = build(module, 4 * BASE)
            x, y = batch(module, model)
            opt = torch.optim.AdamW(model.param_groups(3e-3, weight_decay=0.1))
            run = []
            for _ in range(4):
                logits, loss = model(x, y)
                run.append((logits.detach(), loss.item()))
                loss.backward()
                opt.step()
                opt.zero_grad()
            losses[conv] = run
        (l3, _), (l8, _) = losses["tp5"][0], losses["mup"][0]
        torch.testing.assert_close(l3, l8, rtol=1e-10, atol=1e-12)
        for (_, a), (_, b) in zip(losses["tp5"], losses["mup"]):
            assert abs(a - b) < 1e-10 * abs(a), (a, b)
    finally:
        torch.set_default_dtype(torch.float32)


def test_bad_names_never_reach_generated_code(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text("name: 'x); import os  #'\ndims: {width: n}\nnodes: []\n")
    with pytest.raises(SpecError, match="invalid graph name"):
        load(str(spec))
    spec.write_text(
        "dims: {d: n, c: 10}\nnodes:\n  - {name: x, op: input, dims: [c]}\n"
        "  - {name: h, op: linear, in: x, out: [d], param: 'w); import os  #'}\n"
    )
    with pytest.raises(SpecError, match="invalid"):
        load(str(spec))


def test_user_text_in_the_docstring_cannot_end_it(tmp_path, monkeypatch):
    """The command line and a parametrization path reach the module docstring escaped: an output path with
    triple quotes and a backslash gives an importable module whose docstring shows them as typed."""
    path = tmp_path / 'a"""; import os; x = """\\N.py'
    argv = ["codegen", "mlp", "--set", "layers=2", "--base-width", "32", "-o", str(path)]
    monkeypatch.setattr(sys, "argv", ["mudelta", *argv])
    assert main(argv) == 0
    module = load_module(path.read_text(), "docstring_case")
    assert str(path) in " ".join(module.__doc__.split())  # textwrap may break the line at a space
    assert not hasattr(module, "os")


def test_explain_pointer_repeats_the_preset_and_options():
    graph = load("gdn-heads", {"layers": "2", "vocab": "64"})
    src = generate(graph, "sgd", "sp", 1024, spec="gdn-heads", options={"layers": "2", "vocab": "64"})
    doc = " ".join(load_module(src, "pointer_case").__doc__.split())
    assert "mudelta explain gdn-heads PARAM --set layers=2 --set vocab=64 --optimizer sgd --parametrization sp" in doc


def test_specs_without_a_family_are_refused(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "dims: {d_in: 8, width: n, classes: 4}\nnodes:\n  - {name: x, op: input, dims: [d_in]}\n"
        "  - {name: h, op: linear, in: x, out: [width], param: w1}\n"
        "  - {name: logits, op: linear, in: h, out: [classes], param: w2}\n"
        "  - {name: loss, op: cross_entropy, in: logits}\n"
    )
    with pytest.raises(CodegenError, match="no model family"):
        generate(load(str(spec)))


def test_cli_writes_the_file(tmp_path, capsys):
    out = tmp_path / "gdn_model.py"
    assert main(["codegen", "gdn", "--set", "layers=1", "--set", "vocab=256", "-o", str(out)]) == 0
    assert "GatedDeltaNetForCausalLM" in out.read_text() and "wrote" in capsys.readouterr().out
    assert main(["codegen", "gdn", "--set", "layerz=1"]) == 2
    capsys.readouterr()
    assert main(["codegen", "mlp", "-o", str(tmp_path)]) == 2  # a folder: named, and no stray .tmp left
    assert "a folder; give the model file's path" in capsys.readouterr().err
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp"))


@pytest.mark.parametrize("case", ["gdn", "transformer"])
def test_base_width_multipliers(case, sources):
    # a base-width constant multiplies its forward multiplier at every width: the tied readout of the GDN
    # (a slot) or the transformer's untied lm_head (a layer) scales the logits exactly at init
    module = load_module(sources[case, "mup"][1], f"gen_mult_{case}")
    name = "readout" if case == "gdn" else "lm_head"
    for width in (BASE, 2 * BASE):
        plain, scaled = build(module, width), build(module, width, multipliers={name: 4.0})
        idx = batch(module, plain)[0]
        torch.testing.assert_close(scaled(idx)[0], 4.0 * plain(idx)[0])
    with pytest.raises(ValueError, match="no forward multiplier.*'lm_heads'"):
        build(module, BASE, multipliers={"lm_heads": 2.0})


@pytest.mark.parametrize("case", ["mlp", "transformer"])
def test_adam_eps_keeps_its_ratio_to_the_gradient(case):
    """The derived eps of every parameter scales with its gradient: eps / rms(grad) at 8x the base width stays
    within 2x of its base-width value (a fixed eps would move by up to 8x for hidden and input weights)."""
    spec, opts = CASES[case]
    module = load_module(generate(load(spec, opts), "adamw", "mup", BASE), f"eps_{case}")
    ratios = {}
    for width in (BASE, 8 * BASE):
        model = build(module, width)
        _, loss = model(*batch(module, model))
        loss.backward()
        for group in model.param_groups(1e-3, eps=1e-8):
            for name, p in zip(group["names"], group["params"], strict=True):
                rms = p.grad.pow(2).mean().sqrt().item()
                if rms > 0:
                    ratios.setdefault(name, []).append(group["eps"] / rms)
    moved = {n: r[1] / r[0] for n, r in ratios.items() if len(r) == 2}
    assert len(moved) >= 5
    off = {n: round(m, 2) for n, m in moved.items() if not 0.5 < m < 2}
    assert not off, off


@pytest.mark.parametrize("case", ["gdn", "gdn-hybrid", "transformer"])
def test_norm_eps_keeps_its_share_of_the_input(case):
    """Under derived_norm_eps every RMSNorm's eps scales with its input's mean square at init: eps / mean(u^2)
    at 8x the base width stays within 2x of its base-width value. In the head-dim GDN the output norm's input
    o = S q is n^-1/2 at init, so one eps takes 8x its share there (one eps is the default all the same: it trained
    better, benchmarks/lr_transfer/results.md)."""
    spec, opts = CASES[case]
    name = f"norm_eps_{case.replace('-', '_')}"
    module = load_module(generate(load(spec, opts), "adamw", "mup", BASE), name)
    shares = {}
    for width in (BASE, 8 * BASE):
        model = build(module, width, derived_norm_eps=True)
        hooks = [
            m.register_forward_pre_hook(
                lambda m, a, name=name: shares.setdefault(name, []).append(m.eps / a[0].pow(2).mean().item())
            )
            for name, m in model.named_modules()
            if isinstance(m, module.RMSNorm)
        ]
        with torch.no_grad():
            model(*batch(module, model))
        for h in hooks:
            h.remove()
    moved = {n: s[1] / s[0] for n, s in shares.items()}
    assert len(moved) >= 5
    off = {n: round(m, 2) for n, m in moved.items() if not 0.5 < m < 2}
    assert not off, off


def test_config_refuses_what_the_rules_do_not_cover(sources):
    """A generated module's rules hold for the structure it was generated for: another layer count, tying
    or bias is refused (new layers would get the first layer's rule), as are non-positive widths and a
    base width where a scaling dim would be below 1 (codegen)."""
    mlp_module = load_module(sources["mlp", "mup"][1], "structure_mlp")
    gdn_module = load_module(sources["gdn", "mup"][1], "structure_gdn")
    for module, changed in ((mlp_module, {"layers": 5}), (mlp_module, {"bias": False}),
                            (gdn_module, {"tied": False}), (gdn_module, {"layers": 3})):
        with pytest.raises(ValueError, match=f"generated for {next(iter(changed))}="):
            module.Config(width=128, **changed)
    for bad in ({"width": 0}, {"width": -32}, {"base_width": 0}, {"width": 64.0}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            mlp_module.Config(**bad)
    with pytest.raises(ValueError, match=r"dims \['heads'\] would be below 1"):
        load_module(sources["gdn-heads", "mup"][1], "structure_heads").Config(width=8)
    with pytest.raises(CodegenError, match="at base width 256 heads = 1/4, below 1"):
        generate(load("gdn-heads", {"layers": "1", "vocab": "64"}), base_width=256)
