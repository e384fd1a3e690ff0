"""The training loop: bit-exact resume, refused checkpoints, divergence named by step and param group,
the schedule."""

import dataclasses
import json
import math
import os
import shutil
import sys
import types

import pytest
import torch
from conftest import tiny_overrides
from mudelta.runtime.checkpoint import CheckpointError
from mudelta.runtime.cli import main
from mudelta.runtime.config import ConfigError, load_config
from mudelta.runtime.models import norm_eps_switch
from mudelta.runtime.train import build_model, diagnose, lr_factor, optimizer_for, run


def losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r], [
        (r["step"], r["val_loss"]) for r in rows if "val_loss" in r
    ]


def test_resume_is_bit_exact(byte_data, tmp_path):
    a = tmp_path / "a"
    cfg = load_config(None, tiny_overrides(byte_data, a, **{"train.ckpt_every": 3, "train.keep_ckpts": 3}))
    result = run(cfg, progress=False)
    assert not result["diverged"] and result["tokens"] == 6 * 4 * 32 and result["flops_per_token"] > 0
    assert result["final_val_loss"] < result["init_loss"]
    # interrupted after step 3: drop the last checkpoint, resume from the one at step 3
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_00000006")
    (b / "checkpoints" / "latest").write_text("step_00000003\n")
    cfg_b = load_config(None, tiny_overrides(byte_data, b))
    result_b = run(cfg_b, resume=True, progress=False)
    assert losses(a) == losses(b)  # every train and val loss identical, to the bit
    assert result_b["final_val_loss"] == result["final_val_loss"]
    meta = json.loads((b / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert meta["step"] == 6 and meta["data_position"]["window"] == 24 and "rng" in meta
    # a sweep that lost its results file resumes a finished trial at its last checkpoint: same final loss
    timing = json.loads((b / "result.json").read_text())
    again = run(cfg_b, resume=True, progress=False)
    assert again["final_val_loss"] == result["final_val_loss"] and again["tokens"] == result["tokens"]
    assert again["seconds"] == timing["seconds"] and again["tokens_per_s"] == timing["tokens_per_s"]
    # a checkpoint written before it kept the loss (and before state.json had its own hash): the loss logged
    state = b / "checkpoints" / "step_00000006" / "state.json"
    old = {k: v for k, v in json.loads(state.read_text()).items() if k not in ("val_loss", "state_sha256")}
    state.write_text(json.dumps(old))
    assert run(cfg_b, resume=True, progress=False)["final_val_loss"] == result["final_val_loss"]


@pytest.mark.parametrize(
    "extra",
    [
        {"model.optimizer": "sgd"},  # no optimizer state at all
        {"model.optimizer": "sgd-nesterov", "train.momentum_by_kind.input": "0"},  # none for the input kind
    ],
    ids=["sgd", "no-momentum-input"],
)
def test_resume_is_bit_exact_without_optimizer_state(byte_data, tmp_path, extra):
    extra = {**extra, "train.lr": "0.05"}
    a, b = tmp_path / "a", tmp_path / "b"
    run(load_config(None, tiny_overrides(byte_data, a, **extra, **{"train.ckpt_every": 3})), progress=False)
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_00000006")
    (b / "checkpoints" / "latest").write_text("step_00000003\n")
    run(load_config(None, tiny_overrides(byte_data, b, **extra)), resume=True, progress=False)
    assert losses(a) == losses(b)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(byte_data, tmp_path, monkeypatch, capfd):
    import signal

    import mudelta.runtime.train as train

    a, b = tmp_path / "a", tmp_path / "b"
    run(load_config(None, tiny_overrides(byte_data, a)), progress=False)
    schedule = train.schedule

    def interrupt_at_step_3(opt, step, cfg):
        if step == 2:  # during the third step
            signal.raise_signal(signal.SIGINT)
        return schedule(opt, step, cfg)

    monkeypatch.setattr(train, "schedule", interrupt_at_step_3)
    args = ["train", "--quiet"] + [x for o in tiny_overrides(byte_data, b) for x in ("--set", o)]
    assert main(args) == 130
    err = capfd.readouterr().err
    assert "stopping after this step" in err and "interrupted at step 3; checkpoint" in err
    assert "continue with --resume" in err
    assert (b / "checkpoints" / "step_00000003").is_dir() and not (b / "result.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(train, "schedule", schedule)
    run(load_config(None, tiny_overrides(byte_data, b)), resume=True, progress=False)
    assert losses(a) == losses(b)


def test_resume_falls_back_to_the_newest_checkpoint_left(byte_data, tmp_path):
    from mudelta.runtime import checkpoint

    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(byte_data, out, **{"train.ckpt_every": 3})), progress=False)
    ck = out / "checkpoints"
    shutil.rmtree(ck / "step_00000006")  # deleted as corrupt, as the error advises
    with pytest.warns(UserWarning, match="names 'step_00000006', which does not exist; using the newest"):
        assert checkpoint.latest(ck) == ck / "step_00000003"
    (ck / "latest").unlink()
    assert checkpoint.latest(ck) == ck / "step_00000003"  # a run is there: not a fresh start
    with pytest.raises(CheckpointError, match="already holds a run"):
        run(load_config(None, tiny_overrides(byte_data, out)), progress=False)


def test_a_save_sweeps_the_folders_of_killed_saves(tmp_path):
    import subprocess

    from mudelta.runtime import checkpoint

    pid = [sys.executable, "-c", "import os; print(os.getpid())"]
    gone = subprocess.run(pid, capture_output=True, text=True, check=True)
    killed = tmp_path / f".tmp_step_00000001_{gone.stdout.strip()}"  # its process has exited
    running = tmp_path / f".tmp_step_00000001_{os.getppid()}"  # a live process's save: not touched
    mine = tmp_path / f".tmp_step_00000001_{os.getpid()}"  # a killed run's that had this process's id
    odd = [tmp_path / f".tmp_step_00000001_{x}" for x in ("99999999999999999999", "\u00b2", "x")]
    for d in (killed, running, mine, *odd):
        d.mkdir()
    checkpoint.save(tmp_path, 2, {"w": torch.zeros(2)}, {"state": {}, "param_groups": []}, {})
    assert not killed.exists() and not mine.exists() and (tmp_path / "step_00000002").is_dir()
    assert running.exists() and all(d.exists() for d in odd)  # not a save's name: left alone


def test_refuses_corrupt_mismatched_or_unrequested_checkpoints(byte_data, tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(byte_data, out, **{"train.steps": 2})), progress=False)
    with pytest.raises(CheckpointError, match="already holds a run.*--resume"):
        run(load_config(None, tiny_overrides(byte_data, out, **{"train.steps": 2})), progress=False)
    with pytest.raises(
        CheckpointError, match=r"different configuration \(train.lr: 0.01 in the checkpoint, 0.02"
    ):
        run(
            load_config(None, tiny_overrides(byte_data, out, **{"train.steps": 2, "train.lr": 0.02})),
            resume=True,
            progress=False,
        )
    f = out / "checkpoints" / "step_00000002" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    args = ["train", "--resume", "--quiet"] + [
        x for o in tiny_overrides(byte_data, out, **{"train.steps": 2}) for x in ("--set", o)
    ]
    assert main(args) == 2
    assert "model.safetensors is corrupt" in capsys.readouterr().err
    # a hand-edited state.json (a step moved on, the file hashes dropped) is refused, not trusted; so is
    # other data under data.path than the checkpoint was trained on
    out = tmp_path / "run2"
    run(load_config(None, tiny_overrides(byte_data, out, **{"train.steps": 2})), progress=False)
    args = ["train", "--resume", "--quiet"] + [
        x for o in tiny_overrides(byte_data, out, **{"train.steps": 2}) for x in ("--set", o)
    ]
    state = out / "checkpoints" / "step_00000002" / "state.json"
    meta = json.loads(state.read_text())
    for edit, message in (({"step": 1}, "edited or damaged"), ({"files": {}}, "edited or damaged")):
        state.write_text(json.dumps({**meta, **edit}))
        assert main(args) == 2
        assert message in capsys.readouterr().err
    body = {k: v for k, v in meta.items() if k != "state_sha256"}  # without the digest: the checks behind it
    state.write_text(json.dumps({**body, "data_fingerprint": "0" * 16}))
    assert main(args) == 2 and "trained on other data" in capsys.readouterr().err
    for edit, message in (({"step": 5}, "says step 5"), ({"files": {}}, "'files' must list")):
        state.write_text(json.dumps({**body, **edit}))
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_divergence_names_the_step_and_the_group(byte_data, tmp_path, capsys):
    out = tmp_path / "nan"
    sets = tiny_overrides(
        byte_data,
        out,
        **{
            "model.optimizer": "sgd-nesterov",
            "train.lr": 1e12,
            "train.grad_clip": 0,
            "train.diverge_margin": "null",
            "train.warmup": 0,
        },
    )
    result = run(load_config(None, sets), progress=False)
    assert result["diverged"] and result["final_val_loss"] is None
    assert "at step" in result["error"] and "param group" in result["error"]
    # the CLI exits non-zero with the same message
    sets2 = [*sets, f"out={tmp_path / 'nan2'}"]
    assert main(["train", "--quiet"] + [x for o in sets2 for x in ("--set", o)]) == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and "param group" in err
    # a loss far above the first one also counts as diverged
    margin = run(
        load_config(
            None, tiny_overrides(byte_data, tmp_path / "m", **{"train.lr": 3.0, "train.diverge_margin": 0.5})
        ),
        progress=False,
    )
    assert margin["diverged"] and "diverge_margin" in margin["error"]


def test_diagnose_ratio_survives_float32_overflow():
    """Finite float32 weights near the top of the range overflow a float32 norm; |g|/|w| is still right."""
    w = torch.nn.Parameter(torch.full((4,), 3e38))
    w.grad = torch.full((4,), 1e38)
    small = torch.nn.Parameter(torch.ones(4))
    small.grad = torch.full((4,), 1e-3)
    groups = [{"params": [small], "names": ["small"]}, {"params": [w], "names": ["big"]}]
    opt = torch.optim.SGD(groups, lr=1.0)
    assert "|g|/|w| = 0.333" in diagnose(opt) and "big" in diagnose(opt)


def test_a_checkpoint_from_before_module_content_hashing_resumes(byte_data, tmp_path):
    """Runs with model.module were keyed by the module's path before its content; their checkpoints load."""
    first = tmp_path / "first"
    run(load_config(None, tiny_overrides(byte_data, first, **{"train.steps": 2})), progress=False)
    module = next((first / "models").glob("*.py"))
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(byte_data, out, **{"train.steps": 2, "model.module": str(module)}))
    run(cfg, progress=False)
    state = out / "checkpoints" / "step_00000002" / "state.json"
    meta = json.loads(state.read_text())
    old = {k: v for k, v in meta.items() if k not in ("state_sha256", "data_fingerprint")}
    old["config_hash"] = cfg.trajectory_hash(module_path=True)
    old["config"] = cfg.trajectory(module_path=True)
    state.write_text(json.dumps(old))
    assert run(cfg, resume=True, progress=False)["final_val_loss"] == meta["val_loss"]


def test_a_given_module_must_match_the_config(byte_data, tmp_path):
    """model.module holds rules for one parametrization and optimizer, and its options are baked in: a
    config that says otherwise is refused, not trained with the module's rules under the config's labels."""
    first = tmp_path / "first"
    run(load_config(None, tiny_overrides(byte_data, first, **{"train.steps": 1})), progress=False)
    module = str(next((first / "models").glob("*.py")))
    for key, value, message in (
        ("model.parametrization", "sp", "generated for parametrization 'mup', the config says 'sp'"),
        ("model.optimizer", "sgd", "generated for optimizer 'adamw', the config says 'sgd'"),
        ("model.options.layers", "3", r"model.options.layers='3' cannot change model.module .*layers=1"),
        ("model.options.tied", "true", r"model.options.tied='true' cannot change .*tied=False"),
    ):
        over = {"train.steps": 1, "model.module": module, key: value}
        with pytest.raises(ValueError, match=message):
            run(load_config(None, tiny_overrides(byte_data, tmp_path / key, **over)), progress=False)
    # options equal to the module's, or that it does not record (the sweep passes its options along)
    over = {"train.steps": 1, "model.module": module, "model.options.tied": "false"}
    over["model.options.heads"] = "2"
    run(load_config(None, tiny_overrides(byte_data, tmp_path / "same", **over)), progress=False)


def test_paths_in_the_way_are_named(byte_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="a file is in the way"):
        run(load_config(None, tiny_overrides(byte_data, blocker)), progress=False)
    with pytest.raises(ConfigError, match="a folder, not a file"):
        load_config(tmp_path)
    cfg = load_config(None, tiny_overrides(byte_data, tmp_path / "m", **{"model.module": str(blocker)}))
    with pytest.raises(FileNotFoundError, match="a .py file written by mudelta codegen"):
        run(cfg, progress=False)


def test_zero_eval_and_log_intervals_mean_the_last_step_only(byte_data, tmp_path):
    out = tmp_path / "z"
    cfg = load_config(None, tiny_overrides(byte_data, out, **{"train.eval_every": 0, "train.log_every": 0}))
    result = run(cfg, progress=False)
    train, val = losses(out)
    assert [s for s, _ in train] == [6] and [s for s, _ in val] == [6]
    assert result["final_val_loss"] == val[0][1]


@pytest.mark.parametrize(
    "key, value",
    [("train.steps", "0"), ("train.lr", "0"), ("train.lr", "-0.01"), ("train.dtype", "fp64"),
     ("train.device", "gpu"), ("train.grad_clip", "-1"), ("train.min_lr_ratio", "5"), ("train.eps", "-1"),
     ("train.betas", "[0.9]"), ("train.betas", "[2, 3]"), ("train.peak_flops", "-5"),
     ("train.keep_ckpts", "0"),
     ("data.batch", "0"), ("data.seq", "0"), ("model.width", "0"), ("out", "")],
)
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        load_config(None, [f"{key}={value}"])


def test_clipping_bounds_the_update(byte_data, tmp_path):
    """Under SGD a clip far below the gradient norm makes every step tiny: the loss stays at its first value
    (Adam would not show it: its update does not depend on the gradient's scale)."""

    def train_losses(name, clip):
        extra = {"train.grad_clip": clip, "train.warmup": 0, "model.optimizer": "sgd", "train.lr": 0.5}
        sets = tiny_overrides(byte_data, tmp_path / name, **extra)
        run(load_config(None, sets), progress=False)
        return losses(tmp_path / name)

    (free, free_val), (clipped, clipped_val) = train_losses("free", 0), train_losses("clipped", 1e-9)
    assert clipped[0] == free[0]  # the first loss is before any step
    # validation (the same batches) at steps 3 and 6: the clipped model stays put, the free one has learned
    (_, free3), _ = free_val
    (_, clipped3), (_, clipped6) = clipped_val
    assert abs(clipped3 - clipped6) < 1e-4 and free3 < clipped3 - 0.1


def test_schedule_warmup_then_cosine_to_the_minimum():
    cfg = load_config(None, ["train.steps=100", "train.warmup=10", "train.min_lr_ratio=0.1"])
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))
    assert f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_base_width_multipliers_from_the_config(byte_data, tmp_path):
    cfg = load_config(None, tiny_overrides(byte_data, tmp_path, **{"model.multipliers.lm_head": "4"}))
    assert cfg.model.multipliers == {"lm_head": 4.0}
    result = run(cfg, progress=False)  # the generated model takes them (an unknown name would raise)
    assert not result["diverged"]
    for bad in ("0", "-1", "x", "inf"):
        with pytest.raises(ConfigError, match="model.multipliers.lm_head: expected a positive number"):
            load_config(None, [f"model.multipliers.lm_head={bad}"])
    with pytest.raises(ValueError, match="no forward multiplier"):
        run(
            load_config(None, tiny_overrides(byte_data, tmp_path / "b", **{"model.multipliers.nope": "2"})),
            progress=False,
        )


def test_momentum_per_parameter_kind(byte_data, tmp_path):
    """train.momentum_by_kind splits the derived groups by kind and gives each kind named its own momentum
    (sgd_trace.md addendum 11: no momentum on the input-like groups, whose SGD lr grows with width)."""
    over = {"model.optimizer": "sgd-nesterov", "train.lr": "0.05"}
    base = load_config(None, tiny_overrides(byte_data, tmp_path, **over))
    over_input = {**over, "train.momentum_by_kind.input": "0"}
    cfg = load_config(None, tiny_overrides(byte_data, tmp_path, **over_input))
    assert cfg.train.momentum_by_kind == {"input": 0.0}
    assert "momentum_by_kind" not in base.trajectory()["train"]  # hashes of runs from before the key are kept
    assert base.trajectory_hash() != cfg.trajectory_hash()
    module, model = build_model(cfg, 256, tmp_path / "m")
    opt = optimizer_for(cfg, module, model)
    seen = set()
    for g in opt.param_groups:
        kinds = {module.rule_for(n).kind for n in g["names"]}
        assert len(kinds) == 1, g["names"]  # one kind per group
        kind = kinds.pop()
        seen.add(kind)
        assert g["momentum"] == (0.0 if kind == "input" else 0.9) and g["nesterov"] == (kind != "input")
        assert g["base_lr"] == g["lr"]
    assert seen >= {"input", "hidden"}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    plain = {n: g["lr"] for g in optimizer_for(base, module, model).param_groups for n in g["names"]}
    assert plain == {n: g["lr"] for g in opt.param_groups for n in g["names"]}  # lrs unchanged
    with pytest.raises(ConfigError, match="train.momentum_by_kind.inptu: unknown parameter kind"):
        load_config(None, ["train.momentum_by_kind.inptu=0"])
    with pytest.raises(ConfigError, match=r"train.momentum_by_kind.input: expected a momentum in \[0, 1\)"):
        load_config(None, ["train.momentum_by_kind.input=1.5"])
    whole = load_config(None, ["train.momentum_by_kind={input: 0, scalar: 0.5}"])  # a mapping at once
    assert whole.train.momentum_by_kind == {"input": 0.0, "scalar": 0.5}
    adamw = load_config(None, tiny_overrides(byte_data, tmp_path / "adamw", **over_input))
    adamw.model.optimizer = "adamw"
    with pytest.raises(ConfigError, match="momentum_by_kind: for sgd-nesterov, not adamw"):
        optimizer_for(adamw, module, model)
    with pytest.raises(ConfigError, match="momentum_by_kind: for sgd-nesterov, not adamw"):
        run(adamw, progress=False)
    assert not (tmp_path / "adamw").exists()  # refused before anything is written
    assert not run(cfg, progress=False)["diverged"]


def test_lr_multipliers_per_parameter_kind(byte_data, tmp_path):
    base = load_config(None, tiny_overrides(byte_data, tmp_path))
    cfg = load_config(None, tiny_overrides(byte_data, tmp_path, **{"train.lr_multipliers.hidden": "2"}))
    assert cfg.train.lr_multipliers == {"hidden": 2.0}
    assert base.trajectory_hash() != cfg.trajectory_hash()
    assert "lr_multipliers" not in base.trajectory()["train"]  # hashes of runs from before the key are kept
    _, model = build_model(cfg, 256, tmp_path / "m")
    plain = {n: g["lr"] for g in model.param_groups(1e-3) for n in g["names"]}
    scaled = {n: g["lr"] for g in model.param_groups(1e-3, lr_multipliers={"hidden": 2.0}) for n in g["names"]}
    rule_for = sys.modules[type(model).__module__].rule_for  # the generated module's
    kinds = {n: rule_for(n).kind for n in plain}
    assert {kinds[n] for n in plain} >= {"hidden", "input"}
    for n, lr in plain.items():
        assert scaled[n] == pytest.approx(lr * (2.0 if kinds[n] == "hidden" else 1.0)), n
    with pytest.raises(ValueError, match="unknown kind \\['hiden'\\]"):
        model.param_groups(1e-3, lr_multipliers={"hiden": 2.0})
    with pytest.raises(ConfigError, match="train.lr_multipliers.hidden: expected a positive number"):
        load_config(None, ["train.lr_multipliers.hidden=0"])
    assert not run(cfg, progress=False)["diverged"]


def test_derived_norm_eps_is_opt_in(byte_data, tmp_path):
    """By default every norm's eps is the same at every width; model.derived_norm_eps turns on the derived
    rule, under which the head-dim GDN's output norm (its input n^-1/2 at init) takes eps * n^-1."""
    sizes = {"model.spec": "gdn", "model.width": "64", "model.base_width": "32"}
    over = tiny_overrides(byte_data, tmp_path, **sizes)
    base = load_config(None, over)
    derived = load_config(None, [*over, "model.derived_norm_eps=true"])
    assert "derived_norm_eps" not in base.trajectory()["model"]  # hashes of runs from before the key are kept
    assert base.trajectory_hash() != derived.trajectory_hash()
    eps = {}
    for name, cfg in (("fixed", base), ("derived", derived)):
        module, model = build_model(cfg, 256, tmp_path / name)
        eps[name] = {n: m.eps for n, m in model.named_modules() if isinstance(m, module.RMSNorm)}
    assert set(eps["fixed"].values()) == {model.cfg.norm_eps}
    scaled = {n for n, e in eps["derived"].items() if e != model.cfg.norm_eps}
    assert scaled and all(n.endswith("o_norm") for n in scaled)
    assert all(eps["derived"][n] == pytest.approx(model.cfg.norm_eps / 2) for n in scaled)
    # a module generated while every model took the rule (NORM_EPS, no switch) is refused, not run with it
    old = types.ModuleType("old_model")
    old.Config, old.NORM_EPS, old.__file__ = dataclasses.make_dataclass("Config", ["width"]), {"o": -1}, "m.py"
    with pytest.raises(ValueError, match="m.py: generated when every model took the derived norm eps"):
        norm_eps_switch(old)


def test_render_takes_a_parametrization_file_by_content(tmp_path):
    from mudelta.runtime.models import render

    par = tmp_path / "sub" / "mine.yaml"
    par.parent.mkdir()
    text = "parameters: {'layers.*_proj.weight': {a: 0, b: 1/2, c: %s}, '*': {a: 0, b: 0, c: 0}}\n"
    par.write_text(text % 0)
    first = render("transformer", {"layers": 1}, "adamw", str(par), 32, tmp_path / "models")
    assert first.parent == tmp_path / "models" and "mine" in first.name
    par.write_text(text % 1)  # same path, new exponents: a new module
    assert render("transformer", {"layers": 1}, "adamw", str(par), 32, tmp_path / "models") != first


def test_render_does_not_reuse_a_file_another_version_wrote(tmp_path, monkeypatch):
    from mudelta.runtime import models

    first = models.render("transformer", {"layers": 1}, "adamw", "mup", 32, tmp_path)
    assert models.render("transformer", {"layers": 1}, "adamw", "mup", 32, tmp_path) == first
    monkeypatch.setattr(models, "generator_fingerprint", lambda: "another version")
    assert models.render("transformer", {"layers": 1}, "adamw", "mup", 32, tmp_path) != first
