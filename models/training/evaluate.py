"""Validation loss (nats per token) and bits per byte of a model on fixed token windows."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model, windows, token_bytes, *, batch_size: int = 8, amp_dtype=None) -> dict:
    """windows (N, L + 1) token ids: inputs [:, :-1], targets [:, 1:]. bits per byte =
    nats summed over targets / ln 2 / UTF-8 bytes the targets stand for (bos/eos count 0 bytes)."""
    device = next(model.parameters()).device
    windows = torch.as_tensor(np.asarray(windows, dtype=np.int64))
    nbytes = torch.as_tensor(token_bytes, dtype=torch.float64)[windows[:, 1:]].sum().item()
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    nats = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device)
        with amp:
            logits = model.forward_train(w[:, :-1])
        nats += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum").double().item()
    model.train(was_training)
    n = windows[:, 1:].numel()
    return {"loss": nats / n, "bpb": nats / math.log(2) / nbytes, "tokens": n, "bytes": int(nbytes)}


def strided_windows(tokens, length: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping windows of length + 1 (targets tile the stream once)."""
    n = (len(tokens) - 1) // length
    if max_windows:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None]
    return np.asarray(tokens)[idx].astype(np.int64)
