"""Corpus reading, a cached byte-level BPE tokenizer, cached token ids, and deterministic batches.

Sources (``resolve_source``):
  * ``sample``  - the small embedded sample in python/sample_data/ (default; works on a fresh clone);
  * ``shared``  - the full corpus in ../shared/data (two train shards, held-out valid/test);
  * a path      - a text or .xz file (the last ~2% becomes the validation split), or a folder holding
                  ``*train*`` and ``*valid*`` text/xz files.

The tokenizer is trained once on the training text only and cached; token ids are cached as .npy
(uint16 when the vocabulary allows) and memory-mapped, so a second run starts in seconds. The cache key
covers the files' paths, sizes and mtimes, the vocabulary size and the tokenizer's training budget.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE_DIR = HERE / "sample_data"
SHARED_DIR = REPO.parent / "shared" / "data"
DEFAULT_CACHE = REPO / ".cache" / "llr_data"
EOT = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".xz", ".text", ".md")


@dataclass
class Source:
    """Where the text comes from: training files and held-out validation files (or a split fraction)."""

    name: str
    train: list[Path]
    valid: list[Path] = field(default_factory=list)
    valid_fraction: float = 0.0  # > 0: no valid files, hold out this tail fraction of the training text


def resolve_source(spec: str, data_dir: str | None = None) -> Source:
    """Turn ``--data`` (sample | shared | file | folder) into a Source, with a clear error if missing."""
    if spec == "sample":
        return Source(
            "sample",
            [SAMPLE_DIR / "enwiki_sample_train.txt.xz"],
            [SAMPLE_DIR / "enwiki_sample_valid.txt.xz"],
        )
    if spec == "shared":
        d = Path(data_dir) if data_dir else SHARED_DIR
        train = sorted(d.glob("enwiki_train_*.txt.xz"))
        valid = d / "enwiki_valid.txt.xz"
        if not train or not valid.exists():
            raise FileNotFoundError(
                f"--data shared: no enwiki_train_*.txt.xz / enwiki_valid.txt.xz in {d}. "
                "Pass --data-dir pointing at the corpus folder, or use --data sample (the embedded sample)."
            )
        return Source("shared", train, [valid])
    p = Path(spec).expanduser()
    if p.is_dir():
        train = sorted(x for x in p.iterdir() if "train" in x.name and x.name.endswith(TEXT_SUFFIXES))
        valid = sorted(x for x in p.iterdir() if "valid" in x.name and x.name.endswith(TEXT_SUFFIXES))
        if not train:
            raise FileNotFoundError(f"--data {p}: the folder holds no '*train*' .txt/.xz file")
        return Source(p.name, train, valid, 0.0 if valid else 0.02)
    if p.is_file():
        return Source(p.stem, [p], [], 0.02)
    raise FileNotFoundError(
        f"--data {spec!r}: not 'sample', 'shared', a file or a folder. "
        "Pass a .txt/.txt.xz file, a folder with *train*/*valid* files, 'shared' (../shared/data) or 'sample'."
    )


def read_text(path: Path, max_chars: int | None = None) -> str:
    """Read a UTF-8 text file, transparently decompressing .xz with the standard library."""
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return f.read(max_chars) if max_chars else f.read()


def _file_key(paths: list[Path], *extra: object) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (lossless round trip, no unknown tokens) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def lines() -> Iterator[str]:
        for t in texts:
            yield from t.splitlines(keepends=True)

    tok.train_from_iterator(lines(), trainer=trainer)
    return tok


def encode(tok, text: str, batch_lines: int = 4096) -> np.ndarray:
    """Token ids of ``text``; lines are encoded independently (in parallel) and concatenated."""
    lines = text.splitlines(keepends=True)
    out: list[np.ndarray] = []
    for i in range(0, len(lines), batch_lines):
        for enc in tok.encode_batch(lines[i : i + batch_lines], add_special_tokens=False):
            out.append(np.asarray(enc.ids, dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- dataset


@dataclass
class TokenData:
    """Token ids of the train and validation splits (memory-mapped) plus the tokenizer."""

    train: np.ndarray
    valid: np.ndarray
    tokenizer: object
    vocab_size: int
    source: str
    info: dict

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of the training tokens: (inputs, targets), each (batch_size, seq_len) int64."""
        hi = len(self.train) - seq_len - 1
        if hi <= 0:
            raise ValueError(f"training split has {len(self.train)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        starts = rng.integers(0, hi, size=batch_size)
        x = np.stack([self.train[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        t = torch.from_numpy(x)
        return t[:, :-1], t[:, 1:]

    def valid_batches(self, batch_size: int, seq_len: int, max_windows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation set: the first ``max_windows`` non-overlapping windows of the valid split."""
        n = min(max_windows, (len(self.valid) - 1) // seq_len)
        if n <= 0:
            raise ValueError(f"validation split has {len(self.valid)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        x = np.stack([self.valid[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]).astype(np.int64)
        t = torch.from_numpy(x)
        return [(t[i : i + batch_size, :-1], t[i : i + batch_size, 1:]) for i in range(0, n, batch_size)]


def load_data(
    spec: str = "sample",
    vocab_size: int = 8192,
    *,
    data_dir: str | None = None,
    cache_dir: str | Path | None = None,
    tokenizer_train_chars: int = 50_000_000,
    log=print,
) -> TokenData:
    """Tokenize a source (train the tokenizer first if needed), reusing the on-disk cache when valid."""
    src = resolve_source(spec, data_dir)
    cache = Path(cache_dir or os.environ.get("LLR_CACHE_DIR", DEFAULT_CACHE))
    cache.mkdir(parents=True, exist_ok=True)
    tok_key = _file_key(src.train, vocab_size, tokenizer_train_chars, src.valid_fraction, "bytebpe-v1")
    tok_path = cache / f"tokenizer-{src.name}-{vocab_size}-{tok_key}.json"
    ids_path = {s: cache / f"ids-{src.name}-{vocab_size}-{tok_key}-{s}.npy" for s in ("train", "valid")}
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    texts: dict[str, str] | None = None

    def get_texts() -> dict[str, str]:
        train = "\n".join(read_text(p) for p in src.train)
        if src.valid:
            valid = "\n".join(read_text(p) for p in src.valid)
        else:  # hold out the tail of the single training text, cut at a line boundary
            cut = train.rfind("\n", 0, int(len(train) * (1 - src.valid_fraction))) + 1
            train, valid = train[:cut], train[cut:]
        return {"train": train, "valid": valid}

    if tok_path.exists():
        tok = Tokenizer.from_file(str(tok_path))
    else:
        texts = get_texts()
        log(f"[data] training a {vocab_size}-token byte-level BPE on {min(len(texts['train']), tokenizer_train_chars):,} "
            f"chars of {src.name} train text (once; cached in {cache})")
        tok = train_tokenizer([texts["train"][:tokenizer_train_chars]], vocab_size)
        _atomic_write(tok_path, lambda p: tok.save(str(p)))
    arrays = {}
    for split, path in ids_path.items():
        if not path.exists():
            texts = texts or get_texts()
            ids = encode(tok, texts[split])
            dtype = np.uint16 if tok.get_vocab_size() <= 65536 else np.uint32
            _atomic_write(path, lambda p, a=ids.astype(dtype): np.save(open(p, "wb"), a))
        arrays[split] = np.load(path, mmap_mode="r")
    info = {
        "source": src.name,
        "train_files": [str(p) for p in src.train],
        "valid_files": [str(p) for p in src.valid] or f"last {src.valid_fraction:.0%} of the training text",
        "train_tokens": int(len(arrays["train"])),
        "valid_tokens": int(len(arrays["valid"])),
        "vocab_size": int(tok.get_vocab_size()),
        "tokenizer": str(tok_path),
        "prepare_seconds": round(time.perf_counter() - t0, 2),
    }
    log(f"[data] {src.name}: {info['train_tokens']:,} train / {info['valid_tokens']:,} valid tokens, "
        f"vocab {info['vocab_size']} ({info['prepare_seconds']} s{', from cache' if texts is None else ''})")
    return TokenData(arrays["train"], arrays["valid"], tok, int(tok.get_vocab_size()), src.name, info)
