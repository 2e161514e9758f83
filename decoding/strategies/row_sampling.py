"""Speculative sampling's arithmetic for one row on the host (strategies/speculative_row.py): each
distribution is the support the warpers leave (top-k keeps ~50 of 4096 ids) with its float64
probabilities, and the modified rejection sampling of `sampling.rejection_sample` runs on them,
each target position processed only once the acceptance reads it.

The torch arithmetic (processors.Warpers, softmax over the vocabulary, `inverse_cdf`,
`rejection_sample`) is ~85 tensor ops a round of k = 4: a round's bookkeeping took 0.84-0.98 ms on
the Xeon with it, 0.46-0.48 ms with this (greedy's: 0.13-0.15). The kept set is the warpers' own
(temperature divides in torch, as Warpers does; top-k keeps every score >= the k-th largest, as
processors.top_k), so each distribution is the processed one; its probabilities differ from the
torch softmax's only by rounding (float64 here), which is why the draws differ from the general
loop's. tests/test_row_sampling.py checks them against the enumerated target distribution. Top-p
and min-p keep the torch arithmetic (their kept set depends on the softmax's rounding).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..processors import kth_largest


def applies(warp) -> bool:
    """Warpers this arithmetic reproduces: none, temperature, top-k."""
    return warp is None or (warp.top_p is None and warp.min_p is None)


class Support(NamedTuple):
    ids: np.ndarray  # (n,) int64, ascending
    probs: np.ndarray  # (n,) float64, sum 1


def scores(logits: Tensor, vocab: int, warp) -> np.ndarray:
    """A row's logits (1, T, V) -> its float32 scores (T, vocab) that top-k selects on, as numpy (a
    temperature divides in torch, as Warpers does: the same float32 values)."""
    if logits.dtype != torch.float32:
        logits = logits.float()
    if warp is not None and warp.temperature is not None:
        return (logits[0, :, :vocab] / warp.temperature).numpy()
    return logits.numpy()[0, :, :vocab]


def support(s: np.ndarray, warp) -> Support:
    """One position's processed distribution from its scores (V,): top-k keeps every score >= the
    k-th largest, as processors.top_k; softmax over what is kept."""
    top = None if warp is None else warp.top_k
    if top is not None and top < s.shape[0]:
        ids = np.flatnonzero(s >= kth_largest(s, top))
        x = s[ids].astype(np.float64)
    else:
        ids, x = np.arange(s.shape[0]), s.astype(np.float64)
    e = np.exp(x - x.max())
    return Support(ids, e / e.sum())


def prob(d: Support, token: int) -> float:
    j = np.searchsorted(d.ids, token)
    return float(d.probs[j]) if j < d.ids.shape[0] and d.ids[j] == token else 0.0


def draw(d: Support, u: float) -> int:
    """Inverse transform of one U[0, 1): the first id whose running sum exceeds u * total (a zero
    probability is never drawn)."""
    cdf = np.cumsum(d.probs)
    return int(d.ids[min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), cdf.shape[0] - 1)])


def residual(p: Support, q: Support | None, token: int) -> Support:
    """norm(max(0, p - q)) (q None: the one-hot at `token`, a deterministic guess); p itself where
    nothing is left, as sampling.residual."""
    if q is None:
        r = np.where(p.ids == token, 0.0, p.probs)
    else:
        at = np.minimum(np.searchsorted(q.ids, p.ids), q.ids.shape[0] - 1)
        r = np.maximum(p.probs - np.where(q.ids[at] == p.ids, q.probs[at], 0.0), 0.0)
    mass = r.sum()
    return Support(p.ids, r / mass) if mass > 0 else p


def accept(guesses: np.ndarray, s: np.ndarray, warp, qs: list[Support] | None, valid: np.ndarray | None,
           u: np.ndarray) -> tuple[int, int]:
    """sampling.rejection_sample for one row, the target's scores s (K + 1, V) processed position by
    position as far as they are read: guess i is kept with probability min(1, p_i(x) / q_i(x)) (q
    None: p_i(x)) until the first rejection, whose token comes from the residual; after all K, a
    bonus from p_K. u: K + 1 uniforms. Returns (accepted, next token)."""
    K = guesses.shape[0]
    a = 0
    while True:
        p = support(s[a], warp)
        if a == K or not (valid is None or valid[a]):
            return a, draw(p, u[K])
        x = int(guesses[a])
        if not u[a] * (1.0 if qs is None else prob(qs[a], x)) < prob(p, x):
            return a, draw(residual(p, None if qs is None else qs[a], x), u[K])
        a += 1


def uniforms(n: int, generator) -> np.ndarray:
    """A round's U[0, 1) draws at once, from the call's generator (None: torch's global one)."""
    return torch.rand(n, dtype=torch.float64, generator=generator).numpy()
