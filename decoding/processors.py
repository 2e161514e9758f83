"""Logits processors as small pure functions, and the pipeline that chains them in HF 5.x's order:
repetition penalty, min_new_tokens / min_length eos masking, the caller's `logits_processor`
callables, then (sampling only) temperature -> top-k -> top-p -> min-p.

Every function maps scores (N, V) float32 to new scores; a removed token gets -inf, as in HF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

NEG_INF = float("-inf")


def repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty on every token seen so far (seen: (N, V) bool): logits > 0 are divided by
    the penalty, logits < 0 multiplied, so the token always becomes less likely (penalty > 1)."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def suppress(scores: Tensor, token_ids: Tensor, rows: Tensor | None = None) -> Tensor:
    """-inf at token_ids (n,) long, in every row or where rows (N,) bool. Index ops, not a (V,) mask:
    the mask's pass over every score cost ~18 us for one row of 4096 and ~60 us for five (1 thread),
    these ~8 and ~12."""
    if rows is None:
        return scores.index_fill(1, token_ids, NEG_INF)
    out = scores.clone()
    out[:, token_ids] = out[:, token_ids].masked_fill(rows[:, None], NEG_INF)
    return out


def temperature(scores: Tensor, t: float) -> Tensor:
    return scores / t


def kth_largest(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value along the last axis (1 <= k <= its length), that axis kept at size 1:
    numpy's selection, the same value torch.topk's sort gives."""
    return np.partition(a, -k, axis=-1)[..., -k, None]


def top_k(scores: Tensor, k: int) -> Tensor:
    """Keep the k largest (ties with the k-th kept too)."""
    k = min(k, scores.shape[-1])
    if scores.device.type == "cpu" and scores.dtype == torch.float32 and not scores.requires_grad:
        # numpy's selection picks the same k-th value as topk's sort, 2-3x faster for a row of 4096
        # (8 vs 19 us; 28 vs 77 us for five, the Xeon): a speculative round warps nine rows
        kth = torch.from_numpy(kth_largest(scores.numpy(), k))
    else:
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (N, 1)
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p(scores: Tensor, p: float, min_keep: int = 1) -> Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_scores, order = torch.sort(scores, dim=-1)  # ascending
    tail_mass = sorted_scores.softmax(-1).cumsum(-1)  # (N, V) mass of this token and all less likely
    drop = tail_mass <= 1 - p
    drop[..., -min_keep:] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def min_p(scores: Tensor, p: float, min_keep: int = 1) -> Tensor:
    """Drop tokens whose probability is below p times the top token's."""
    probs = scores.softmax(-1)
    drop = probs < p * probs.amax(-1, keepdim=True)
    drop.scatter_(-1, torch.topk(probs, min(min_keep, probs.shape[-1]), dim=-1).indices, False)
    return scores.masked_fill(drop, NEG_INF)


class Warpers:
    """HF's sampling warpers that a config turns on, temperature -> top-k -> top-p -> min-p, each
    keeping at least `min_keep` tokens (beam sampling keeps n_eos + 1, so a beam can always go on)."""

    def __init__(self, cfg, min_keep: int = 1):
        self.temperature = cfg.temperature if cfg.temperature is not None and cfg.temperature != 1.0 else None
        self.top_k = max(cfg.top_k, min_keep) if cfg.top_k else None
        self.top_p = cfg.top_p if cfg.top_p is not None and cfg.top_p < 1.0 else None
        self.min_p, self.min_keep = cfg.min_p, min_keep
        self.active = any(v is not None for v in (self.temperature, self.top_k, self.top_p, self.min_p))

    def __call__(self, scores: Tensor) -> Tensor:
        if self.temperature is not None:
            scores = temperature(scores, self.temperature)
        if self.top_k is not None:
            scores = top_k(scores, self.top_k)
        if self.top_p is not None:
            scores = top_p(scores, self.top_p, min_keep=self.min_keep)
        if self.min_p is not None:
            scores = min_p(scores, self.min_p, min_keep=self.min_keep)
        return scores


@dataclass
class Context:
    """What the processors may read about the position being scored.

    n_new: tokens already generated before it, a host int (lockstep decoding) or (N,) long; None
      where nothing reads it (min_new_tokens off) or `n_new_bounds` decide (Pipeline.needs_n_new);
    seen: (N, V) bool of prompt + generated tokens (only when a repetition penalty is on);
    ids: HF-style input_ids (N, L) for the caller's processors, built on demand;
    n_new_bounds: host (lowest, highest) n_new over the N rows, where the caller knows them.
    """
    n_new: int | Tensor | None
    seen: Tensor | None = None
    ids: Callable[[], Tensor] | None = None
    n_new_bounds: tuple[int, int] | None = None


class Pipeline:
    """The processors a resolved config turns on, in HF 5.x's order; nothing runs for what is off."""

    def __init__(self, cfg, vocab_size: int, device):
        self.penalty = cfg.repetition_penalty if cfg.repetition_penalty not in (None, 1.0) else None
        self.min_new = cfg.min_new_tokens or 0
        self.eos_ids = None  # (n,) long: the eos ids min_new_tokens masks; None = nothing to mask
        eos = [e for e in cfg.eos_token_id or [] if e < vocab_size]
        if self.min_new and eos:
            self.eos_ids = torch.tensor(sorted(set(eos)), dtype=torch.long, device=device)
        from .hf_processors import Rules
        self.rules = Rules(cfg, vocab_size, device)  # sequence_bias, no_repeat_ngram_size, bad_words_ids, ...
        self.user = list(cfg.logits_processor or [])
        warp = Warpers(cfg) if cfg.do_sample else None
        self.warp = warp if warp is not None and warp.active else None
        self.needs_seen = self.penalty is not None
        self.needs_ids = bool(self.user) or self.rules.needs_ids
        self.active = bool(self.penalty or self.eos_ids is not None or self.user or self.warp is not None
                           or self.rules.active)

    def needs_n_new(self, bounds: tuple[int, int] | None) -> bool:
        """Must Context.n_new be built for positions whose n_new lies in bounds ((lo, hi); None:
        unknown)? Not where min_new_tokens is off, nor where all of them fall on one side of it."""
        if self.eos_ids is None:
            return False
        return bounds is None or not (bounds[1] < self.min_new or bounds[0] >= self.min_new)

    def __call__(self, scores: Tensor, ctx: Context) -> Tensor:
        """scores (N, V) float32 -> processed scores (N, V)."""
        if not self.active:
            return scores
        scores = self.rules.apply(self.rules.first, scores, ctx)
        if self.penalty is not None:
            scores = repetition_penalty(scores, ctx.seen, self.penalty)
        scores = self.rules.apply(self.rules.middle, scores, ctx)
        if self.eos_ids is not None:
            n_new = ctx.n_new if ctx.n_new is not None else ctx.n_new_bounds[1]  # None: the bounds decide
            if isinstance(n_new, int):
                if n_new < self.min_new:
                    scores = suppress(scores, self.eos_ids)
            else:
                scores = suppress(scores, self.eos_ids, n_new < self.min_new)
        scores = self.rules.apply(self.rules.last, scores, ctx)
        if self.user:
            ids = ctx.ids()
            for fn in self.user:
                scores = fn(ids, scores)
        if self.warp is not None:
            scores = self.warp(scores)
        return scores
