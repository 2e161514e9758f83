"""Speculative decoding, prompt lookup and blockwise parallel decoding of one row on a CPU, their
bookkeeping on the host.

The general loop (decoding/verify.py, DraftProposer) keeps every row's lengths, counts and stop
state in tensors so that a batch runs without a host sync per row: ~170 tensor ops a round besides
the forwards and the sampling arithmetic, ~0.55-0.8 ms on the Xeon, a fifth of a round of the
shipped target and draft. With one row on a CPU the row is a numpy view of its token buffer: the
guesses are written after the kept tokens (so a verify's input is a slice, no concatenation), and
the accepted count, the stop test, both caches' rollbacks and the statistics are host ints. Greedy
reads its argmaxes straight off the logits (numpy's argmax, the first maximum as torch's): ~12
tensor ops a round besides the library calls. Sampling with temperature and top-k only (HF's
defaults) runs on the host too, over the support the warpers leave (strategies/row_sampling.py:
exactly the target's distribution, its own draws); with top-p or min-p it runs the general loop's
arithmetic (warpers, softmax, `sampling.inverse_cdf`, `verify.sample_accept`) on the same tensors
in the same order, so under a seed it draws the same tokens. Otherwise the same tokens, statistics
and caches' contents as the general loop (tests/test_speculative_row.py runs both; sampling's host
arithmetic is checked against the exact distribution), so it is taken wherever it applies: one
row on a CPU, no pads, no logits processor but sampling's warpers (temperature, top-k, top-p,
min-p), no stop strings or scores to return, caches not clamped. Prompt lookup's n-gram search
(NgramProposer) runs on the row's numpy view; blockwise's heads (HeadsProposer) guess from the
verify's hidden state at the kept position, only as many heads as the next round uses (they are
sequential: the same first guesses), each guess the numpy argmax of its logits; where the target runs
its compiled CPU step, one library computes the verify and every position's guesses (the LM head read
once for independent heads, models/compiled_cpu.py) and the round takes the kept position's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import sampling
from ..capabilities import cache_size, compiled_guessing
from ..output import GenerationOutput, GenerationStats
from ..processors import Pipeline, kth_largest
from ..verify import Proposal, Round, _trace, sample_accept
from . import row_sampling


def applies(target, draft, prompt, cfg, stop, most: int) -> bool:
    """Does this call take the one-row path (the module's conditions)? draft None: prompt lookup."""
    if prompt.batch_size * cfg.num_return_sequences != 1 or prompt.mask is not None:
        return False
    if prompt.ids.device.type != "cpu" or stop is not None or cfg.output_scores:
        return False
    vocab = target.vocab_size if draft is None else min(target.vocab_size, draft.vocab_size)
    pipe = Pipeline(cfg, vocab, prompt.ids.device)
    if pipe.penalty or pipe.eos_ids is not None or pipe.user or pipe.rules.active:  # processors with a context
        return False
    width = prompt.width
    return not any(cache_size(m, width, cfg.max_new_tokens, most)[1] for m in (target, draft) if m is not None)


def _host(logits: Tensor) -> np.ndarray:
    """The float32 scores the general loop takes the argmax of (`.float()`), as numpy."""
    return (logits if logits.dtype == torch.float32 else logits.float()).numpy()


@torch.no_grad()
def run(target, draft, prompt, cfg, schedule, vocab: int, *, threshold: float = 0.0,
        max_ngram: int = 2, heads=None, top_k: int | None = None) -> GenerationOutput:
    """Rounds of: the draft (draft None: the row's last n-gram earlier in its text, as
    NgramProposer; heads given: blockwise's heads on the last verify's hidden state) guesses up to
    k tokens from what it has not read yet, the target scores [pending, guesses] in one forward,
    the acceptance rule (greedy: the longest prefix equal to the target's argmax, then its argmax;
    top_k: blockwise's lossy rule, while a guess is within the target's top_k; sampling: modified
    rejection sampling) keeps a prefix and one more token, both caches roll back to what was kept."""
    ids, max_new = prompt.ids, cfg.max_new_tokens
    T = ids.shape[1]
    size = cache_size(target, T, max_new, schedule.most)[0]
    cache = target.new_cache(1, size)
    forward = target.forward_on(cache)
    if draft is not None:
        dcache = draft.new_cache(1, cache_size(draft, T, max_new, schedule.most)[0])
        dforward = draft.forward_on(dcache)
    sample = cfg.do_sample
    warp = Pipeline(cfg, vocab, ids.device).warp
    generator = sampling.make_generator(cfg.seed, cfg.generator, ids.device) if sample else None
    sparse = sample and row_sampling.applies(warp)  # the sampling arithmetic on the warpers' support
    # the row: kept tokens in [0, n), this round's guesses in [n, n + K) (a round never guesses past
    # max_new_tokens); `row` is its host view
    seq = torch.empty(1, T + max_new, dtype=torch.long)
    seq[:, :T] = ids
    row = seq.numpy()[0]
    eos = set(cfg.eos_token_id or ())
    streamer = cfg.streamer
    if streamer is not None:
        streamer.put(ids.cpu())
    n = T  # tokens the row holds (prompt + kept)
    seen = 0  # of them, read by the target (the rest is pending)
    dseen = 0  # tokens in the draft's cache (a prefix of the row, then fed guesses)
    drafts, took = 0, []  # draft forwards; (K, accepted) of each round, one target forward each
    # blockwise: the next round's guesses (host ints), or (hidden (1, dim), token) the heads guess after;
    # none before the prefill. `guessing`: the compiled step that returns the heads' guesses with the
    # logits (models/compiled_cpu.py), where the target runs one
    guess_from, firsts = None, {}  # firsts: the first k heads, per k
    guessing = _guessing(target, cache, heads, vocab)
    while True:
        emitted = n - T
        k = max(min(schedule.k, max_new - emitted - 1), 0)  # a round can take K + 1: never guess past max_new
        K, qs, valid = 0, [], None
        u = row_sampling.uniforms(2 * k + 1, generator) if sparse else None  # draft draws, K tests, the next
        if heads is not None:
            if k and guess_from is not None:
                if isinstance(guess_from, tuple):
                    sub = firsts.setdefault(k, heads if k == heads.k else heads.first(k))
                    guess_from = _heads_guess(sub, *guess_from, target, vocab)
                row[n:n + k] = guess_from[:k]  # heads are sequential: the first k of them guess the same
                K = k
        elif k and draft is None:
            K, valid = _lookup(row, n, k, max_ngram, vocab)
        elif k:
            feed = seq[:, dseen:n]
            for j in range(k):
                drafts += 1
                logits = dforward(feed, None, 1)
                if sparse:
                    q = row_sampling.support(row_sampling.scores(logits, vocab, warp)[-1], warp)
                    qs.append(q)
                    row[n + j] = row_sampling.draw(q, u[j])
                elif sample:  # the draft's processed distribution q, and a draw from it
                    scores = logits[:, -1, :vocab].float()
                    q = (scores if warp is None else warp(scores)).softmax(-1)
                    qs.append(q)
                    row[n + j] = sampling.inverse_cdf(q, generator).item()
                else:
                    row[n + j] = _host(logits)[0, -1, :vocab].argmax()
                K = j + 1
                if K == k:
                    break
                # HF's ConfidenceCriteria: stop where the draft doubts its last guess
                if threshold > 0 and _confidence(logits, qs, int(row[n + j]), vocab) < threshold:
                    break
                feed = seq[:, n + j:n + K]
            dseen = n + K - 1  # the last guess is never fed to the draft
        fused = None if guessing is None else guessing(seq[:, seen:n + K], K + 1)
        if fused is not None:
            logits, guesses = fused
        elif heads is None:
            logits = forward(seq[:, seen:n + K], None, K + 1)  # (1, K + 1, V)
        else:
            logits, hidden = forward(seq[:, seen:n + K], None, K + 1, return_hidden=True)
        scores = None
        if sparse:
            accepted, nxt = row_sampling.accept(row[n:n + K], row_sampling.scores(logits, vocab, warp),
                                                warp, qs if draft is not None else None, valid, u[k:k + K + 1])
        elif sample:
            scores = logits[..., :vocab].float()
            if warp is not None:
                scores = warp(scores.reshape(K + 1, -1)).view(1, K + 1, -1)
            proposal = Proposal(seq[:, n:n + K], torch.stack(qs, 1) if qs else None,
                                None if valid is None else torch.from_numpy(valid)[None])
            a, nxt = sample_accept(proposal, scores, generator)
            accepted, nxt = torch.stack([a[0], nxt[0]]).tolist()
        else:
            host = _host(logits)[0, :, :vocab]
            best = host.argmax(-1)  # (K + 1,)
            accepted = 0
            if top_k is None:
                while accepted < K and row[n + accepted] == best[accepted] and (valid is None or valid[accepted]):
                    accepted += 1
            else:
                while accepted < K and _within(host[accepted], int(row[n + accepted]), top_k):
                    accepted += 1
            nxt = best[accepted]
        draft_tokens = seq[:, n:n + K].clone() if _trace.get() is not None else None
        row[n + accepted] = nxt  # the correction, or the bonus token after K
        if heads is not None:  # the heads guess after the round's own token, from its hidden state
            guess_from = guesses[0, accepted].numpy() if fused is not None else (hidden[:, accepted], int(nxt))
        kept = accepted + 1
        if eos:  # cut after the first eos
            kept = next((i + 1 for i in range(kept) if int(row[n + i]) in eos), kept)
        if streamer is not None:
            streamer.put(seq[0, n:n + kept].clone())
        took.append((K, accepted))
        if K:
            schedule.advance(accepted >= K)
        if draft_tokens is not None:  # verify.tracing(): the general loop's Round
            if scores is None:
                scores = logits[..., :vocab].float()
                if sample and warp is not None:
                    scores = warp(scores.reshape(K + 1, -1)).view(1, K + 1, -1)
            _trace.get().append(_round(draft_tokens, scores, int(nxt), accepted, kept))
        # the target keeps the pending tokens and the kept drafts; the draft what it read of the row
        cache.truncate(K + 1 - kept)
        if K and draft is not None:
            good = n + min(accepted, K - 1, kept)  # fed guesses that stayed in the row
            if dseen > good:
                dcache.truncate(dseen - good)
                dseen = good
        n, seen = n + kept, n + kept - 1
        if int(row[n - 1]) in eos or n - T >= max_new:
            break
    if streamer is not None:
        streamer.end()
    nbytes = cache.nbytes() + (0 if draft is None else dcache.nbytes())
    return GenerationOutput(sequences=seq[:, :n], stats=_stats(n - T, drafts, took, nbytes))


def _guessing(target, cache, heads, vocab: int):
    """The target's compiled step with the heads' greedy guesses (models.heads.compiled_guessing), or
    None: no heads, no such step, or logits wider than the vocabulary the guesses are picked from."""
    if heads is None or vocab != target.vocab_size:
        return None
    return compiled_guessing(target, cache, heads)


def _lookup(row: np.ndarray, n: int, k: int, max_ngram: int, vocab: int) -> tuple[int, np.ndarray | None]:
    """NgramProposer.propose for one row holding row[:n], its guesses written to row[n:n + K]: for
    m from max_ngram down to 1, the first earlier occurrence of the row's last m tokens (m < n) with
    a continuation; up to k tokens after it, ids >= vocab marked invalid (their count is K, as the
    general proposer counts). Returns (K, valid (K,) bool or None where all are)."""
    text = row[:n]
    for m in range(max_ngram, 0, -1):
        if n - m < 1:
            continue
        hits = (np.lib.stride_tricks.sliding_window_view(text[:n - 1], m) == text[n - m:]).all(1)
        if hits.any():
            start = int(hits.argmax()) + m
            break
    else:
        return 0, None
    guess = text[start:start + k].copy()
    ok = guess < vocab
    K = int(ok.sum())
    row[n:n + K] = np.where(ok[:K], guess[:K], 0)
    return K, None if ok[:K].all() else ok[:K].copy()


def _heads_guess(heads, hidden: Tensor, token: int, target, vocab: int) -> list[int]:
    """HeadsProposer's guesses after `token` from `hidden` (1, dim): each the first maximum of its
    head's logits (no processors on this path), kept as host ints as they are picked."""
    picked = []

    def pick(j, logits, guess):
        best = _host(logits)[:, :vocab].argmax(-1)
        picked.append(int(best[0]))
        return torch.from_numpy(best)
    heads.propose(hidden, torch.tensor([token]), target, pick)
    return picked


def _within(scores: np.ndarray, guess: int, top_k: int) -> bool:
    """blockwise.topk_accept for one position: the guess scores at least the top_k-th best (ties
    inside) and is not suppressed."""
    kth = kth_largest(scores, min(top_k, scores.shape[0]))[0]
    return bool(scores[guess] >= kth and scores[guess] > -np.inf)


def _confidence(logits: Tensor, qs: list, guess: int, vocab: int) -> float:
    """The draft's processed probability of its last guess, as the general loop computes it: the
    drawn token's under sampling, the largest one under greedy."""
    if qs:
        q = qs[-1]
        return row_sampling.prob(q, guess) if isinstance(q, row_sampling.Support) else float(q[0, guess])
    return float(logits[:, -1, :vocab].float().softmax(-1).amax())


def _round(draft: Tensor, scores: Tensor, nxt: int, accepted: int, kept: int) -> Round:
    tokens = torch.cat([draft, torch.tensor([[nxt]])], 1)
    tokens[0, accepted] = nxt
    counts = torch.tensor([[accepted, kept]])
    return Round(draft, scores, counts[:, 0], tokens, counts[:, 1], torch.ones(1, dtype=torch.bool))


def _stats(new: int, drafts: int, took: list[tuple[int, int]], nbytes: int) -> GenerationStats:
    """DecodeState.stats() of the same run: every round has its one row running."""
    rounds = len(took)
    most = max((K for K, _ in took), default=0)
    rates = []
    if most:
        proposed = [sum(K > i for K, _ in took) for i in range(most)]
        rates = [sum(a > i for _, a in took) / p if p else 0.0 for i, p in enumerate(proposed)]
    return GenerationStats(new_tokens=new, target_forwards=rounds, draft_forwards=drafts,
                           tau=new / rounds if rounds else 0.0, accept_rate_by_position=rates, kv_cache_bytes=nbytes)
