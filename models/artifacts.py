"""Where the repository keeps its artifacts, resolved from this file so any working directory works."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "shipped"  # trained checkpoints, heads and the tokenizer (package data)
DATA = REPO / "data"  # the tokenized corpus (python -m models.training.corpus)
RUNS = REPO / "runs"  # training state and scratch output


def shipped(name: str) -> Path:
    """models/shipped/<name>: target, draft, yoco, heads, heads_independent, tokenizer.model."""
    path = SHIPPED / name
    if not path.exists():
        have = sorted(p.name for p in SHIPPED.iterdir()) if SHIPPED.is_dir() else []
        raise FileNotFoundError(f"no shipped artifact {name!r} in {SHIPPED} (shipped: {have})")
    return path
