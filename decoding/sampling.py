"""Token selection without host syncs: argmax, and multinomial sampling by an exponential race.

`torch.multinomial` synchronises with the host on GPU. argmax(p_i / E_i) with E_i ~ Exp(1)
picks i with probability p_i / sum(p) (the first of independent exponential clocks of rates
p_i to ring), so sampling is one elementwise op and an argmax, all on the device. Rejection
sampling for speculative decoding (accept with min(1, p/q), resample from norm(max(0, p - q)))
builds on `uniform` and `multinomial` below.
"""
from __future__ import annotations

import torch
from torch import Tensor


def make_generator(seed: int | None, generator: torch.Generator | None, device) -> torch.Generator | None:
    """`generator=` as given, a fresh one seeded with `seed=`, or None (torch's global RNG)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def argmax(scores: Tensor) -> Tensor:
    """(N, V) -> (N,) long; the first maximum on ties, as torch.argmax (and HF greedy)."""
    return scores.argmax(-1)


def multinomial(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(N, V) probabilities (rows need not sum to 1) -> (N,) long sampled indices."""
    race = torch.empty_like(probs, dtype=torch.float32).exponential_(generator=generator)
    race.clamp_(min=torch.finfo(torch.float32).tiny)  # never 0/0 for a token of probability 0
    return (probs / race).argmax(-1)


def sample(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(N, V) processed scores (-inf = removed) -> (N,) tokens drawn from softmax(scores)."""
    return multinomial(scores.float().softmax(-1), generator)


def uniform(shape, device, generator: torch.Generator | None = None) -> Tensor:
    """U[0, 1) draws from the same generator (for acceptance tests)."""
    return torch.rand(shape, device=device, generator=generator)
