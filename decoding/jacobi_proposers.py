"""The previous Jacobi iterate as the guess (Santilli et al.; Teng et al. for sampling), behind the
Proposer interface of decoding/verify.py.

A row keeps `guess` (B, n): its current iterate for the positions right after its last kept token.
After a verify round over [pending, draft] the target's scores at draft positions a+1..K (a =
accepted drafts; position a got the correction) are the next iterate of the positions after the
correction: y_i <- argmax p(y_i | y_<i of the old iterate) (Jacobi), or a sample from that p, with
q = p remembered for the next acceptance test (speculative Jacobi). Position K's score predicts one
position past the old block, so each round carries K - a guesses and only the remaining a
positions are fresh (few, in practice: on language models a is mostly 0, which is why Jacobi
gives ~1.05 tokens per forward), filled by `jacobi_init`:

- "pad": the pad token (the paper's initialisation);
- "repeat": the last token before the fresh positions, repeated;
- "ngram": the continuation of the most recent earlier occurrence of the last 3 (2, 1) tokens of
  the row's text + carried guesses (the most recent: code repeats what it just did, unlike HF's
  prompt lookup, which takes the first); a match close to the end repeats with its period.

Gauss-Seidel-Jacobi (blocks=True) proposes only the unfixed rest of the current block of n
positions and carries nothing past it; the next block starts from n fresh guesses conditioned on
the fixed block, which is where "ngram" pays off (bench/results/cpu/jacobi.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sampling
from .state import DecodeState
from .verify import Proposal, Proposer, Round, Setup

INITS = ("pad", "repeat", "ngram")
NGRAM = 3  # longest n-gram the "ngram" init matches


class JacobiProposer(Proposer):
    def __init__(self, n: int, init: str = "pad", *, sample: bool = False, blocks: bool = False, pad: int = 0):
        if init not in INITS:
            raise ValueError(f"jacobi_init must be one of {INITS}, got {init!r}")
        self.n, self.init, self.sample, self.blocks, self.pad = n, init, sample, blocks, pad

    def start(self, setup: Setup) -> None:
        B, device = setup.ids.shape[0], setup.ids.device
        self.setup = setup
        self.V = setup.vocab
        self.pad = self.pad if 0 <= self.pad < self.V else 0
        self.guess = torch.full((B, self.n), self.pad, dtype=torch.long, device=device)  # (B, n)
        self.have = torch.zeros(B, dtype=torch.long, device=device)  # carried guesses; the rest are fresh
        self.left = torch.full((B,), self.n, dtype=torch.long, device=device)  # GS: unfixed block positions
        self.q = torch.zeros(B, self.n, self.V, device=device) if self.sample else None  # (B, n, V)
        self.pads = setup.ids.shape[1] - setup.lengths  # (B,) left pads

    # -- guessing ------------------------------------------------------------------------------
    def propose(self, state: DecodeState, k: int) -> Proposal:
        n = self.n
        j = torch.arange(n, device=self.guess.device)
        fresh = j >= self.have[:, None]  # (B, n)
        self.guess = torch.where(fresh, self._fill(state), self.guess)
        K = min(k, n)
        valid = None
        if self.blocks:  # only the current block: rows whose block is nearly fixed guess fewer
            running = ~state.finished
            K = min(K, int(torch.where(running, self.left, 0).max()))
            valid = j[:K] < self.left[:, None]
            valid = None if bool(valid.all()) else valid
        tokens = self.guess[:, :K]
        if valid is not None:
            tokens = tokens.masked_fill(~valid, self.pad)  # filler, never accepted
        q = None
        if self.sample:  # a fresh (deterministic) guess is a one-hot
            one_hot = F.one_hot(tokens, self.V).float()
            q = torch.where(fresh[:, :K, None], one_hot, self.q[:, :K])
        return Proposal(tokens, q, valid)

    def _fill(self, state: DecodeState) -> Tensor:
        """(B, n) init tokens for every position (only the fresh ones are used)."""
        B, n = self.guess.shape
        if self.init == "pad":
            return torch.full_like(self.guess, self.pad)
        text, end = self._text(state)  # (B, S), (B,)
        if self.init == "repeat":
            guess = text.gather(1, (end - 1)[:, None]).expand(B, n)
        else:
            guess = ngram_guess(text, end, self.pads, self.have, n, self.pad)
        return guess.masked_fill(guess >= self.V, self.pad)  # prompt ids past the scored vocabulary

    def _text(self, state: DecodeState) -> tuple[Tensor, Tensor]:
        """Each row's prompt + kept tokens + carried guesses, (B, S), and its end (B,)."""
        kept = state.T + state.emitted  # (B,)
        S = state.sequences.shape[1] + self.n
        text = torch.cat([state.sequences, state.sequences.new_zeros(state.batch_size, self.n)], 1)
        cols = (kept[:, None] + torch.arange(self.n, device=kept.device)).clamp(max=S - 1)
        carried = torch.arange(self.n, device=kept.device) < self.have[:, None]
        text.scatter_(1, cols, torch.where(carried, self.guess, text.gather(1, cols)))
        return text, kept + self.have

    # -- the next iterate ---------------------------------------------------------------------------
    def observe(self, rnd: Round) -> None:
        B, K1, _ = rnd.scores.shape
        a = rnd.accepted  # (B,)
        if self.sample:
            p = rnd.scores.float().softmax(-1)  # (B, K+1, V)
            nxt = sampling.inverse_cdf(p.reshape(B * K1, -1), self.setup.generator).view(B, K1)
        else:
            nxt = rnd.scores.argmax(-1)  # (B, K+1)
        src = (a[:, None] + 1 + torch.arange(self.n, device=a.device)).clamp(max=K1 - 1)  # (B, n)
        carry = K1 - 1 - a  # scores after the correction: positions a+1..K
        if self.blocks:  # only the block's own positions: a new block starts from fresh guesses
            carry = torch.minimum(carry, self.left - 1 - a)
            left = self.left - rnd.kept
            self.left = torch.where(rnd.ran, torch.where(left <= 0, self.n, left), self.left)
        carry = torch.where(rnd.ran, carry.clamp(0, self.n), self.have)
        self.guess = torch.where(rnd.ran[:, None], nxt.gather(1, src), self.guess)
        if self.sample:
            q = p.gather(1, src[..., None].expand(B, self.n, p.shape[-1]))
            self.q = torch.where(rnd.ran[:, None, None], q, self.q)
        self.have = carry


def ngram_guess(text: Tensor, end: Tensor, pads: Tensor, start_at: Tensor, n: int, pad: int) -> Tensor:
    """(B, n): for columns j >= start_at[b], the tokens that followed the most recent earlier
    occurrence of row b's last NGRAM (else shorter) tokens text[b, :end[b]]; pad where none.
    The copy runs on past the end with the period of the match (a repeated pattern continues)."""
    B, S = text.shape
    device = text.device
    begin = torch.full((B,), -1, dtype=torch.long, device=device)  # where the continuation starts
    for g in range(NGRAM, 0, -1):
        if S <= g:
            continue
        windows = text.unfold(1, g, 1)  # (B, S-g+1, g)
        tail = text.gather(1, (end[:, None] - g + torch.arange(g, device=device)).clamp(min=0))  # (B, g)
        at = torch.arange(windows.shape[1], device=device)
        hit = (windows == tail[:, None]).all(-1) & (at >= pads[:, None]) & (at + g < end[:, None])
        hit &= (end - pads >= g)[:, None]
        last = torch.where(hit, at, -1).max(1).values  # the most recent occurrence
        begin = torch.where((begin < 0) & (last >= 0), last + g, begin)
    j = torch.arange(n, device=device) - start_at[:, None]  # (B, n) offset into the continuation
    period = (end - begin).clamp(min=1)[:, None]
    src = (begin[:, None] + j.clamp(min=0) % period).clamp(0, S - 1)
    out = text.gather(1, src)
    return out.masked_fill((begin < 0)[:, None], pad)
