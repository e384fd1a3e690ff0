import pytest
from mudelta.runtime import data


@pytest.fixture(scope="session")
def byte_data(tmp_path_factory):
    """Stdlib bytes (a few files) as prepared token shards."""
    out = tmp_path_factory.mktemp("data") / "bytes"
    data.prepare(None, out, "bytes", val_fraction=0.05, pattern="[a-c]*.py", progress=False)
    return out


def tiny_overrides(data_path, out, **extra):
    """A one-layer transformer at width 32 that trains in about a second."""
    base = {
        "data.path": str(data_path),
        "out": str(out),
        "model.spec": "transformer",
        "model.options.layers": 1,
        "model.width": 32,
        "model.base_width": 32,
        "data.seq": 32,
        "data.batch": 4,
        "train.steps": 6,
        "train.warmup": 2,
        "train.lr": 1e-2,
        "train.eval_every": 3,
        "train.eval_batches": 2,
        "train.log_every": 1,
    }
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]
