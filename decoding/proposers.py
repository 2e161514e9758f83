"""Where guessed tokens come from (the Proposer interface is in decoding/verify.py).

- DraftProposer: a small draft model sharing the target's tokenizer (speculative sampling, Chen et
  al.; HF's `assistant_model`);
- NgramProposer: n-grams of the row's own prompt + generated text (HF's `prompt_lookup_num_tokens`).
Jacobi iterates and blockwise heads live with their strategies and follow the same interface.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import sampling
from .capabilities import cache_size, finished_rows_unmasked
from .state import DecodeState
from .verify import Proposal, Proposer, Round, Setup, process


def _empty(state: DecodeState) -> Proposal:
    return Proposal(state.sequences.new_zeros(state.batch_size, 0))


class DraftProposer(Proposer):
    """k autoregressive steps of the draft, through the target's processors: greedy guesses its
    argmax; sampling draws from, and returns, its processed probabilities q.

    The draft cache always holds a prefix of each row's kept tokens: `cache.lengths` says how long,
    so before guessing it is fed whatever it has not seen (the prompt in round 1; the last kept
    token, or the last draft and the bonus token after a full acceptance). After a round it is
    truncated per row to the drafts that were kept.
    """

    def __init__(self, draft, *, most: int, threshold: float = 0.0):
        self.model, self.most = draft, most
        self.threshold = threshold  # HF's assistant_confidence_threshold: stop guessing below it

    def start(self, setup: Setup) -> None:
        self.setup = setup
        self.size, self.clamped = cache_size(self.model, setup.ids.shape[1], setup.max_new, self.most)
        self.cache = self.model.new_cache(setup.ids.shape[0], self.size)
        self.forward = self.model.forward_on(self.cache)  # its checks done once, not every draft step
        self.unmasked = finished_rows_unmasked(self.model)

    def _unseen(self, state: DecodeState, running: Tensor, k: int) -> tuple[Tensor, Tensor | None, int, bool, bool]:
        """Kept tokens the draft has not read, right-aligned (B, W), their mask (None: every running
        row feeds W real tokens), the room left for guesses, whether every row runs and whether the
        steps run unmasked. Running rows that miss fewer than W tokens (one row took a whole draft and
        its bonus, another did not) are rolled back to re-read their last ones, so the step needs no
        mask (the compiled step takes it): the draft only guesses, so re-reading a token changes no
        output. Finished rows feed zeros unmasked where the draft's cache rolls them back whole after
        the round (observe) and has room for what they write until then (W + k - 1 tokens past their
        length: a masked row rewrites the same scratch slots instead), else masked."""
        have = self.cache.lengths.long()
        kept = self.setup.lengths + state.emitted  # (B,) real tokens each row holds
        missing = torch.where(running, kept - have, 0)  # (B,)
        beyond = self.size + 1  # above any count: rows that do not run drop out of the minima
        probe = [missing.max(), torch.where(running, missing, beyond).min(), running.all(),
                 torch.where(running, kept, beyond).min()]
        if self.clamped or self.unmasked:
            probe.append(have.max())
        W, low, all_running, fewest, *longest = torch.stack([t.long() for t in probe]).tolist()
        room = self.size - longest[0] - W + 1 if self.clamped else self.most
        free = bool(all_running) or (self.unmasked and longest[0] + W + min(k, room) - 1 <= self.size)
        if free and low < W <= fewest:  # every running row has W real tokens to feed
            self.cache.truncate(torch.where(running, W - missing, 0))
            missing, low = torch.where(running, W, 0), W
        end = state.T + state.emitted  # (B,) column after each row's last kept token
        w = torch.arange(W, device=end.device)
        cols = (end[:, None] - W + w).clamp(min=0)
        real = (w >= W - missing[:, None]) & running[:, None]
        feed = state.sequences.gather(1, cols).masked_fill(~real, 0)
        return feed, None if (free and low == W) else real, room, bool(all_running), free

    def propose(self, state: DecodeState, k: int) -> Proposal:
        if k == 0:
            return _empty(state)  # the draft lags; it catches up next time
        s = self.setup
        running = ~state.finished
        feed, mask, room, all_running, free = self._unseen(state, running, k)
        steps = min(k, room)
        if steps < 1:
            return _empty(state)  # a clamped cache is full: the target decodes alone
        self.held = self.cache.lengths.long()  # (B,) what the draft's cache holds before this round's feed
        self.before = self.held + (feed.shape[1] if mask is None else mask.sum(1))
        mask_step = None if free else running[:, None]  # masked: finished rows take no slots
        tokens, probs = [], []
        idle = None if all_running else ~running
        for j in range(steps):
            state.count_forward(draft=True)
            scores = self.forward(feed, mask, 1)[:, -1, :s.vocab].float()
            if s.pipeline.active:  # (B, V) processed as the target's, after the guesses so far
                prefix = torch.stack(tokens, 1) if tokens else feed.new_zeros(feed.shape[0], 0)
                scores = process(s.pipeline, state, scores, prefix, first=j)
            if s.do_sample:
                q = scores.softmax(-1)  # (B, V) what the guess is drawn from
                tokens.append(sampling.inverse_cdf(q, s.generator))
                probs.append(q)
            else:
                tokens.append(scores.argmax(-1))
            if j + 1 == steps:
                break
            if self.threshold > 0:  # HF's ConfidenceCriteria: stop where the draft doubts its last guess in every row
                # the processed probability of the guess: greedy's is the largest one (no gather)
                p = q.gather(1, tokens[-1][:, None]).squeeze(1) if s.do_sample else scores.softmax(-1).amax(-1)
                low = p < self.threshold
                if bool((low if idle is None else low | idle).all()):
                    break
            feed, mask = tokens[-1][:, None], mask_step
        self.fed = len(tokens) - 1  # the last guess is never fed to the draft
        self.ran = running
        return Proposal(torch.stack(tokens, 1), torch.stack(probs, 1) if probs else None)

    def nbytes(self) -> int:
        return self.cache.nbytes()

    def observe(self, rnd: Round) -> None:
        if rnd.draft.shape[1] == 0:
            return  # the draft did not run this round
        # fed guesses that ended up in the sequence: the accepted ones, up to where the row stopped
        good = torch.minimum(rnd.accepted.clamp(max=self.fed), rnd.kept)
        have = self.cache.lengths.long()
        # rows that did not run drop whatever they wrote (nothing, where masked)
        drop = torch.where(self.ran, have - (self.before + good), have - self.held)
        self.cache.truncate(drop.clamp(min=0))


class NgramProposer(Proposer):
    """Prompt lookup, per row as HF's PromptLookupCandidateGenerator does for one: for n from
    max_matching_ngram_size down to 1, find the row's last n tokens earlier in its prompt +
    generated text; the first (leftmost) occurrence with a continuation wins, and up to k tokens
    that followed it are the guess. Deterministic (q = None): a one-hot under sample_accept."""

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram

    def start(self, setup: Setup) -> None:
        self.pads = setup.ids.shape[1] - setup.lengths  # (B,) left pads before each row's prompt
        self.vocab = setup.vocab

    def propose(self, state: DecodeState, k: int) -> Proposal:
        if k == 0:
            return _empty(state)
        B = state.batch_size
        end = state.T + state.emitted  # (B,) one past each row's last token
        S = int(end.max())
        seq = state.sequences[:, :S]
        start = torch.full((B,), -1, dtype=torch.long, device=seq.device)  # where the guess begins
        for n in range(self.max_ngram, 0, -1):
            if S - n < 1:
                continue
            windows = seq.unfold(1, n, 1)  # (B, S-n+1, n)
            tail = seq.gather(1, (end[:, None] - n + torch.arange(n, device=seq.device)).clamp(min=0))  # (B, n)
            at = torch.arange(S - n + 1, device=seq.device)
            hit = (windows == tail[:, None]).all(-1) & (at >= self.pads[:, None]) & (at + n < end[:, None])
            hit &= (end - self.pads > n)[:, None]  # HF: n < the row's length
            found = hit.any(1) & (start < 0)
            start = torch.where(found, hit.int().argmax(1) + n, start)  # argmax: the first match
        cols = start[:, None] + torch.arange(k, device=seq.device)  # (B, k)
        tokens = seq.gather(1, cols.clamp(0, S - 1))
        valid = (start[:, None] >= 0) & (cols < end[:, None]) & ~state.finished[:, None] & (tokens < self.vocab)
        K = int(valid.sum(1).max())
        if K == 0:
            return _empty(state)
        valid = valid[:, :K]
        tokens = tokens[:, :K].masked_fill(~valid, 0)  # filler, never accepted
        return Proposal(tokens, None, None if bool(valid.all()) else valid)
