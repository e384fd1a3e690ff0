"""Real text that exists on every machine: the Python standard library source of the running interpreter."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch


def stdlib_bytes(limit: int = 4 << 20) -> bytes:
    """Up to `limit` bytes of the standard library's .py files, in a fixed (sorted) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no Python source files under {root}: cannot build a text batch")
    out, size = [], 0
    for path in files:
        data = path.read_bytes()
        out.append(data)
        size += len(data)
        if size >= limit:
            break
    return b"".join(out)[:limit]


def byte_batch(batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of byte tokens (inputs, next-byte targets) from the standard library source."""
    data = torch.frombuffer(bytearray(stdlib_bytes()), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - seq - 1, (batch,), generator=g)
    rows = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]
