"""Text data: the Python standard library source of the running interpreter (real text on every machine),
`mudelta data prepare` (sources -> tokenizer -> token shards), and the batches training reads from them."""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------------------------------------------------
# `mudelta data prepare`: text sources -> tokenizer -> token shards (numpy memmaps) with a JSON header

FORMAT = "mudelta-tokens/1"
MAX_VOCAB = 1 << 20  # a BPE vocabulary at most this large
EOT = "<|endoftext|>"
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "node_modules"}
CHUNK = 1 << 20  # a file larger than this is split at line ends into documents of about this size


class DataError(ValueError):
    """A source, a tokenizer option or a prepared data folder is unusable; the message says which and why."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _unreadable(exc: OSError):
    raise DataError(f"cannot read the folder {exc.filename}: {exc.strerror or exc}")


def _walk(root: Path, pattern: str) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):  # not a silent gap in the corpus
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        out += [
            Path(dirpath) / f
            for f in sorted(filenames)
            if fnmatch.fnmatch(f, pattern) and not f.startswith(".") and (Path(dirpath) / f).is_file()
        ]  # regular files only: a pipe or socket in the tree would block the read
    return out


def _is_hf_dataset(path: Path) -> bool:
    """save_to_disk's folder: a dataset_dict.json, or state.json beside dataset_info.json and .arrow files."""
    if not path.is_dir():
        return False
    return (path / "dataset_dict.json").exists() or (
        (path / "state.json").exists() and (path / "dataset_info.json").exists() and any(path.glob("*.arrow"))
    )


def _hf_documents(path: Path, column: str):
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(
            f"source {path}: a Hugging Face datasets folder, but `datasets` is not installed "
            "(pip install datasets)"
        ) from None
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        ds = ds[split]
    if column not in ds.column_names:
        raise DataError(
            f"source {path}: no column {column!r} (columns: {', '.join(ds.column_names)}); "
            "pick one with --text-column"
        )
    for i, row in enumerate(ds):
        text = row[column]
        if text:
            yield f"{path}[{i}]", text.encode("utf-8")


def _file_documents(path: Path):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\0" in data[:8192]:
        return  # binary file
    if len(data) <= CHUNK:
        if data:
            yield str(path), data
        return
    start, i = 0, 0
    while start < len(data):
        end = data.find(b"\n", start + CHUNK)
        end = len(data) if end < 0 else end + 1
        yield f"{path}#{i}", data[start:end]
        start, i = end, i + 1


def documents(sources: list[str] | None, pattern: str | None = None, text_column: str = "text"):
    """Yield (source, document id, bytes) for every document of every source, in a fixed order. A source is
    a file, a folder (walked recursively, files matching `pattern`, default all), a glob, or a Hugging Face
    `datasets` folder saved with save_to_disk (one document per row of `text_column`). No sources: the .py
    files of the running interpreter's standard library."""
    if not sources:
        root = stdlib_root()
        for path in _walk(root, pattern or "*.py"):
            for doc_id, data in _file_documents(path):
                yield f"stdlib:{root}", doc_id, data
        return
    seen: set[Path] = set()  # a file named twice (or reached through two sources) is one document
    for source in sources:
        if any(c in source for c in "*?[") and not Path(source).exists():  # an existing name is literal
            paths = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not paths:
                raise DataError(f"source {source!r}: no files match this pattern")
        else:
            path = Path(source)
            if not path.exists():
                raise DataError(f"source {source!r}: no such file or directory")
            if _is_hf_dataset(path):
                for doc_id, data in _hf_documents(path, text_column):
                    yield source, doc_id, data
                continue
            paths = _walk(path, pattern or "*") if path.is_dir() else [path]
            if not paths:
                raise DataError(
                    f"source {source!r}: the folder has no files"
                    + (f" matching {pattern!r}" if pattern else "")
                )
        for p in paths:
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            for doc_id, data in _file_documents(p):
                yield source, doc_id, data


def _source_stats(source: str) -> dict:
    return {"source": source, "documents": 0, "bytes": 0, "sha256": hashlib.sha256()}


def _val_key(data: bytes) -> float:
    """Where a document falls in [0, 1): the split is val when this is below the val fraction."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64


def _bpe(train_docs, vocab_size: int, total: int, progress: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tqdm import tqdm

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    docs = tqdm(train_docs, total=total, desc="train bpe", unit="doc", leave=False, disable=not progress)
    tok.train_from_iterator((d.decode("utf-8", "replace") for d in docs), trainer=trainer, length=total)
    return tok


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.limit = out, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.fh = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self.fh is None or self.shards[-1]["tokens"] >= self.limit:
                self.close()
                name = f"{self.split}-{len(self.shards):05d}.bin"
                self.fh = open(self.out / name, "wb")  # noqa: SIM115 (closed in close())
                self.shards.append({"file": name, "tokens": 0})
            room = self.limit - self.shards[-1]["tokens"]
            part, tokens = tokens[:room], tokens[room:]
            self.fh.write(part.astype(self.dtype).tobytes())
            self.shards[-1]["tokens"] += int(part.size)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def prepare(
    sources: list[str] | None,
    out: str | Path,
    tokenizer: str = "bytes",
    vocab_size: int = 8192,
    val_fraction: float = 0.01,
    pattern: str | None = None,
    text_column: str = "text",
    shard_tokens: int = 1 << 28,
    progress: bool = True,
) -> dict:
    """Tokenize the sources into `out`: {train,val}-NNNNN.bin (token ids, uint16 when the vocabulary fits,
    else uint32) and header.json (written last: its presence means the folder is complete). The split is by
    a hash of each document's bytes, so it does not depend on the order or the number of sources."""
    from tqdm import tqdm

    if tokenizer not in ("bytes", "bpe"):
        raise DataError(f"--tokenizer {tokenizer!r}: expected bytes or bpe")
    if tokenizer == "bpe" and vocab_size <= 257:
        raise DataError(
            f"--vocab-size {vocab_size}: a byte-level BPE needs more than 257 tokens (256 bytes + "
            "the end-of-text token)"
        )
    if tokenizer == "bpe" and vocab_size > MAX_VOCAB:
        raise DataError(f"--vocab-size {vocab_size}: at most {MAX_VOCAB}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction}: expected a number between 0 and 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: a file is in the way (the output is a folder)")
    if (out / "header.json").exists():
        print(f"warning: {out} holds a dataset; it is replaced once this one is complete", file=sys.stderr)
    label = ", ".join(sources) if sources else f"the standard library at {stdlib_root()}"
    docs = {"train": [], "val": []}
    stats = {source: _source_stats(source) for source in sources or []}  # every source named, in order
    it = documents(sources, pattern, text_column)
    for source, doc_id, data in tqdm(it, desc="read", unit="doc", disable=not progress, leave=False):
        key = _val_key(data)
        docs["val" if key < val_fraction else "train"].append((key, data))
        s = stats.setdefault(source, _source_stats(source))
        s["documents"] += 1
        s["bytes"] += len(data)
        s["sha256"].update(hashlib.sha256(doc_id.encode() + b"\0" + data).digest())
    n_docs = len(docs["train"]) + len(docs["val"])
    if n_docs == 0:
        raise DataError(f"no text in {label}: every file is empty or binary")
    if n_docs < 2:
        raise DataError(
            f"only one document in {label}: a train/val split needs at least two (files are "
            f"documents; a file over {CHUNK} bytes is split into several)"
        )
    for s in stats.values():
        if not s["documents"]:
            print(
                f"warning: source {s['source']!r} adds no document: it has no text that an earlier source "
                "did not already give (empty or binary files, empty rows, or files read through another)",
                file=sys.stderr,
            )
    if not docs["val"]:  # the document nearest the threshold goes to val: still a function of the bytes alone
        docs["train"].sort(key=lambda kd: kd[0])
        docs["val"].append(docs["train"].pop(0))
    if not docs["train"]:
        docs["val"].sort(key=lambda kd: kd[0])
        docs["train"].append(docs["val"].pop())
    # built in a hidden folder inside `out` (one filesystem, whatever `out` is mounted on) and moved up at the
    # end, header.json last: a failed or interrupted run leaves the old data as it was; other files stay
    created = not out.exists()
    final, out = out, out / f".preparing-{os.getpid()}"
    final.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        header = _write(docs, out, tokenizer, vocab_size, val_fraction, stats, shard_tokens, progress)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if created and not any(final.iterdir()):
            final.rmdir()
        raise
    (final / "header.json").unlink(missing_ok=True)
    for old in [*final.glob("train-*.bin"), *final.glob("val-*.bin"), final / "tokenizer.json"]:
        old.unlink(missing_ok=True)
    for f in sorted(out.iterdir(), key=lambda f: f.name == "header.json"):
        os.replace(f, final / f.name)
    out.rmdir()
    return header


def _write(docs, out, tokenizer, vocab_size, val_fraction, stats, shard_tokens, progress) -> dict:
    """Tokenizer, shards and header.json (last) of `prepare` in the empty folder `out`."""
    from tqdm import tqdm

    if tokenizer == "bpe":
        tok = _bpe((d for _, d in docs["train"]), vocab_size, len(docs["train"]), progress)
        vocab, eot = tok.get_vocab_size(), tok.token_to_id(EOT)
        if vocab < vocab_size:
            print(
                f"warning: the BPE learned {vocab} tokens of the {vocab_size} asked for: the training text "
                "has no more pairs to merge (the header records the size it has)",
                file=sys.stderr,
            )
        tok.save(str(out / "tokenizer.json"))
    else:
        tok, vocab, eot = None, 256, None
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    header = {
        "format": FORMAT,
        "tokenizer": {
            "kind": tokenizer,
            "vocab_size": vocab,
            "eot": eot,
            "file": "tokenizer.json" if tok else None,
        },
        "dtype": np.dtype(dtype).name,
        "val_fraction": val_fraction,
        "splits": {},
        "sources": [{**s, "sha256": s["sha256"].hexdigest()} for s in stats.values()],
    }
    for split in ("train", "val"):
        writer = _ShardWriter(out, split, dtype, shard_tokens)
        items = docs[split]
        bar = tqdm(
            total=sum(len(d) for _, d in items),
            desc=f"tokenize {split}",
            unit="B",
            unit_scale=True,
            disable=not progress,
            leave=False,
        )
        for i in range(0, len(items), 256):
            batch = [d for _, d in items[i : i + 256]]
            if tok is None:
                ids = np.frombuffer(b"".join(batch), dtype=np.uint8)
            else:
                enc = tok.encode_batch([d.decode("utf-8", "replace") for d in batch])
                ids = np.fromiter((t for e in enc for t in (*e.ids, eot)), dtype=np.int64)
            writer.write(ids)
            bar.update(sum(len(d) for d in batch))
        bar.close()
        writer.close()
        header["splits"][split] = {
            "documents": len(items),
            "tokens": sum(s["tokens"] for s in writer.shards),
            "shards": writer.shards,
        }
    (out / "header.json").write_text(json.dumps(header, indent=1) + "\n")
    return header


class TokenData:
    """A prepared data folder: token windows of `seq + 1` tokens (inputs and next-token targets) over the
    memmapped shards of one split."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        head = self.path / "header.json"
        if not head.exists():
            hint = " (incomplete: `mudelta data prepare` did not finish)" if self.path.is_dir() else ""
            raise DataError(f"data {self.path}: no header.json{hint}; create it with `mudelta data prepare`")
        try:
            self.header = json.loads(head.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"data {head}: not valid JSON ({exc})") from None
        if not isinstance(self.header, dict) or self.header.get("format") != FORMAT:
            got = self.header.get("format") if isinstance(self.header, dict) else self.header
            raise DataError(f"data {head}: format {got!r}, expected {FORMAT!r}")
        try:
            self.vocab_size = int(self.header["tokenizer"]["vocab_size"])
            self.dtype = np.dtype(self.header["dtype"])
            shards = [s for name in ("train", "val") for s in self.header["splits"][name]["shards"]]
            if not all(isinstance(s["file"], str) and int(s["tokens"]) >= 0 for s in shards):
                raise ValueError("a shard without a file name or token count")
        except (KeyError, TypeError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise DataError(f"data {head}: damaged header ({why}); prepare it again") from None
        # what the tokens are (sources, tokenizer, split): a checkpoint records it, and a resume compares
        # (the sources by content: the same files reached by another path are the same data, and a source
        # that added no document is no part of it)
        sources = [s for s in self.header.get("sources", []) if s.get("documents", 1)]
        body = {**self.header, "sources": sorted(s.get("sha256", "") for s in sources)}
        self.fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        self._maps: dict[str, list[np.ndarray]] = {}

    def split(self, name: str) -> list[np.ndarray]:
        if name not in self._maps:
            maps = []
            for shard in self.header["splits"][name]["shards"]:
                f = self.path / shard["file"]
                size = f.stat().st_size if f.exists() else -1
                if size != shard["tokens"] * self.dtype.itemsize:
                    raise DataError(
                        f"data {f}: expected {shard['tokens']} tokens "
                        f"({shard['tokens'] * self.dtype.itemsize} bytes), found "
                        f"{'no file' if size < 0 else f'{size} bytes'}; prepare the data again"
                    )
                tokens = np.memmap(f, dtype=self.dtype, mode="r")
                top = int(tokens.max()) if tokens.size else -1  # an id past the vocab breaks the model
                if top >= self.vocab_size:
                    raise DataError(
                        f"data {f}: token id {top} is not below the header's vocab_size {self.vocab_size} "
                        "(a damaged header or shard); prepare the data again"
                    )
                maps.append(tokens)
            self._maps[name] = maps
        return self._maps[name]

    def windows(self, name: str, seq: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The shards and the cumulative count of whole windows of seq + 1 tokens (stride seq) per shard."""
        maps = self.split(name)
        counts = np.array([max(0, (m.size - 1) // seq) for m in maps], dtype=np.int64)
        if counts.sum() == 0:
            raise DataError(
                f"data {self.path}: the {name} split has {sum(m.size for m in maps)} tokens, fewer "
                f"than one sequence of {seq + 1}"
            )
        return maps, np.cumsum(counts)

    def rows(self, name: str, seq: int, index: np.ndarray) -> torch.Tensor:
        maps, cum = self.windows(name, seq)
        shard = np.searchsorted(cum, index, side="right")
        out = np.empty((len(index), seq + 1), dtype=np.int64)
        for r, (s, i) in enumerate(zip(shard, index, strict=True)):
            start = (i - (cum[s - 1] if s else 0)) * seq
            out[r] = maps[s][start : start + seq + 1]
        return torch.from_numpy(out)


class Batches:
    """Training batches as a pure function of the step: every epoch is a fresh permutation (seeded by seed and
    epoch) of the non-overlapping training windows; step s takes the next `batch` of them. Rank r of W takes
    rows [r B/W, (r+1) B/W) of the global batch, so the global batch does not depend on the world size."""

    def __init__(self, data: TokenData, batch: int, seq: int, seed: int, rank: int = 0, world: int = 1):
        if batch % world:
            raise DataError(f"global batch {batch} is not divisible by the {world} processes")
        self.data, self.batch, self.seq, self.seed, self.rank, self.world = (
            data,
            batch,
            seq,
            seed,
            rank,
            world,
        )
        self.n = int(data.windows("train", seq)[1][-1])
        self._perm: tuple[int, np.ndarray] | None = None

    def position(self, step: int) -> dict:
        start = step * self.batch
        return {"epoch": start // self.n, "window": start % self.n, "windows": self.n}

    def _index(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g).numpy())
        return int(self._perm[1][i])

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.batch // self.world
        first = step * self.batch + self.rank * local
        rows = self.data.rows("train", self.seq, np.array([self._index(first + j) for j in range(local)]))
        return rows[:, :-1], rows[:, 1:]


def val_batches(data: TokenData, batch: int, seq: int, count: int, rank: int = 0, world: int = 1):
    """The first `count` batches of consecutive validation windows (fewer when the split is short); the same
    every evaluation and every run."""
    total = int(data.windows("val", seq)[1][-1])
    local = batch // world
    out = []
    for b in range(count):
        idx = np.arange(b * batch + rank * local, b * batch + (rank + 1) * local)
        if idx[-1] >= total:
            break
        rows = data.rows("val", seq, idx)
        out.append((rows[:, :-1], rows[:, 1:]))
    if not out:
        raise DataError(
            f"data {data.path}: the val split has {total} windows of {seq + 1} tokens, fewer than "
            f"one batch of {batch}; lower the batch or prepare more data"
        )
    return out
