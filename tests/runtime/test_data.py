"""`mudelta data prepare`: byte and BPE shards, the header, a deterministic split, clear errors."""

import json
import sys
import types

import numpy as np
import pytest
from mudelta.runtime import data
from mudelta.runtime.cli import main


def corpus(tmp_path, n=12):
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    for i in range(n):
        folder = src / "sub" if i % 2 else src
        (folder / f"doc{i:02d}.txt").write_text(
            f"document {i}: " + "the quick brown fox jumps. " * (20 + i) + "\n"
        )
    return src


def test_bytes_shards_and_header(tmp_path):
    src = corpus(tmp_path)
    h = data.prepare([str(src)], tmp_path / "out", "bytes", val_fraction=0.2, progress=False)
    assert h["tokenizer"] == {"kind": "bytes", "vocab_size": 256, "eot": None, "file": None}
    assert h["dtype"] == "uint16"
    total = sum(p.stat().st_size for p in src.rglob("*.txt"))
    assert h["splits"]["train"]["tokens"] + h["splits"]["val"]["tokens"] == total
    assert h["splits"]["train"]["documents"] + h["splits"]["val"]["documents"] == 12
    assert h["splits"]["val"]["documents"] >= 1 and h["splits"]["train"]["documents"] >= 1
    assert h["sources"][0]["documents"] == 12 and len(h["sources"][0]["sha256"]) == 64
    on_disk = json.loads((tmp_path / "out" / "header.json").read_text())
    assert on_disk == h
    td = data.TokenData(tmp_path / "out")
    shard = td.split("train")[0]
    assert shard.dtype == np.uint16 and bytes(shard[:9].astype(np.uint8)).startswith(b"document")
    x, y = data.Batches(td, 4, 16, seed=0)(0)
    assert x.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all()


def test_a_failed_prepare_keeps_the_old_data(tmp_path, monkeypatch):
    src, out = corpus(tmp_path), tmp_path / "out"
    data.prepare([str(src)], out, "bytes", val_fraction=0.2, progress=False)
    (out / "NOTES.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_bpe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.prepare([str(src)], out, "bpe", vocab_size=300, val_fraction=0.2, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # and no half-built folder in it
    with pytest.raises(KeyboardInterrupt):
        data.prepare([str(src)], tmp_path / "new", "bpe", vocab_size=300, progress=False)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["corpus", "out"]  # nor an empty new one
    monkeypatch.undo()
    h = data.prepare([str(src)], out, "bpe", vocab_size=300, val_fraction=0.2, progress=False)
    assert json.loads((out / "header.json").read_text()) == h and (out / "NOTES.txt").read_text() == "mine"
    with pytest.raises(data.DataError, match="--vocab-size 99999999999: at most"):
        data.prepare([str(src)], out, "bpe", vocab_size=99999999999, progress=False)


def test_a_damaged_header_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    h = data.prepare([str(corpus(tmp_path))], out, "bytes", val_fraction=0.2, progress=False)
    (out / "header.json").write_text(json.dumps({k: v for k, v in h.items() if k != "tokenizer"}))
    with pytest.raises(data.DataError, match="header.json: damaged header"):
        data.TokenData(out)
    (out / "header.json").write_text(json.dumps({**h, "tokenizer": {**h["tokenizer"], "vocab_size": 16}}))
    with pytest.raises(data.DataError, match=r"token id \d+ is not below the header's vocab_size 16"):
        data.TokenData(out).split("train")  # the model's embedding would fail on it, deep inside torch
    assert main(["data", "prepare", str(tmp_path / "corpus"), "--out", str(out), "--vocab-size", "300"]) == 2
    assert "--vocab-size is for --tokenizer bpe" in capsys.readouterr().err


def test_sources_are_read_as_named(tmp_path, capsys):
    src = corpus(tmp_path)
    odd = tmp_path / "weird[1].txt"
    odd.write_text("a file whose name looks like a glob\n" * 20)
    (src / "state.json").write_text("{}")  # a checkpoint-like folder is not a datasets folder
    once = data.prepare([str(src), str(odd)], tmp_path / "a", "bytes", val_fraction=0.2, progress=False)
    twice = data.prepare([str(src), str(odd), str(odd), str(src / "doc00.txt")], tmp_path / "b", "bytes",
                         val_fraction=0.2, progress=False)
    count = lambda h: sum(h["splits"][s]["documents"] for s in ("train", "val"))  # noqa: E731
    assert count(once) == count(twice) == 14  # 12 + state.json + weird[1].txt, each file once
    # a source that adds nothing (its file came through the folder) is in the header, and a warning names it
    assert [(s["source"], s["documents"]) for s in twice["sources"]] == [
        (str(src), 13), (str(odd), 1), (str(src / "doc00.txt"), 0)
    ]
    assert f"source {str(src / 'doc00.txt')!r} adds no document" in capsys.readouterr().err
    fingerprint = lambda name: data.TokenData(tmp_path / name).fingerprint  # noqa: E731
    assert fingerprint("a") == fingerprint("b")  # the same tokens: resuming on either is the same data
    data.prepare([str(src)], tmp_path / "a", "bytes", val_fraction=0.2, progress=False)
    assert f"{tmp_path / 'a'} holds a dataset; it is replaced" in capsys.readouterr().err


def test_split_is_a_function_of_the_documents(tmp_path):
    src = corpus(tmp_path)
    a = data.prepare([str(src / "sub"), str(src / "*.txt")], tmp_path / "a", "bytes", 0.3, progress=False)
    b = data.prepare([str(src / "*.txt"), str(src / "sub")], tmp_path / "b", "bytes", 0.3, progress=False)
    # the same documents land in val whatever the order of the sources
    assert a["splits"]["val"]["tokens"] == b["splits"]["val"]["tokens"]
    va = sorted(bytes(data.TokenData(tmp_path / "a").split("val")[0].astype(np.uint8)).split(b"\n"))
    vb = sorted(bytes(data.TokenData(tmp_path / "b").split("val")[0].astype(np.uint8)).split(b"\n"))
    assert va == vb
    again = data.prepare([str(src / "sub"), str(src / "*.txt")], tmp_path / "a", "bytes", 0.3, progress=False)
    assert again == a


def test_bpe(tmp_path, capsys):
    src = corpus(tmp_path)
    h = data.prepare([str(src)], tmp_path / "bpe", "bpe", vocab_size=300, val_fraction=0.2, progress=False)
    tok = h["tokenizer"]
    assert tok["kind"] == "bpe" and 257 < tok["vocab_size"] <= 300 and tok["eot"] is not None
    assert (tmp_path / "bpe" / "tokenizer.json").exists()
    ids = data.TokenData(tmp_path / "bpe").split("train")[0]
    assert ids.max() < tok["vocab_size"]
    assert (ids == tok["eot"]).sum() == h["splits"]["train"]["documents"]  # one end-of-text per document
    assert h["splits"]["train"]["tokens"] < sum(p.stat().st_size for p in src.rglob("*.txt"))  # it compresses
    capsys.readouterr()
    big = data.prepare([str(src)], tmp_path / "big", "bpe", vocab_size=5000, val_fraction=0.2, progress=False)
    assert big["tokenizer"]["vocab_size"] < 5000
    learned = big["tokenizer"]["vocab_size"]
    assert f"the BPE learned {learned} tokens of the 5000 asked for" in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(data.DataError, match="no text in .*empty"):
        data.prepare([str(tmp_path / "empty")], tmp_path / "o", progress=False)
    with pytest.raises(data.DataError, match="missing.*no such file"):
        data.prepare([str(tmp_path / "missing")], tmp_path / "o", progress=False)
    with pytest.raises(data.DataError, match="no files match"):
        data.prepare([str(tmp_path / "*.nothing")], tmp_path / "o", progress=False)
    with pytest.raises(data.DataError, match="vocab-size 100"):
        data.prepare([str(tmp_path)], tmp_path / "o", "bpe", vocab_size=100, progress=False)
    with pytest.raises(data.DataError, match="no header.json"):
        data.TokenData(tmp_path / "empty")
    assert main(["data", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    src = corpus(tmp_path)

    def walk(top, onerror=None, **kwargs):  # os.walk on a folder it may not list (chmod 0 does not stop root)
        onerror(PermissionError(13, "Permission denied", str(src / "sub")))
        yield from ()

    monkeypatch.setattr(data.os, "walk", walk)
    with pytest.raises(data.DataError, match=f"cannot read the folder {src / 'sub'}: Permission denied"):
        data.prepare([str(src)], tmp_path / "o", progress=False)


def test_a_datasets_folder_is_read_by_rows(tmp_path, monkeypatch):
    """save_to_disk's layout, read through `datasets.load_from_disk` (a stand-in here: CI does not install
    the optional `datasets`)."""

    class Rows(list):
        column_names = ["text", "label"]

    class DatasetDict(dict):
        pass

    rows = Rows({"text": f"row {i}: " + "words and more words. " * 10, "label": i} for i in range(6))
    fake = types.ModuleType("datasets")
    fake.DatasetDict, fake.load_from_disk = DatasetDict, lambda path: DatasetDict(test=Rows(), train=rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    h = data.prepare([str(folder)], tmp_path / "o", val_fraction=0.3, progress=False)
    assert h["sources"][0]["documents"] == 6  # the train split's rows, one document each
    assert h["splits"]["train"]["tokens"] + h["splits"]["val"]["tokens"] == sum(len(r["text"]) for r in rows)
    with pytest.raises(data.DataError, match="no column 'body' .*columns: text, label.*--text-column"):
        data.prepare([str(folder)], tmp_path / "p", text_column="body", progress=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(data.DataError, match="a Hugging Face datasets folder, but `datasets` is not install"):
        data.prepare([str(folder)], tmp_path / "q", progress=False)


def test_cli_default_source_is_the_stdlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "CHUNK", 1 << 20)
    assert main(["data", "prepare", "--out", str(tmp_path / "std"), "--pattern", "a*.py", "--quiet"]) == 0
    h = json.loads((tmp_path / "std" / "header.json").read_text())
    assert h["sources"][0]["source"].startswith("stdlib:") and h["splits"]["train"]["tokens"] > 10_000
