"""Triton kernels run by Triton's interpreter (TRITON_INTERPRET=1) on CPU, against the float64 recurrence.

The interpreter must be chosen before triton is first imported, so the cases run in one subprocess
(interp_worker.py); each case is then checked as its own test here."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from interp_worker import CASES  # noqa: E402
from mudelta.kernels.testing import TOL  # noqa: E402

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "interp_worker.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    assert proc.returncode == 0 and marker, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(marker[-1][len("@@RESULT@@") :])


@pytest.mark.parametrize("case", list(CASES))
def test_triton_interpreted(results, case):
    import torch

    err = results[case]
    assert "error" not in err, err.get("error")
    dtype = getattr(torch, CASES[case][5])
    decode = CASES[case][7].get("decode", False)
    expected = {"o", "ht"} if decode else {"o", "ht", "q", "k", "v", "g", "beta"}
    assert expected <= set(err)
    for name, e in err.items():
        assert e < TOL[dtype][name], (case, name, e)
