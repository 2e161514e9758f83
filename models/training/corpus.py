"""The training corpus: the Python standard library's own *.py sources (nothing is downloaded).

Split: a file is validation iff sha256 of its path relative to the stdlib root falls in the first
2% of the hash space, so the split never depends on file order or on the other files present.
Tokens: each file becomes [bos] + encode(text) + [eos]; files are concatenated in sorted path
order into uint16 arrays under data/ (git-ignored; built here on 3.11, carried to a GPU run,
never rebuilt there because the 3.12 stdlib differs).

    python -m models.training.corpus                      # tokenize with the shipped tokenizer -> data/
    python -m models.training.corpus --train-tokenizer    # first (re)train models/shipped/tokenizer.model
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import sysconfig
from pathlib import Path

import numpy as np

from ..artifacts import DATA

VAL_PER_MILLE = 20  # ~2% of files
DATA_DIR = DATA
# Validation slice used by train logs and tests: the middle SLICE_LEN + 1 tokens of each of the
# first SLICE_WINDOWS validation files (sorted) that are long enough. Taking whole-file windows
# keeps the slice independent of every other file, so a different 3.11.x patch rarely moves it.
SLICE_WINDOWS, SLICE_LEN = 16, 1024

# Generated or machine-specific files that are not code people write.
_SKIP_FILES = {"pydoc_data/topics.py"}
_SKIP_DIRS = {"site-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _keep(rel: str, text: str) -> bool:
    if rel in _SKIP_FILES or rel.startswith("_sysconfigdata") or rel.startswith("config-"):
        return False
    if rel.startswith("encodings/") and "gencodec.py" in text:  # generated codec tables
        return False
    return True


def source_files(root: Path | None = None) -> list[tuple[str, str]]:
    """Sorted (relative posix path, text) of every kept UTF-8 *.py file. Tests are kept: they are
    real code and double the data, which matters more than anything else at this model size."""
    root = root or stdlib_root()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if _SKIP_DIRS.intersection(rel.split("/")):
            continue
        try:
            text = p.read_bytes().decode("utf-8")  # bytes: keep \r\n exactly as stored
        except UnicodeDecodeError:  # deliberately mis-encoded test inputs
            continue
        if _keep(rel, text):
            out.append((rel, text))
    return out


def split_of(rel: str) -> str:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return "val" if h % 1000 < VAL_PER_MILLE else "train"


def split_files(split: str, root: Path | None = None) -> list[tuple[str, str]]:
    return [(rel, text) for rel, text in source_files(root) if split_of(rel) == split]


def encode_file(tok, text: str) -> list[int]:
    return tok.encode(text, bos=True, eos=True)  # bos=True: empty files (__init__.py) are allowed


def val_slice(tok, root: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """(SLICE_WINDOWS, SLICE_LEN + 1) int64 tokens and the files they came from; deterministic."""
    rows, names = [], []
    for rel, text in split_files("val", root):
        ids = encode_file(tok, text)
        if len(ids) < SLICE_LEN + 1:
            continue
        start = (len(ids) - SLICE_LEN - 1) // 2
        rows.append(ids[start:start + SLICE_LEN + 1])
        names.append(rel)
        if len(rows) == SLICE_WINDOWS:
            break
    return np.asarray(rows, dtype=np.int64), names


def slice_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<u2").tobytes()).hexdigest()


def build(tok, data_dir: Path = DATA_DIR) -> dict:
    """Tokenize both splits to data_dir/{train,val}.bin (+ val_slice.bin, meta.json)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if tok.vocab_size > 65535:
        raise ValueError("uint16 token files need a vocabulary below 65536")
    from ..tokenizer import SHIPPED
    meta = {"python": sys.version.split()[0], "stdlib": str(stdlib_root()), "tokenizer_vocab": tok.vocab_size,
            "val_per_mille": VAL_PER_MILLE, "format": "uint16 little-endian, [bos] text [eos] per file",
            # what training needs from the tokenizer, so a machine without sentencepiece can train
            "tokenizer": {"sha256": hashlib.sha256(SHIPPED.read_bytes()).hexdigest(), "vocab_size": tok.vocab_size,
                          "unk_id": tok.unk_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                          "token_bytes": tok.token_bytes()}}
    for split in ("train", "val"):
        files = split_files(split)
        ids = np.concatenate([np.asarray(encode_file(tok, t), dtype="<u2") for _, t in files])
        ids.tofile(data_dir / f"{split}.bin")
        meta[split] = {"files": len(files), "tokens": int(ids.size),
                       "chars": sum(len(t) for _, t in files),
                       "bytes": sum(len(t.encode()) for _, t in files)}
    rows, names = val_slice(tok)
    rows.astype("<u2").tofile(data_dir / "val_slice.bin")
    meta["val_slice"] = {"windows": len(names), "len": SLICE_LEN, "files": names, "sha256": slice_sha256(rows)}
    (data_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_tokens(split: str, data_dir: Path = DATA_DIR) -> np.ndarray:
    """Memory-mapped uint16 tokens of 'train' or 'val'; 'val_slice' comes back as (windows, len + 1)."""
    path = data_dir / f"{split}.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m models.training.corpus` on the CPU machine first")
    arr = np.memmap(path, dtype="<u2", mode="r")
    return arr.reshape(-1, SLICE_LEN + 1) if split == "val_slice" else arr


def main(argv=None) -> None:
    from ..tokenizer import Tokenizer, train_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-tokenizer", action="store_true", help="retrain the shipped tokenizer first")
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)
    if args.train_tokenizer:
        print("trained", train_tokenizer([t for _, t in split_files("train")]))
    meta = build(Tokenizer.load(), args.data)
    print(json.dumps({k: meta[k] for k in ("python", "train", "val")}, indent=2))
    print("val chars/token:", round(meta["val"]["chars"] / meta["val"]["tokens"], 3))


if __name__ == "__main__":
    main()
