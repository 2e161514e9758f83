"""Propose -> verify -> accept -> roll back: the one loop behind speculative sampling, prompt lookup,
Jacobi / Gauss-Seidel-Jacobi / speculative Jacobi decoding and blockwise parallel decoding
(docs/DESIGN.md 4). The algorithms differ only in the proposer and the acceptance rule.

One round, every running row b at once:
  1. the proposer guesses up to k next tokens            draft (B, K), K <= k
  2. ONE target forward over [pending, draft]            logits (B, K+1, V); position i scores the
     token that follows draft[:, :i] ("pending" = accepted tokens the target has not seen yet:
     the prompt in round 1, the last emitted token after that)
  3. the acceptance rule keeps the longest valid prefix, accepted[b] <= K, and picks one more
     token: the correction at the first rejection, or a bonus token after K acceptances
  4. DecodeState.append cuts each row at eos / max_new_tokens / stop strings (inside the round);
     the target cache is truncated per row to what was kept, the proposer rolls its own state back.

Plugging in an algorithm:

    class Proposer:
        start(setup)                     once, before round 1 (allocate caches, read the prompt)
        propose(state, k) -> Proposal    tokens (B, K <= k); q (B, K, V) the probabilities they were
                                         drawn from, or None for a deterministic guess (a one-hot);
                                         valid (B, K) bool or None when rows guessed fewer tokens
        target_forward(forward, ids, mask, keep) -> logits (B, keep, V)
                                         the verify forward (`forward`: the target's forward bound
                                         to its cache, model.forward_on); override to get
                                         more out of it (hidden states for blockwise heads) and
                                         keep them for observe
        observe(rnd: Round)              after acceptance: roll back, prepare the next guess
        nbytes() -> int                  its own KV cache, if any
    rule(proposal, scores (B, K+1, V), generator) -> (accepted (B,), next (B,))
                                         greedy_accept: exact match with the target's argmax;
                                         sample_accept: modified rejection sampling (Chen et al.)
    schedule.k, schedule.most, schedule.update(rnd)    tokens to ask for (Constant, or adaptive)

- speculative sampling: proposers.DraftProposer (q = the draft's processed probabilities);
- prompt lookup: proposers.NgramProposer (q = None);
- Jacobi: propose the previous iterate (observe keeps rnd.scores.argmax past the accepted prefix),
  greedy_accept; SJD: the previous iterate sampled, q = what it was sampled from, sample_accept;
- blockwise: target_forward also keeps the target's hidden states, observe runs the heads on
  the hidden state of the last kept position (next round's draft, no extra forward), greedy_accept
  or a top-k relaxed rule.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sampling
from .capabilities import cache_size, finished_rows_unmasked
from .output import GenerationOutput
from .processors import Context, Pipeline
from .state import DecodeState


@dataclass
class Proposal:
    tokens: Tensor  # (B, K) guessed tokens
    q: Tensor | None = None  # (B, K, V) probabilities they were sampled from; None = deterministic
    valid: Tensor | None = None  # (B, K) bool, False past a row's last real guess; None = all real


@dataclass
class Round:
    """What one verify round saw and decided; proposers and schedules read it in observe/update."""
    draft: Tensor  # (B, K)
    scores: Tensor  # (B, K+1, V) processed target scores; [:, i] follows draft[:, :i]
    accepted: Tensor  # (B,) drafts accepted before the correction / bonus token
    tokens: Tensor  # (B, K+1) draft[:, :accepted] then the next token (what was offered)
    kept: Tensor  # (B,) tokens the state kept (stopping cuts; 0 for rows already finished)
    ran: Tensor  # (B,) bool: rows that took part


@dataclass
class Setup:
    """The run's shared objects, handed to Proposer.start."""
    ids: Tensor  # (B, T) prompt ids (pads replaced by a valid id), rows repeated per return sequence
    mask: Tensor | None  # (B, T) bool, None = no pads
    lengths: Tensor  # (B,) real prompt tokens
    state: DecodeState
    pipeline: Pipeline
    generator: torch.Generator | None
    vocab: int  # ids below this are shared by target and proposer
    max_new: int
    do_sample: bool


class Proposer:
    def start(self, setup: Setup) -> None:
        pass

    def propose(self, state: DecodeState, k: int) -> Proposal:
        raise NotImplementedError

    def target_forward(self, forward, ids: Tensor, mask: Tensor | None, keep: int) -> Tensor:
        return forward(ids, mask, keep)

    def observe(self, rnd: Round) -> None:
        pass

    def nbytes(self) -> int:
        return 0  # bytes of the proposer's own KV cache (stats.kv_cache_bytes counts both)


class Constant:
    """k tokens every round."""

    def __init__(self, k: int):
        self.k = self.most = k

    def update(self, rnd: Round) -> None:
        pass

    def advance(self, full: bool) -> None:
        pass


# -- acceptance rules ------------------------------------------------------------------------------

def greedy_accept(proposal: Proposal, scores: Tensor, generator=None) -> tuple[Tensor, Tensor]:
    """Accept while the draft equals the target's argmax; the next token is the argmax after it:
    token-identical to greedy decoding of the target."""
    draft = proposal.tokens
    best = scores.argmax(-1)  # (B, K+1)
    ok = draft == best[:, :draft.shape[1]]
    if proposal.valid is not None:
        ok &= proposal.valid
    accepted = ok.long().cumprod(1).sum(1)
    return accepted, best.gather(1, accepted[:, None]).squeeze(1)


def sample_accept(proposal: Proposal, scores: Tensor, generator=None) -> tuple[Tensor, Tensor]:
    """Modified rejection sampling on the processed probabilities: the output is distributed as
    sampling from the target (decoding.sampling.rejection_sample)."""
    p = scores.float().softmax(-1)  # (B, K+1, V)
    return sampling.rejection_sample(proposal.tokens, p, proposal.q, proposal.valid, generator)


# -- processor contexts of draft positions ------------------------------------------------------------

def contexts(state: DecodeState, draft: Tensor, first: int = 0, pipeline: Pipeline | None = None) -> Context:
    """Processor context of positions first..K (flattened row-major, (B * (K+1-first)) rows), where
    position i follows each row's kept tokens and then draft[:, :i] (B, K). With `pipeline`, n_new
    is left unbuilt where its processors do not read it (Pipeline.needs_n_new: min_new_tokens off, or
    decided by the host bounds on `emitted`)."""
    B, K = draft.shape
    P = K + 1 - first
    bounds = None if state.emitted_bounds is None else (state.emitted_bounds[0] + first, state.emitted_bounds[1] + K)
    n_new = None
    if pipeline is None or pipeline.needs_n_new(bounds):
        pos = torch.arange(first, K + 1, device=draft.device)
        n_new = (state.emitted[:, None] + pos).reshape(-1)  # min_new_tokens counts the drafts before
    seen = None
    if state.seen is not None:  # repetition penalty: the drafts before a position count as seen
        V = state.seen.shape[1]
        seen = state.seen[:, None].expand(B, P, V)
        if K:
            hit = F.one_hot(draft, V).cumsum(1) > 0  # (B, K, V): in draft[:, :i+1]
            hit = torch.cat([torch.zeros_like(hit[:, :1]), hit], 1)[:, first:]
            seen = seen | hit
        seen = seen.reshape(B * P, V)
    return Context(n_new=n_new, seen=seen, ids=None, n_new_bounds=bounds)


def block_ids(state: DecodeState, draft: Tensor, pos: Tensor, L: int) -> Tensor:
    """HF-style input_ids of width L at each position: the row as HF holds it (prompt with its left
    pads, kept tokens) + draft[:, :i], cut or left-padded to L. (B * P, L)."""
    B, K = draft.shape
    seq = state.sequences
    ends = state.T + state.emitted  # (B,) end of each row's kept tokens
    lens = ends[:, None] + pos  # (B, P)
    src = torch.arange(L, device=seq.device) - (L - lens[..., None])  # (B, P, L) index into row ++ draft
    ids = seq.gather(1, src.clamp(0, seq.shape[1] - 1).reshape(B, -1)).view_as(src)
    if K:
        off = (src - ends[:, None, None]).clamp(0, K - 1)
        from_draft = draft.gather(1, off.reshape(B, -1)).view_as(src)
        ids = torch.where(src >= ends[:, None, None], from_draft, ids)
    return ids.masked_fill(src < 0, state.pad or 0).reshape(B * pos.numel(), L)


def process(pipeline: Pipeline, state: DecodeState, scores: Tensor, draft: Tensor, first: int = 0) -> Tensor:
    """Processed scores (B * P, V) of positions first..K after draft (B, K), each with its own
    context. The caller's HF-style processors see input_ids exactly as HF shows them for that
    position (width prompt + kept + i): rows of equal width are processed together."""
    if not pipeline.active:
        return scores
    ctx = contexts(state, draft, first, pipeline)
    if not pipeline.needs_ids:
        return pipeline(scores, ctx)
    pos = torch.arange(first, draft.shape[1] + 1, device=draft.device)
    lens = (state.T + state.emitted[:, None] + pos).reshape(-1)  # (B * P,)
    out = torch.empty_like(scores)
    for L in lens.unique().tolist():
        rows = (lens == L).nonzero().squeeze(1)
        ids = block_ids(state, draft, pos, L)[rows]
        sub = Context(n_new=None if ctx.n_new is None else ctx.n_new[rows], seen=None if ctx.seen is None else ctx.seen[rows],
                      ids=lambda i=ids: i, n_new_bounds=ctx.n_new_bounds)
        out[rows] = pipeline(scores[rows], sub)
    return out


def block_scores(pipeline: Pipeline, state: DecodeState, logits: Tensor, draft: Tensor) -> Tensor:
    """(B, K+1, V) target logits -> processed scores, each position with its own context."""
    B, K1, V = logits.shape
    return process(pipeline, state, logits.float().reshape(B * K1, V), draft).view(B, K1, V)


# -- the loop ----------------------------------------------------------------------------------------

_trace: ContextVar[list | None] = ContextVar("verify_trace", default=None)


@contextmanager
def tracing():
    """Collect the Round of every verify forward run inside the block (decoding/viz.py draws them):
    `with tracing() as rounds: generate(...)`. Works for any strategy on this skeleton."""
    rounds: list[Round] = []
    token = _trace.set(rounds)
    try:
        yield rounds
    finally:
        _trace.reset(token)


def speculate(target, prompt, cfg, stop, proposer: Proposer, rule: Callable, schedule, *,
              vocab: int | None = None) -> GenerationOutput:
    """Run propose-verify rounds until every row has stopped. `vocab`: score only ids below it
    (a proposer with a smaller vocabulary); default the target's."""
    n = cfg.num_return_sequences
    ids, mask = prompt.ids, prompt.mask
    lengths = prompt.lengths
    if n > 1:  # independent samples: rows b*n .. b*n+n-1 (HF's layout), each its own prefill
        ids, lengths = ids.repeat_interleave(n, 0), lengths.repeat_interleave(n, 0)
        mask = None if mask is None else mask.repeat_interleave(n, 0)
    device = ids.device
    V = vocab or target.vocab_size
    max_new = cfg.max_new_tokens
    pipeline = Pipeline(cfg, V, device)
    state = DecodeState(prompt.rows(n), prompt.mask_rows(n), max_new_tokens=max_new,
                        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, stop=stop,
                        streamer=cfg.streamer, seen_vocab=V if pipeline.needs_seen else 0)
    generator = sampling.make_generator(cfg.seed, cfg.generator, device)
    B = state.batch_size
    proposer.start(Setup(ids, mask, lengths, state, pipeline, generator, V, max_new, cfg.do_sample))
    size, clamped = cache_size(target, prompt.width, max_new, schedule.most)
    cache = target.new_cache(B, size)
    forward = target.forward_on(cache)  # its checks done once, not every round
    scores_out = None
    if cfg.output_scores:  # HF layout: one (B, V_target) tensor per new-token column
        scores_out = torch.full((B, max_new, target.vocab_size), float("-inf"), device=device)

    pending, pending_mask = ids, mask  # (B, P): kept tokens the target has not seen yet
    rows = torch.arange(B, device=device)
    unmasked = finished_rows_unmasked(target)  # finished rows run on, unmasked, and are rolled back
    read_bounds = pipeline.eos_ids is not None  # min_new_tokens on: read the bounds on `emitted` each round
    while True:
        # one host sync per round: how many rows run, the fewest tokens any of them may still take
        # (and where min_new_tokens is on, the bounds on `emitted` that let the processors skip it)
        running = ~state.finished
        left = torch.where(running, max_new - state.emitted, max_new).min()
        probe = [running.sum(), left] + ([state.emitted.min(), state.emitted.max()] if read_bounds else []) + \
            ([cache.lengths.max()] if clamped else [])
        n_running, left, *rest = torch.stack(probe).tolist()
        if read_bounds:
            state.emitted_bounds, rest = (rest[0], rest[1]), rest[2:]
        k = min(schedule.k, left - 1)  # a row can take K + 1 tokens: never guess past max_new
        if clamped:
            k = min(k, size - rest[0] - pending.shape[1])  # rest[0]: the longest row
        proposal = proposer.propose(state, max(k, 0))
        draft = proposal.tokens  # (B, K)
        K = draft.shape[1]
        x = torch.cat([pending, draft], 1)
        x_mask = None
        if pending_mask is not None or (n_running < B and not unmasked):  # masked: finished rows take no slots
            x_mask = torch.ones_like(x, dtype=torch.bool) & running[:, None]
            if pending_mask is not None:
                x_mask[:, :pending.shape[1]] &= pending_mask
        state.count_forward(running=running)
        logits = proposer.target_forward(forward, x, x_mask, K + 1)  # (B, K+1, V_target)
        scores = block_scores(pipeline, state, logits[..., :V], draft)  # (B, K+1, V)
        accepted, nxt = rule(proposal, scores, generator)
        tokens = torch.cat([draft, nxt[:, None]], 1)  # (B, K+1)
        tokens[rows, accepted] = nxt
        if K:
            state.count_acceptance(accepted, K)
        before = state.emitted.clone() if scores_out is not None else None
        kept = state.append(tokens, accepted + 1)
        # running rows keep pending + kept[b] - 1 drafts; finished rows drop what they wrote unmasked
        cache.truncate(torch.where(running, K + 1 - kept, 0 if x_mask is not None else x.shape[1]))
        if scores_out is not None:
            _store_scores(scores_out, scores, before, kept)
        rnd = Round(draft, scores, accepted, tokens, kept, running)
        if (trace := _trace.get()) is not None:
            trace.append(rnd)
        proposer.observe(rnd)
        schedule.update(rnd)
        if state.all_finished():
            break
        pending = tokens.gather(1, (kept - 1).clamp(min=0)[:, None])  # (B, 1) the newest kept token
        pending_mask = None
    state.note_cache(cache)
    state.cache_bytes += proposer.nbytes()
    if cfg.streamer is not None:
        cfg.streamer.end()
    width = int(state.emitted.max())
    return GenerationOutput(sequences=state.output_sequences(),
                            scores=None if scores_out is None else tuple(scores_out[:, :width].unbind(1)),
                            stats=state.stats())


def _store_scores(out: Tensor, scores: Tensor, before: Tensor, kept: Tensor) -> None:
    """Row b's j-th kept token of this round was scored by scores[b, j]: put it in its column."""
    b, j = (torch.arange(scores.shape[1], device=kept.device) < kept[:, None]).nonzero(as_tuple=True)
    out[b, before[b] + j, :scores.shape[-1]] = scores[b, j]
