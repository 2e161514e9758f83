"""HF's word-level processors: sequence_bias, no_repeat_ngram_size, bad_words_ids, and
remove_invalid_values, with HF 5.x's semantics (the HF processor of the same name is the oracle in
tests/test_dropin_processors.py).

Each rule maps (scores (N, V), ctx) -> scores. Rules that look at the text read ctx.ids(): the HF-style
input_ids (N, L), prompt pads included, exactly what HF's processors see. Everything stays on the
device: n-gram and word matches are tensor comparisons, no host sync.
"""
from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


class SequenceBias:
    """Add bias[s] to the last token of each sequence s whose other tokens end the text (a
    one-token sequence: always). bad_words_ids is this with bias -inf (HF: NoBadWords)."""

    def __init__(self, table: dict[tuple[int, ...], float], vocab_size: int, device, name: str):
        bad = sorted({t for seq in table for t in seq if t >= vocab_size})
        if bad:
            raise ValueError(f"`{name}` holds token ids {bad[:8]} outside the model's vocabulary of {vocab_size}")
        self.single = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        singles = [(seq[0], b) for seq, b in table.items() if len(seq) == 1]
        if singles:
            ids, values = zip(*singles)
            self.single[list(ids)] = torch.tensor(values, dtype=torch.float32, device=device)
        by_len: dict[int, list] = {}
        for seq, b in table.items():
            if len(seq) > 1:
                by_len.setdefault(len(seq) - 1, []).append((seq, b))
        # per prefix length: prefixes (S, n), last tokens (S,), biases (S,)
        self.multi = [(torch.tensor([s[:-1] for s, _ in group], device=device),
                       torch.tensor([s[-1] for s, _ in group], device=device),
                       torch.tensor([b for _, b in group], dtype=torch.float32, device=device))
                      for group in by_len.values()]
        self.needs_ids = bool(self.multi)

    def __call__(self, scores: Tensor, ctx) -> Tensor:
        # HF adds a bias tensor (-inf + x stays -inf); single-token biases alone broadcast, no (N, V) copy
        if not self.multi:
            return scores + self.single
        bias = torch.zeros_like(scores) + self.single
        ids = ctx.ids()
        for prefixes, last, values in self.multi:
            n = prefixes.shape[1]
            if n > ids.shape[1]:
                continue
            hit = (ids[:, None, -n:] == prefixes).all(-1)  # (N, S)
            bias.index_add_(1, last, torch.where(hit, values, 0.0).to(bias.dtype))
        return scores + bias


def no_repeat_ngram(scores: Tensor, ids: Tensor, n: int) -> Tensor:
    """-inf on every token that would complete an n-gram already in ids (N, L)."""
    L = ids.shape[1]
    if L < n:
        return scores
    V = scores.shape[-1]
    windows = ids.unfold(1, n, 1)  # (N, L - n + 1, n)
    hit = (windows[..., :-1] == ids[:, None, L + 1 - n:]).all(-1)  # (N, W): the window's head ends the text
    banned = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1].clamp(0, V), V), True)
    return scores.masked_fill(banned[:, :V], NEG_INF)


def remove_invalid(scores: Tensor) -> Tensor:
    """HF's InfNanRemove: nan -> 0, +inf -> the dtype's max, -inf -> its min."""
    info = torch.finfo(scores.dtype)
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == float("inf"), info.max, out)
    return torch.where(scores == NEG_INF, info.min, out)


def _bias_table(sequence_bias) -> dict:
    if isinstance(sequence_bias, dict):
        return {tuple(k): float(v) for k, v in sequence_bias.items()}
    return {tuple(seq): float(b) for seq, b in sequence_bias}


class Rules:
    """The HF rules a resolved config turns on, split at the places HF's order puts them around the
    engine's own processors: `first` before the repetition penalty, `middle` after it, `last` after
    min-length eos masking (then come the caller's processors and the sampling warpers)."""

    def __init__(self, cfg, vocab_size: int, device):
        self.first, self.middle, self.last = [], [], []
        self.needs_ids = False
        if cfg.sequence_bias is not None:
            rule = SequenceBias(_bias_table(cfg.sequence_bias), vocab_size, device, "sequence_bias")
            self.first.append(rule)
            self.needs_ids |= rule.needs_ids
        if cfg.no_repeat_ngram_size:
            n = cfg.no_repeat_ngram_size
            self.middle.append(lambda scores, ctx: no_repeat_ngram(scores, ctx.ids(), n))
            self.needs_ids = True
        if cfg.bad_words_ids is not None:
            eos = [[e] for e in cfg.eos_token_id or []]
            words = [w for w in cfg.bad_words_ids if w not in eos]  # HF never bans a lone eos
            if words:
                rule = SequenceBias({tuple(w): NEG_INF for w in words}, vocab_size, device, "bad_words_ids")
                self.middle.append(rule)
                self.needs_ids |= rule.needs_ids
        if cfg.remove_invalid_values:
            self.last.append(lambda scores, ctx: remove_invalid(scores))
        self.active = bool(self.first or self.middle or self.last)

    @staticmethod
    def apply(rules, scores: Tensor, ctx) -> Tensor:
        for rule in rules:
            scores = rule(scores, ctx)
        return scores
