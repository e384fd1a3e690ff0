"""The coordinate check: predictions from the engine against slopes measured on generated models."""

import json

import pytest
import torch

from mudelta.runtime import coord
from mudelta.runtime.cli import main


def test_mlp_mup_passes_every_node():
    r = coord.coord_check("mlp", {}, widths=(64, 128, 256, 512, 1024), steps=3, optimizer="adamw",
                          progress=False)
    failed = [(n.name, n.step, n.predicted, round(n.measured, 3)) for n in r["nodes"] if not n.passed]
    assert failed == []
    # init, and the change after each of the 3 steps, for every hidden node and the logits
    assert {n.step for n in r["nodes"]} == {0, 1, 2, 3}
    assert {n.name for n in r["nodes"]} == {"h0", "a0", "h1", "a1", "h2", "a2", "logits"}


def test_transformer_mup_sgd_passes_every_node():
    # SGD's first steps follow the gradients at init: q and k move along each other only by their own
    # (n^-1/2 short) updates, so the attention scores change by n^1/2; the engine predicts it.
    r = coord.coord_check("transformer", {"layers": "2"}, steps=3, optimizer="sgd", progress=False)
    failed = [(n.name, n.step, n.predicted, round(n.measured, 3)) for n in r["nodes"] if not n.passed]
    assert failed == []
    assert {n.predicted for n in r["nodes"] if n.name == "l0_attn_scores" and n.step} == {0.5}


def test_sp_blow_up_is_predicted_for_the_mlp():
    # SP (fan-in init, one LR): after an Adam step the hidden pre-activations move by n^1 (TP4/TP5). Two
    # terms compete (Delta W x ~ n, W Delta x ~ n^1/2): the n^1 one wins clearly from width 256 on.
    r = coord.coord_check("mlp", {}, widths=(256, 512, 1024, 2048, 4096), steps=1, optimizer="adamw",
                          parametrization="sp", lr=1e-4, progress=False)
    by = {(n.name, n.step): n for n in r["nodes"]}
    assert by["h1", 1].predicted == 1 and by["h1", 1].passed
    assert by["a1", 1].predicted == 1 and by["a1", 1].passed
    assert all(by[f"h{i}", 0].passed for i in range(3))  # fan-in init keeps every layer Theta(1) at init


def test_cli_json_and_plot(tmp_path, capsys):
    png = tmp_path / "cc.png"
    code = main(["coord-check", "mlp", "--widths", "32,64,128", "--steps", "1", "--format", "json",
                 "--plot", str(png)])
    data = json.loads(capsys.readouterr().out)
    assert {"spec", "optimizer", "parametrization", "widths", "nodes"} <= set(data)
    assert data["widths"] == [32, 64, 128]
    node = data["nodes"][0]
    assert {"name", "step", "predicted", "measured", "pass"} <= set(node)
    assert isinstance(node["predicted"], float) and isinstance(node["measured"], float)
    assert code == (0 if all(n["pass"] for n in data["nodes"]) else 1)
    assert png.stat().st_size > 1000


def test_default_plot_name_carries_the_options_and_small_widths_warn(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["coord-check", "mlp", "--widths", "8,16", "--steps", "1", "--set", "layers=3", "--quiet"]
    assert main(args) in (0, 1)
    out, err = capsys.readouterr()
    assert (tmp_path / "coord_mlp_mup_adamw_layers=3.png").stat().st_size > 1000 and "plot: coord_mlp" in out
    assert "warning: widths from 8" in err and "coord check mlp: width" not in err  # --quiet: no progress


def test_a_plot_path_that_cannot_be_written_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(coord, "coord_check", lambda *a, **k: pytest.fail("measured before the path check"))
    for path, message in ((tmp_path / "no" / "x.png", "no folder"), (tmp_path / "x.txt", "expected a .png"),
                          (tmp_path, "expected a .png"), (tmp_path / "d.png", "a folder, not a file")):
        (tmp_path / "d.png").mkdir(exist_ok=True)
        assert main(["coord-check", "mlp", "--widths", "32,64", "--plot", str(path)]) == 2
        assert message in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "no" / "p.png")]) == 2
    assert "no folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [({"widths": (64,)}, "at least two different widths"), ({"widths": (64, 64)}, "at least two different"),
     ({"widths": (64, 64, 128)}, "a width is given twice"), ({"steps": -1}, "--steps must be an integer"),
     ({"seeds": 0}, "--seeds must be"), ({"batch": 0}, "--batch must be"), ({"seq": 0}, "--seq must be"),
     ({"lr": -1.0}, "--lr must be a positive number")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        coord.coord_check("mlp", {}, **{"widths": (64, 128), **kwargs}, progress=False)


def test_base_width_batch_and_seq_are_recorded(capsys):
    # widths far above the base are measured at the same base (every rule is 1 at base_width, not at widths[0])
    code = main(["coord-check", "mlp", "--widths", "128,256", "--base-width", "64", "--steps", "1",
                 "--batch", "2", "--seq", "96", "--format", "json", "--plot", "none"])
    data = json.loads(capsys.readouterr().out)
    assert (data["base_width"], data["batch"], data["seq"]) == (64, 2, 96)
    assert code in (0, 1)
    r = coord.coord_check("mlp", {}, widths=(64, 128), steps=1, progress=False)
    assert (r["base_width"], r["batch"], r["seq"]) == (64, 4, 64)


def test_device_is_checked_and_recorded():
    r = coord.coord_check("mlp", {}, widths=(32, 64), steps=1, progress=False, device="cpu")
    assert r["device"] == "cpu"
    with pytest.raises(ValueError, match="device 'gpu0'"):
        coord.coord_check("mlp", {}, widths=(32, 64), progress=False, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            coord.coord_check("mlp", {}, widths=(32, 64), progress=False, device="cuda")


def test_float64_check_runs_the_same_model_in_double():
    # same weights (initialised in float32 on the CPU), so float64 moves the sizes only by float32 rounding
    r32, r64 = (coord.coord_check("gdn", {"layers": "1"}, widths=(32, 64), steps=1, progress=False, batch=1, seq=16,
                                  dtype=dt) for dt in ("float32", "float64"))
    assert (r32["dtype"], r64["dtype"]) == ("float32", "float64")
    for a, b in zip(r32["nodes"], r64["nodes"], strict=True):
        assert a.name == b.name and a.rms == pytest.approx(b.rms, rel=1e-3), a.name
    with pytest.raises(ValueError, match="float32 or float64"):
        coord.coord_check("mlp", {}, widths=(32, 64), progress=False, dtype="bfloat16")
