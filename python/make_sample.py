"""Cut the small embedded corpus sample (python/sample_data/) from the full corpus in ../shared/data.

Run once by a maintainer; the output is committed so the main job works on a fresh clone without
../shared. The sample is evenly spaced windows of the training shard (so it is not just the articles
starting with "A"), each window snapped to blank-line boundaries, plus the head of the held-out valid
split. Deterministic: the same input gives byte-identical output.

    python python/make_sample.py --data-dir ../shared/data --train-chars 7000000 --valid-chars 1000000
"""
from __future__ import annotations

import argparse
import lzma
from pathlib import Path

HERE = Path(__file__).resolve().parent


def snap(text: str, pos: int) -> int:
    """First position after a blank line at or after ``pos`` (len(text) if none)."""
    j = text.find("\n\n", pos)
    return len(text) if j < 0 else j + 2


def windows(text: str, total_chars: int, n_windows: int) -> str:
    """``n_windows`` evenly spaced slices of ``text``, about total_chars in all, cut at blank lines."""
    per = total_chars // n_windows
    stride = len(text) // n_windows
    parts = []
    for w in range(n_windows):
        a = snap(text, w * stride) if w else 0
        b = snap(text, a + per) - 1  # keep one "\n" at the end of the slice
        parts.append(text[a:b].strip("\n") + "\n")
    return "\n".join(parts)


def write_xz(path: Path, text: str) -> None:
    with lzma.open(path, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--train-chars", type=int, default=7_000_000)
    ap.add_argument("--valid-chars", type=int, default=1_000_000)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--out", type=Path, default=HERE / "sample_data")
    args = ap.parse_args()
    src_train = args.data_dir / "enwiki_train_00.txt.xz"
    src_valid = args.data_dir / "enwiki_valid.txt.xz"
    for p in (src_train, src_valid):
        if not p.exists():
            raise SystemExit(f"missing {p}; pass --data-dir pointing at the corpus folder (shared/data)")
    with lzma.open(src_train, "rt", encoding="utf-8") as f:
        train = windows(f.read(), args.train_chars, args.windows)
    with lzma.open(src_valid, "rt", encoding="utf-8") as f:
        valid = f.read(args.valid_chars * 2)
    valid = valid[: snap(valid, args.valid_chars) - 1].strip("\n") + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_xz(args.out / "enwiki_sample_train.txt.xz", train)
    write_xz(args.out / "enwiki_sample_valid.txt.xz", valid)
    for name, t in (("train", train), ("valid", valid)):
        p = args.out / f"enwiki_sample_{name}.txt.xz"
        print(f"{p}: {len(t):,} chars, {p.stat().st_size:,} bytes compressed")


if __name__ == "__main__":
    main()
