"""Two processes on gloo (DDP, and FSDP2) get the losses of one process with the same global batch, and resume
bit-exactly."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import tiny_overrides


def train(byte_data, out, procs, *extra):
    sets = [x for o in tiny_overrides(byte_data, out, **{"train.device": "cpu"}) for x in ("--set", o)]
    cmd = ["-m", "mudelta.runtime.cli", "train", "--quiet", *sets, *extra]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss")) for r in rows]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(byte_data, tmp_path, mode):
    one = train(byte_data, tmp_path / "one", 1)
    two = train(byte_data, tmp_path / "two", 2, *(["--fsdp"] if mode == "fsdp" else []))
    assert len(one) == len(two) == 8  # 6 train losses, 2 validations
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 2e-6
    # the checkpoint written by rank 0 holds the full model
    assert (tmp_path / "two" / "checkpoints" / "step_00000006" / "model.safetensors").exists()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_resume_bit_exactly(byte_data, tmp_path, mode):
    flags = ["--set", "train.ckpt_every=3", *(["--fsdp"] if mode == "fsdp" else [])]
    whole = train(byte_data, tmp_path / "a", 2, *flags)
    b = tmp_path / "b"  # stopped after step 3: its last checkpoint gone, resumed from the one at step 3
    shutil.copytree(tmp_path / "a", b)
    shutil.rmtree(b / "checkpoints" / "step_00000006")
    (b / "checkpoints" / "latest").write_text("step_00000003\n")
    assert train(byte_data, b, 2, *flags, "--resume") == whole
