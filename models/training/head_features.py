"""The frozen target's features for head training on pre-generated greedy rows.

`python -m models.training.distill_draft generate` writes the target's greedy continuations of corpus
windows as chunks (runs/distill/chunk_*.npy, prompt_len + gen_len tokens per row). Heads train on
the continuation positions t = prompt_len - 1 .. L - 2, where the tokens after t are the target's
own greedy chain, and the target is frozen: its final-norm hidden state at those positions is
computed once per chunk (features/f_*.npy, float16) and reused by every epoch, instead of one
target forward per training step.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FEATURES = "features"
SUB_BATCH = 32  # rows per target forward when computing features


def fingerprint(target) -> dict:
    """What the features depend on: the target's config and a few of its weights."""
    c = target.config
    w = target.embed.weight.detach().float()
    return {"dim": c.dim, "n_layers": c.n_layers, "vocab_size": c.vocab_size,
            "embed_checksum": round(float(w[:64].sum()), 4)}


@torch.no_grad()
def cache_features(target, rows_dir: str | Path, *, log=print) -> Path:
    """Write features/f_XXXX.npy (rows, gen_len, dim) float16 for every chunk_XXXX.npy that lacks them."""
    d = Path(rows_dir)
    meta = json.loads((d / "meta.json").read_text())
    P = meta["prompt_len"]
    out = d / FEATURES
    out.mkdir(exist_ok=True)
    fp = fingerprint(target)
    stamp = out / "meta.json"
    if stamp.exists() and json.loads(stamp.read_text()) != fp:
        raise ValueError(f"{out} holds features of another target ({stamp.read_text().strip()}); delete it")
    stamp.write_text(json.dumps(fp, indent=2) + "\n")
    for chunk in sorted(d.glob("chunk_*.npy")):
        f = out / f"f_{chunk.stem.split('_')[1]}.npy"
        if f.exists():
            continue
        rows = torch.from_numpy(np.load(chunk).astype(np.int64)).to(target.device)
        feats = [target.hidden_train(rows[i:i + SUB_BATCH])[:, P - 1:-1].to(torch.float16).cpu().numpy()
                 for i in range(0, rows.shape[0], SUB_BATCH)]
        tmp = out / f"tmp_{f.name}"
        np.save(tmp, np.concatenate(feats))
        tmp.rename(f)  # a file appears only when complete
        log(f"features {f.name}")
    return out


def greedy_rows(d: Path) -> tuple[np.ndarray, int]:
    meta = json.loads((d / "meta.json").read_text())
    chunks = sorted(d.glob("chunk_*.npy"))
    if not chunks:
        raise FileNotFoundError(f"no chunk_*.npy in {d}: run `python -m models.training.distill_draft generate` first")
    return np.concatenate([np.load(f) for f in chunks]).astype(np.int64), meta["prompt_len"]


class PositionBatches:
    """Random continuation positions of all cached rows: batch b is drawn from a generator seeded with
    (seed, b), so a resumed run sees the same batches. get(b) -> (hidden (N, 1, dim), window (N, 1, k + 1)):
    the hidden state at t and tokens t+1..t+k+1 (IGNORE past the row's end)."""

    def __init__(self, rows_dir: str | Path, *, k: int, positions: int, seed: int, device, ignore: int):
        d = Path(rows_dir)
        rows, self.P = greedy_rows(d)  # raises when there are none
        feats = [d / FEATURES / f"f_{c.stem.split('_')[1]}.npy" for c in sorted(d.glob("chunk_*.npy"))]
        missing = [f.name for f in feats if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{d}: features missing ({missing[:3]}...); let train_heads --data rows cache them")
        self.tokens = torch.from_numpy(rows)
        first = np.load(feats[0], mmap_mode="r")
        self.hidden = torch.empty((self.tokens.shape[0],) + first.shape[1:], dtype=torch.float16)
        at = 0
        for f in feats:  # one preallocated array: no concatenate copy of several GB
            a = np.load(f)
            self.hidden[at:at + len(a)] = torch.from_numpy(a)
            at += len(a)
        self.k, self.positions, self.seed, self.device, self.ignore = k, positions, seed, device, ignore

    def __len__(self) -> int:
        return self.hidden.shape[0] * self.hidden.shape[1]

    def get(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
        R, T = self.hidden.shape[:2]
        rows = torch.randint(0, R, (self.positions,), generator=g)
        p = torch.randint(0, T, (self.positions,), generator=g)
        L = self.tokens.shape[1]
        idx = (self.P - 1 + p)[:, None] + 1 + torch.arange(self.k + 1)  # tokens t+1 .. t+k+1
        window = self.tokens[rows[:, None], idx.clamp(max=L - 1)].masked_fill(idx >= L, self.ignore)
        return self.hidden[rows, p][:, None].to(self.device), window[:, None].to(self.device)
