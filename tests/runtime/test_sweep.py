"""Sweeps (grid, skip finished, shards, the tiny preset) and the summary `mudelta plot` prints."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides
from mudelta.runtime import data, plot
from mudelta.runtime.cli import main
from mudelta.runtime.sweep import load_sweep, run_sweep, shard, trials


def sweep_file(byte_data, tmp_path):
    cfg = {"sweep": {"widths": [32, 64], "lrs": [3e-3, 1e-2], "parametrizations": ["mup", "sp"]}}
    for item in tiny_overrides(byte_data, tmp_path / "sw", **{"train.steps": 2, "model.width": 32}):
        key, value = item.split("=", 1)
        section, *rest = key.split(".")
        if rest:
            cfg.setdefault(section, {})
            node = cfg[section]
            for k in rest[:-1]:
                node = node.setdefault(k, {})
            node[rest[-1]] = yaml.safe_load(value)
        else:
            cfg[section] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_shards_then_skip_finished(byte_data, tmp_path):
    path = sweep_file(byte_data, tmp_path)
    base, grid = load_sweep(str(path), None, None)
    first = run_sweep(base, grid, shard_spec="0/2", devices=[], progress=False)
    second = run_sweep(base, grid, shard_spec="1/2", devices=[], progress=False)
    assert len(first) == len(second) == 4
    rows = [json.loads(x) for x in (tmp_path / "sw" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {(r["width"], r["lr"], r["parametrization"]) for r in rows} == {
        (w, lr, p) for w in (32, 64) for lr in (3e-3, 1e-2) for p in ("mup", "sp")
    }
    for r in rows:
        assert r["status"] == "ok" and r["tokens"] == 2 * 4 * 32 and r["final_val_loss"] > 0
        assert {"best_val_loss", "diverged", "tokens_per_s", "seconds", "optimizer"} <= set(r)
    # at the base width muP and SP are the same model: identical losses
    at_base = {(r["lr"], r["parametrization"]): r["final_val_loss"] for r in rows if r["width"] == 32}
    assert at_base[3e-3, "mup"] == at_base[3e-3, "sp"]
    assert run_sweep(base, grid, devices=[], progress=False) == []  # everything finished: nothing runs
    base2, grid2 = load_sweep(str(path), None, ["train.steps=3"])  # a changed config is a new trial
    assert len(run_sweep(base2, grid2, shard_spec="0/4", devices=[], progress=False)) == 2
    # a sweep folder copied elsewhere still knows its finished trials (keyed by the model's content)
    shutil.copytree(tmp_path / "sw", tmp_path / "moved")
    moved, grid3 = load_sweep(str(path), None, [f"out={tmp_path / 'moved'}"])
    assert run_sweep(moved, grid3, devices=[], progress=False) == []
    # a row cut off by a kill: the next row starts a line of its own, and both the others survive
    results = tmp_path / "moved" / "results.jsonl"
    lines = results.read_text().splitlines()[:8]  # the grid's rows (the steps=3 ones after them)
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    again = run_sweep(moved, grid3, devices=[], progress=False)
    assert len(again) == 1 and json.loads(results.read_text().splitlines()[-1]) == again[0]
    # an error row recorded after a finished one does not hide it from the plot
    error = {**again[0], "status": "error", "final_val_loss": None, "error": "boom"}
    with open(results, "a") as fh:
        fh.write(json.dumps(error) + "\n")
    kept = [r for r in plot.read_results(results) if (r["width"], r["lr"], r["parametrization"]) ==
            (error["width"], error["lr"], error["parametrization"])]
    assert [r["status"] for r in kept] == ["ok"]
    with open(results, "a") as fh:  # but an error of another config (say, more steps) is what that config got
        fh.write(json.dumps({**error, "config_hash": "another"}) + "\n")
    kept = [r for r in plot.read_results(results) if (r["width"], r["lr"], r["parametrization"]) ==
            (error["width"], error["lr"], error["parametrization"])]
    assert [r["status"] for r in kept] == ["error"]


def test_worker_trials_record_divergence_as_an_outcome(byte_data, tmp_path):
    # trials in subprocesses: a diverged run exits non-zero, but it is a result (status diverged), not an error
    path = sweep_file(byte_data, tmp_path)
    base, grid = load_sweep(str(path), None, ["sweep.widths=[32]", "sweep.parametrizations=[mup]",
                                              "sweep.lrs=[0.01, 30.0]", "train.diverge_margin=0.5"])
    rows = {r["lr"]: r for r in run_sweep(base, grid, devices=[], workers=2, progress=False)}
    assert rows[0.01]["status"] == "ok"
    assert rows[30.0]["status"] == "diverged" and rows[30.0]["diverged"] and rows[30.0]["error"]


def test_a_given_module_is_refused_for_a_grid_over_parametrizations(byte_data, tmp_path):
    path = sweep_file(byte_data, tmp_path)
    # options the module does not record (heads) pass the check of the modules the sweep renders
    sets = ["sweep.widths=[32]", "sweep.lrs=[0.01]", "model.options.heads=2"]
    base, grid = load_sweep(str(path), None, sets)
    assert {r["status"] for r in run_sweep(base, grid, devices=[], progress=False)} == {"ok"}
    module = str(next((tmp_path / "sw" / "models").glob("*_mup_*.py")))
    base, grid = load_sweep(str(path), None, [f"model.module={module}", "sweep.lrs=[0.02]"])
    with pytest.raises(ValueError, match="generated for parametrization 'mup', the config says 'sp'"):
        run_sweep(base, grid, devices=[], progress=False)


def test_ctrl_c_keeps_finished_trials_and_starts_no_more(byte_data, tmp_path, monkeypatch):
    """^C in a parallel sweep: the finished trial's row is written, the running one is sent SIGINT (it
    checkpoints) and gets no row, the queued ones never start; running the sweep again runs the rest."""
    import signal
    import threading
    import time

    import mudelta.runtime.sweep as sweep

    path = sweep_file(byte_data, tmp_path)
    base, grid = load_sweep(str(path), None, ["sweep.parametrizations=[mup]", "sweep.widths=[32]",
                                              "sweep.lrs=[0.001, 0.002, 0.004, 0.008, 0.016]"])
    started, interrupted = [], []

    class Proc:
        def send_signal(self, sig):
            interrupted.append(sig)

    def fake(trial, env, log, running):
        started.append(trial.lr)
        if len(started) == 1:
            return {"final_val_loss": 1.0, "steps": 2}
        running.add(Proc())
        if len(started) == 2:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        deadline = time.monotonic() + 30  # a sweep that never signals fails the test instead of hanging it
        while not interrupted and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("exit code 130")

    monkeypatch.setattr(sweep, "_subprocess", fake)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, grid, devices=[], workers=2, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "sw" / "results.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [started[0]] and rows[0]["status"] == "ok"
    assert len(started) in (2, 3) and interrupted  # at most the two slots' trials after the first
    monkeypatch.setattr(sweep, "_subprocess", lambda trial, env, log, running: {"final_val_loss": 2.0})
    assert len(run_sweep(base, grid, devices=[], workers=2, progress=False)) == 4


@pytest.mark.parametrize(
    "sets, message",
    [
        (["sweep.widths=32"], "sweep.widths: expected a non-empty list of positive integers"),
        (["sweep.widths=[32, abc]"], "sweep.widths: expected"),
        (["sweep.lrs=0.01"], "sweep.lrs: expected a non-empty list"),
        (["sweep.lrs=[0.01, abc]"], "sweep.lrs: expected"),
        (["sweep.lrs=[0.01]", "sweep.lrs.adamw=[0.01]"], "sweep.lrs is not a mapping"),
        (["sweep.widths"], "expected sweep.KEY=VALUE"),
    ],
)
def test_bad_grids_are_refused_naming_the_key(byte_data, tmp_path, sets, message):
    path = sweep_file(byte_data, tmp_path)
    with pytest.raises(ValueError, match=message):
        load_sweep(str(path), None, sets)


def test_bad_sweep_files_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, message in (("sweep: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_sweep(str(bad), None, None)
    with pytest.raises(ValueError, match="a folder, not a file"):
        load_sweep(str(tmp_path), None, None)
    assert load_sweep(None, "tiny", ["sweep.lrs=[1e-3, 2e-3]"])[1]["lrs"] == ["1e-3", "2e-3"]  # YAML: strings


def test_shard_spec(tmp_path, monkeypatch):
    assert shard(list(range(5)), "1/2") == [1, 3]
    with pytest.raises(ValueError, match="0 <= i < N"):
        shard([1], "2/2")
    with pytest.raises(ValueError, match="expected i/N"):
        shard([1], "x")
    # a sweep with a bad --shard stops before it prepares its data
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("prepared data for a bad --shard"))
    base, grid = load_sweep(None, "tiny", [f"out={tmp_path / 'sw'}"])
    with pytest.raises(ValueError, match="expected i/N"):
        run_sweep(base, grid, shard_spec="1-2", devices=[], progress=False)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the GPUs asked for exist here")
def test_devices_without_cuda_are_refused(tmp_path, capsys):
    assert main(["sweep", "--preset", "tiny", "--devices", "0,1", "--set", f"out={tmp_path}"]) == 2
    assert "--devices 0,1: no CUDA device is visible" in capsys.readouterr().err


def test_tiny_preset_runs_on_cpu(tmp_path, capsys):
    # the preset as shipped (about a minute on 2 cores): CI runs what `mudelta sweep --preset tiny` runs
    out = tmp_path / "tiny"
    assert main(["sweep", "--preset", "tiny", "--cpu", "--quiet", "--set", f"out={out}"]) == 0
    rows = plot.read_results(out / "results.jsonl")
    assert len(rows) == 3 * 4 * 2
    assert main(["plot", str(out / "results.jsonl"), "-o", str(tmp_path / "p.png"), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {(e["parametrization"], e["optimizer"]) for e in summary} == {("mup", "adamw"), ("sp", "adamw")}
    assert (tmp_path / "p.png").stat().st_size > 10_000
    # two sweeps (say, two readout multipliers) side by side: each file keeps its own panel and summary
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.jsonl").write_text((out / "results.jsonl").read_text())
    files = [str(out / "results.jsonl"), str(other / "results.jsonl")]
    assert main(["plot", *files, "-o", str(tmp_path / "two.png"), "--format", "json"]) == 0
    labels = {e["parametrization"] for e in json.loads(capsys.readouterr().out)}
    assert labels == {f"{p} [{d}/results.jsonl]" for p in ("mup", "sp") for d in (out.name, "other")}
    assert (tmp_path / "two.png").stat().st_size > 10_000
    assert main(["plot", files[0], files[0], "-o", "none"]) == 2
    assert "the same results file is given twice" in capsys.readouterr().err


def rows_from(table, par="mup", opt="adamw", diverged=()):
    lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    out = []
    for w, losses in table.items():
        for lr, loss in zip(lrs, losses, strict=True):
            d = (w, lr) in diverged
            out.append(
                {
                    "width": w,
                    "lr": lr,
                    "parametrization": par,
                    "optimizer": opt,
                    "status": "diverged" if d else "ok",
                    "diverged": d,
                    "final_val_loss": None if d else loss,
                }
            )
    return out


def test_summary_optimum_drift_and_transfer():
    mup = rows_from(
        {128: [3.0, 2.9, 2.8, 2.85, 3.0], 256: [2.9, 2.8, 2.7, 2.71, 2.9], 512: [2.8, 2.7, 2.61, 2.6, 2.8]}
    )
    sp = rows_from(
        {128: [3.0, 2.9, 2.8, 2.85, 3.0], 256: [2.8, 2.7, 2.9, 3.0, 3.1], 512: [2.6, 2.7, 2.9, 3.2, 9.9]},
        par="sp",
        diverged={(512, 1.6e-2)},
    )
    s = {e["parametrization"]: e for e in plot.summarize(mup + sp)}
    m = s["mup"]
    assert [m["best"][w]["lr"] for w in (128, 256, 512)] == [4e-3, 4e-3, 8e-3]
    assert m["shift"] == {128: 0, 256: 0, 512: 1} and m["drift_steps"] == 1
    assert m["transfer"]["lr"] == 4e-3 and m["transfer"]["gap_pct"] == pytest.approx(100 * (2.61 / 2.6 - 1))
    p = s["sp"]
    assert p["shift"] == {128: 0, 256: -1, 512: -2} and p["drift_steps"] == 2
    assert p["best"][512]["edge"] and p["best"][512]["diverged"] == 1
    text = plot.text(plot.summarize(mup + sp))
    assert "drift of the optimum across widths: 1 grid steps" in text and "grid edge" in text
    assert "+0.38%" in text
    md = plot.markdown(plot.summarize(mup + sp))
    assert "| mup | adamw | 512 | 0.008 | 2.6000 | +1 | 0 |" in md


def test_summary_names_widths_where_every_lr_diverged(tmp_path):
    lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    rows = rows_from(
        {128: [3.0, 2.9, 2.8, 2.85, 3.0], 256: [2.9, 2.8, 2.7, 2.71, 2.9], 512: [0.0] * 5},
        opt="sgd",
        diverged={(512, lr) for lr in lrs} | {(256, lr) for lr in lrs[1:]},
    )
    (e,) = plot.summarize(rows)
    assert e["lost"] == [512] and e["drift_steps"] == 2  # over the widths that trained: 128 and 256
    assert "no lr trained at width 512" in plot.text([e])
    assert "| mup | sgd | 2; no lr trained at width 512 |" in plot.markdown([e])
    plot.plot(rows, tmp_path / "p.png")


def test_seeds_are_a_grid_axis_and_cells_average_them(tmp_path):
    sets = ["sweep.seeds=[0,1]", "sweep.widths=[32]", "sweep.lrs.adamw=[0.01]"]
    base, grid = load_sweep(None, "tiny", sets)
    names = sorted(Path(t.config.out).name for t in trials(base, grid))
    assert names == [f"{p}_adamw_w32_lr0.01{s}" for p in ("mup", "sp") for s in ("", "_s1")]
    assert len({t.key for t in trials(base, grid)}) == 4  # the seed is part of the trial's identity
    for bad in ("3", "[]", "[0, 0]", "[true]"):
        with pytest.raises(ValueError, match="sweep.seeds: expected a non-empty list of distinct integers"):
            load_sweep(None, "tiny", [f"sweep.seeds={bad}"])
    # two seeds: the cell's loss is their mean; one diverged seed makes the cell diverged
    seed0 = rows_from({128: [3.0, 2.9, 2.8, 2.85, 3.0], 512: [2.8, 2.7, 2.60, 2.64, 2.8]})
    seed1 = rows_from(
        {128: [3.0, 2.9, 2.95, 2.85, 3.0], 512: [2.8, 2.7, 2.64, 2.5, 2.8]}, diverged={(512, 1.6e-2)}
    )
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({**r, "seed": 1}) + "\n" for r in seed1))
    with path.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in seed0))  # no seed field: seed 0
    rows = plot.read_results(path)
    assert len(rows) == 20
    (e,) = plot.summarize(rows)
    assert e["seeds"] == 2 and e["best"][128]["lr"] == 8e-3 and e["best"][128]["loss"] == pytest.approx(2.85)
    assert e["best"][512]["lr"] == 8e-3 and e["best"][512]["loss"] == pytest.approx(2.57)
    assert e["best"][512]["diverged"] == 1 and e["transfer"]["gap_pct"] == pytest.approx(0.0)
    assert "mean over 2 seeds per cell" in plot.text([e])
    plot.plot(rows, tmp_path / "p.png")


def test_plot_cli_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "none.jsonl")]) == 2
    assert "no results file" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"width": 1}\n')
    assert main(["plot", str(tmp_path / "bad.jsonl"), "-o", "none"]) == 2
    assert "bad.jsonl:1: missing lr" in capsys.readouterr().err


def test_plot_names_the_trials_it_leaves_out(tmp_path, capsys):
    rows = rows_from({64: [5.0, 4.0, 4.5, 5.0, 6.0], 128: [4.8, 3.9, 4.4, 5.0, 6.0]})
    rows.append({**rows[0], "width": 256, "status": "error", "final_val_loss": None, "error": "exit code 1"})
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(path), "-o", "none"]) == 0
    assert "1 trial(s) ended in an error and are left out: mup adamw width 256" in capsys.readouterr().err
