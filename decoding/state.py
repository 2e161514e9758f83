"""The running batch of one generate() call, shared by every strategy.

`sequences` (B, T + max_new + 1) holds the left-padded prompt, then row b's new tokens in columns
[T, T + emitted[b]), prefilled with pad (the last column is scratch for masked-out writes).
Strategies hand the state the tokens each forward produced; the state cuts every row at eos,
max_new_tokens or a stop string (also inside a multi-token block), marks rows finished, keeps the
seen-token mask for repetition penalties, pushes tokens to the streamer and counts statistics.

Two ways to append:
- `append_one(tokens (B,))`: lockstep decoding (greedy, sampling, beam): one token per row per
  step. Finished rows get pad, written and fed back to the model as HF 5.x does, so scores and
  outputs match HF's even for rows that finished early.
- `append(tokens (B, K), counts (B,))`: multi-token emission (speculative, Jacobi, blockwise): row
  b offers its first counts[b] tokens; returns how many were kept, which is what the strategy rolls
  its cache back to. Finished rows take nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .output import GenerationStats
from .processors import Context


class DecodeState:
    def __init__(self, prompt: Tensor, prompt_mask: Tensor | None, *, max_new_tokens: int,
                 eos_token_id: list[int] | None, pad_token_id: int | None, stop=None, streamer=None,
                 seen_vocab: int = 0):
        B, T = prompt.shape
        device = prompt.device
        self.T, self.max_new = T, max_new_tokens
        self.pad = pad_token_id
        self.sequences = torch.full((B, T + max_new_tokens + 1), pad_token_id if pad_token_id is not None else 0,
                                    dtype=torch.long, device=device)
        self.sequences[:, :T] = prompt
        self.prompt_mask = prompt_mask  # (B, T) bool, None = no pads
        self.eos = torch.tensor(eos_token_id, dtype=torch.long, device=device) if eos_token_id else None
        self.eos_id = int(eos_token_id[0]) if eos_token_id else None  # one eos: compared as a host int
        # HF replaces finished rows' tokens by pad only when an eos criterion exists
        self.pad_finished = self.eos is not None and pad_token_id is not None
        self.stop, self.streamer = stop, streamer
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.emitted = torch.zeros(B, dtype=torch.long, device=device)  # new tokens per row, eos included
        # host (min, max) of `emitted` over all rows where a loop read them back since the last append
        # (the processors' min_new_tokens test then needs no ops, verify.contexts); None = unknown
        self.emitted_bounds: tuple[int, int] | None = None
        self.steps = 0  # lockstep appends so far (host)
        self.ragged = False  # set by the first multi-token append: rows may differ in length
        self.target_forwards = 0
        self.lockstep = False  # forwards counted by count_forward(lockstep=True)
        self.draft_forwards = 0
        # multi-token forwards: (running rows (B,) bool, accepted (B,) or None, guesses k) each, summed
        # once in stats() instead of by ops every round
        self.rounds: list[tuple[Tensor, Tensor | None, int]] = []
        self.cache_bytes = 0
        self.seen = None
        if seen_vocab:
            self.seen = torch.zeros(B, seen_vocab, dtype=torch.bool, device=device)
            # HF 5.x skips the left pads only: tokens in holes after the first real one count as seen
            real = prompt if prompt_mask is None else prompt.masked_fill(prompt_mask.long().cumsum(1) == 0, seen_vocab)
            self._mark_seen(real)
        if streamer is not None:
            streamer.put(prompt.cpu())

    @property
    def batch_size(self) -> int:
        return self.sequences.shape[0]

    # -- what processors read ----------------------------------------------------------------
    def ids(self) -> Tensor:
        """HF-style input_ids (B, T + generated) for the caller's logits processors."""
        return self.sequences[:, :self.T + self.width()]

    def context(self) -> Context:
        """Processor context of the next lockstep position."""
        return Context(n_new=self.steps, seen=self.seen, ids=self.ids)

    def width(self) -> int:
        """Columns generated so far (host int; a sync once rows are ragged)."""
        return int(self.emitted.max()) if self.ragged else self.steps

    # -- bookkeeping ---------------------------------------------------------------------------
    def count_forward(self, draft: bool = False, lockstep: bool = False, running: Tensor | None = None) -> None:
        """Call once per model forward; a target forward counts for each running row (tau).
        lockstep: a forward whose running rows each get exactly one token from append_one, so its
        row count is what `emitted` gains (tau 1), added at stats() instead of per step. Otherwise
        the forward's running rows are kept (`running`: the caller's ~finished, else computed)."""
        if draft:
            self.draft_forwards += 1
        elif lockstep:
            self.target_forwards += 1
            self.lockstep = True
        else:
            self.target_forwards += 1
            self.rounds.append((~self.finished if running is None else running, None, 0))

    def count_acceptance(self, accepted: Tensor, k: int) -> None:
        """Speculative statistics of the last counted forward: each of its running rows proposed k
        drafts and accepted its first accepted[b] of them (before the bonus token)."""
        self.rounds[-1] = (self.rounds[-1][0], accepted, k)

    def note_cache(self, cache) -> None:
        self.cache_bytes = max(self.cache_bytes, cache.nbytes())

    def all_finished(self) -> bool:
        return bool(self.finished.all())  # one host sync

    def _mark_seen(self, tokens: Tensor) -> None:
        """tokens (B, K); ids >= vocab (pads, masked) are ignored."""
        V = self.seen.shape[1]
        hit = torch.zeros(self.seen.shape[0], V + 1, dtype=torch.bool, device=tokens.device)
        hit.scatter_(1, tokens.clamp(0, V), True)
        self.seen |= hit[:, :V]

    # -- appending -----------------------------------------------------------------------------
    def append_one(self, tokens: Tensor) -> Tensor:
        """Lockstep: one token per row. Returns the tokens to feed next (pad for finished rows)."""
        if self.pad_finished:
            tokens = tokens.masked_fill(self.finished, self.pad)
        self.sequences.select(1, self.T + self.steps).copy_(tokens)
        running = ~self.finished
        if self.steps + 1 >= self.max_new:
            self.finished.fill_(True)
        elif self.eos is not None or self.stop is not None:  # else no row can stop here: no ops
            stop_now = self._is_eos(tokens)
            if self.stop is not None:
                stop_now = stop_now | (self._first_stop_string(tokens[:, None], running.long()) == 0)
            self.finished |= stop_now
        self.emitted += running
        self.emitted_bounds = None
        self.steps += 1
        if self.seen is not None:  # HF penalises the pads fed to finished rows too
            if self.pad is None or self.pad < self.seen.shape[1]:
                self.seen.scatter_(1, tokens[:, None], True)
            else:
                self._mark_seen(tokens[:, None])
        if self.streamer is not None:
            self.streamer.put(tokens.cpu())
        return tokens

    def append(self, tokens: Tensor, counts: Tensor) -> Tensor:
        """Multi-token: row b offers tokens[b, :counts[b]]. Keeps the prefix up to and including
        the first eos / stop-string token, at most max_new_tokens in all; returns the kept counts (B,)."""
        B, K = tokens.shape
        self.ragged = True
        j = torch.arange(K, device=tokens.device)
        counts = torch.where(self.finished, 0, counts.long().clamp(0, K))
        counts = torch.minimum(counts, self.max_new - self.emitted)
        offered = j < counts[:, None]  # (B, K)
        stop_at = torch.full_like(counts, K)  # index of the first stopping token
        if self.eos is not None:
            is_eos = torch.isin(tokens, self.eos) & offered
            stop_at = torch.where(is_eos.any(1), is_eos.int().argmax(1), stop_at)
        if self.stop is not None:
            stop_at = torch.minimum(stop_at, self._first_stop_string(tokens, counts))
        hit = stop_at < counts
        kept = torch.where(hit, stop_at + 1, counts)
        write = j < kept[:, None]
        cols = torch.where(write, self.T + self.emitted[:, None] + j, self.sequences.shape[1] - 1)
        self.sequences.scatter_(1, cols, torch.where(write, tokens, self.pad or 0))
        self.emitted += kept
        self.emitted_bounds = None
        self.finished |= hit | (self.emitted >= self.max_new)
        if self.seen is not None:
            self._mark_seen(tokens.masked_fill(~write, self.seen.shape[1]))
        if self.streamer is not None:
            self._stream(tokens, kept)
        return kept

    def _is_eos(self, tokens: Tensor) -> Tensor:
        if self.eos is None:
            return torch.zeros_like(tokens, dtype=torch.bool)
        if self.eos.numel() == 1:
            return tokens == self.eos_id
        return torch.isin(tokens, self.eos)

    def _stream(self, tokens: Tensor, kept: Tensor) -> None:
        if tokens.shape[0] == 1:  # HF's text streamers take one row: push just the kept tokens
            n = int(kept[0])
            if n:
                self.streamer.put(tokens[0, :n].cpu())
        else:
            self.streamer.put(tokens.masked_fill(torch.arange(tokens.shape[1], device=tokens.device) >= kept[:, None],
                                                 self.pad or 0).cpu())

    # -- stop strings (host side) -----------------------------------------------------------------
    def _row_context(self, b: int, new: int, tokens_b: list[int]) -> list[int]:
        """Row b's last real tokens before the new ones, then the new ones."""
        end = self.T + int(self.emitted[b])
        start = max(0, end - self.stop.window)
        ctx = self.sequences[b, start:end].tolist()
        if self.prompt_mask is not None and start < self.T:  # drop left pads
            keep = self.prompt_mask[b, start:self.T].tolist() + [True] * (end - self.T)
            ctx = [t for t, k in zip(ctx, keep) if k]
        return ctx + tokens_b[:new]

    def _first_stop_string(self, tokens: Tensor, counts: Tensor) -> Tensor:
        """(B,) index of the first offered token inside which a stop string ends (K if none)."""
        B, K = tokens.shape
        out = [K] * B
        host_tokens, host_counts, done = tokens.tolist(), counts.tolist(), self.finished.tolist()
        for b in range(B):
            if done[b] or not host_counts[b]:
                continue
            ctx = self._row_context(b, host_counts[b], host_tokens[b])
            j = self.stop.first_stop(ctx, host_counts[b])
            if j is not None:
                out[b] = j
        return torch.tensor(out, dtype=torch.long, device=tokens.device)

    # -- the result ------------------------------------------------------------------------------
    def stats(self) -> GenerationStats:
        new = int(self.emitted.sum())
        row_forwards = new if self.lockstep else 0
        rates = []
        if self.rounds:
            running = torch.stack([r for r, _, _ in self.rounds])  # (rounds, B)
            row_forwards += int(running.sum())
            ks = [k for _, _, k in self.rounds]  # guesses per round (0: none), on the host
            if max(ks):
                k = torch.tensor(ks, device=running.device)
                accepted = torch.stack([torch.zeros_like(r, dtype=torch.long) if a is None else a
                                        for r, a, _ in self.rounds])  # (rounds, B)
                pos = torch.arange(max(ks), device=running.device)  # (K,)
                proposed = (running.sum(1)[:, None] * (pos < k[:, None])).sum(0)
                took = ((pos < accepted[..., None]) & running[..., None]).sum((0, 1))
                rates = [a / p if p else 0.0 for a, p in zip(took.tolist(), proposed.tolist())]
        return GenerationStats(new_tokens=new, target_forwards=self.target_forwards,
                               draft_forwards=self.draft_forwards,
                               tau=new / row_forwards if row_forwards else 0.0,
                               accept_rate_by_position=rates, kv_cache_bytes=self.cache_bytes)

    def output_sequences(self) -> Tensor:
        """(B, T + longest row's new tokens): rows that stopped early end in pad."""
        return self.sequences[:, :self.T + int(self.emitted.max())]

    def reorder(self, index: Tensor) -> None:
        """rows <- rows[index] (beam search), the prompt mask included."""
        self.sequences = self.sequences[index]
        self.finished, self.emitted = self.finished[index], self.emitted[index]
        if self.prompt_mask is not None:
            self.prompt_mask = self.prompt_mask[index]
        if self.seen is not None:
            self.seen = self.seen[index]
