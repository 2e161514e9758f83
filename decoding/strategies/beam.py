"""Beam search, token-identical to Hugging Face transformers 5.x `generate(num_beams=N)`.

Each step, the N running beams of a batch row propose N x V continuations scored by accumulated
(processed) log-probability. The best K = max(2, 1 + n_eos) x N are kept, so at least N of them do
not stop. The N best that did not stop run on; those among the top N that stopped (eos, max length)
compete, length-penalised (score / generated_len ** length_penalty, eos counted), for the N slots
of finished hypotheses. early_stopping True stops a row once its N slots are full; False and "never"
stop it when no running beam can beat the worst finished hypothesis (HF's bounds, see `_still_open`).

Everything is tensor ops over (B, N, ...) with static shapes; the KV cache follows its beams with
one `cache.reorder` gather per step. The arithmetic (the added -1e9 masks, the order of additions,
topk over the same shapes) is HF's, so ties and float32 rounding resolve as they do in HF.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..beam_streamer import HypothesisFeed
from ..finite import Guard
from ..output import GenerationOutput, GenerationStats
from ..processors import Context, Pipeline

NEG = -1.0e9  # HF's "impossible" score; added (never assigned) so float32 rounds as in HF


class BeamDecoder:
    """The model side of beam and diverse beam search: one prefill per prompt fanned out to its N
    beams (rows b*N .. b*N+N-1, HF's layout), one forward per step, one cache reorder per step,
    and what the processors read about each beam (seen tokens, HF-style ids)."""

    def __init__(self, model, prompt, cfg, num_beams: int, *, penalise_prompt_pads: bool = False):
        self.model, self.prompt, self.N = model, prompt, num_beams
        self.B, self.V = prompt.batch_size, model.vocab_size
        device = prompt.ids.device
        self.pipeline = Pipeline(cfg, self.V, device)
        self.rows = prompt.rows(num_beams)  # (B*N, T) prompts as given, pads included
        self.cache = model.new_cache(self.B, prompt.max_len + cfg.max_new_tokens)
        self.forwards = 0
        pad = cfg.pad_token_id
        self.feed_pad = 0 if pad is None or pad >= prompt.embed_size else pad  # finished rows (diverse)
        self.seen = None  # (B*N, V) bool, for the repetition penalty
        if self.pipeline.needs_seen:
            ids, mask = self.rows, prompt.mask_rows(num_beams)
            if mask is not None and not penalise_prompt_pads:  # HF 5.x skips the left pads
                ids = ids.masked_fill(mask.long().cumsum(1) == 0, self.V)  # holes count
            self.seen = self._hits(ids)

    def _hits(self, ids: Tensor) -> Tensor:
        """(R, n) ids -> (R, V) bool of the ids below V."""
        hit = torch.zeros(ids.shape[0], self.V + 1, dtype=torch.bool, device=ids.device)
        return hit.scatter_(1, ids.clamp(0, self.V), True)[:, :self.V]

    def prefill(self) -> Tensor:
        """Logits (B*N, V) float32 of each beam's first position (one forward per prompt)."""
        p = self.prompt
        logits = self.model(p.ids, self.cache, attention_mask=p.mask, logits_to_keep=1)[:, -1]  # (B, V)
        self.forwards += 1
        self.cache.repeat(self.N)
        self.step = self.model.forward_on(self.cache)  # the decode steps' forward, its checks done once
        return logits.float().repeat_interleave(self.N, 0)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B*N,) -> logits (B*N, V) float32 of the next position."""
        self.forwards += 1
        return self.step(tokens[:, None])[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        """Beams <- beams[index] (B*N,): the cache and the seen tokens follow their beams."""
        self.cache.reorder(index)
        if self.seen is not None:
            self.seen = self.seen[index]

    def mark(self, tokens: Tensor) -> None:
        """The tokens (B*N,) each beam just took count as seen."""
        if self.seen is not None:
            self.seen |= self._hits(tokens[:, None])

    def process(self, logp: Tensor, step: int, seen: Tensor | None, ids) -> Tensor:
        """Log-probs (R, V) -> processed scores (R, V): penalties, min_new_tokens, callables."""
        return self.pipeline(logp, Context(n_new=step, seen=seen, ids=ids))

    def feed(self, tokens: Tensor, finished: Tensor | None = None) -> Tensor:
        """What the model reads for tokens (B*N,): pads of finished rows made valid ids."""
        return tokens if finished is None else tokens.masked_fill(finished, self.feed_pad)

    def stats(self, new_tokens: int) -> GenerationStats:
        # every forward extends every beam by one token
        return GenerationStats(new_tokens=new_tokens, target_forwards=self.forwards, tau=1.0,
                               kv_cache_bytes=self.cache.nbytes())


@dataclass
class Finished:
    """The N best finished hypotheses of each row, best first (HF's `sequences` / `beam_scores`)."""
    tokens: Tensor  # (B, N, L) generated tokens, fill after the eos
    scores: Tensor  # (B, N) length-penalised; -1e9 in empty slots
    lengths: Tensor  # (B, N) generated tokens, eos included
    done: Tensor  # (B, N) bool: the slot holds a hypothesis
    # (B, N, L) int32 HF's beam_indices: the flat beam row behind each token, -1 after; None unless
    # return_dict_in_generate asked for it (HF's output is the only reader)
    beams: Tensor | None

    def merge(self, cand: Tensor, cand_scores: Tensor, n_gen: int, just: Tensor,
              cand_beams: Tensor | None) -> "Finished":
        """Keep the N best of the current ones and the candidates (B, K, L), whose scores
        (B, K) carry -1e9 unless they just finished (just (B, K))."""
        B, N, L = self.tokens.shape
        best = torch.topk(torch.cat([self.scores, cand_scores], 1), k=N)[1]  # (B, N)
        best_l = best[:, :, None].expand(B, N, L)
        return Finished(torch.cat([self.tokens, cand], 1).gather(1, best_l),
                        torch.cat([self.scores, cand_scores], 1).gather(1, best),
                        torch.cat([self.lengths, self.lengths.new_full(just.shape, n_gen)], 1).gather(1, best),
                        torch.cat([self.done, just], 1).gather(1, best),
                        None if self.beams is None else torch.cat([self.beams, cand_beams], 1).gather(1, best_l))


def _still_open(open_: Tensor, run_scores: Tensor, fin: Finished, n_gen: int, max_new: int, cfg) -> Tensor:
    """HF's early-stop heuristic: (B, 1) True while the best running beam, at its best attainable
    length, may still beat the worst finished hypothesis ("never" with a positive length penalty
    bounds the length by max_new_tokens; otherwise by the current length)."""
    lp = cfg.length_penalty
    best_len = max_new if cfg.early_stopping == "never" and lp > 0.0 else n_gen
    best_running = run_scores[:, :1] / (best_len ** lp)
    worst_finished = torch.where(fin.done, torch.min(fin.scores, dim=1, keepdim=True)[0], NEG)
    return open_ & torch.any(best_running > worst_finished, dim=-1, keepdim=True)


def run(model, prompt, cfg, stop=None, *, warp=None, select=None) -> GenerationOutput:
    """Beam search; beam sampling (strategies/beam_sample.py) passes `warp` (its sampling warpers,
    applied after the processors) and `select` (its draw of the K candidates in place of top-K)."""
    B, N, L = prompt.batch_size, cfg.num_beams, cfg.max_new_tokens
    dec = BeamDecoder(model, prompt, cfg, N)
    device, V = prompt.ids.device, dec.V
    eos = cfg.eos_token_id
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    K = max(2, 1 + len(eos or [])) * N  # candidates kept per row: >= N that do not end in eos
    lp, early = cfg.length_penalty, cfg.early_stopping
    fill = (cfg.pad_token_id or eos[0]) if eos else -1  # HF 5.x: a pad id of 0 is falsy -> eos

    run_tokens = torch.full((B, N, L), fill, dtype=torch.long, device=device)  # generated tokens only
    run_scores = torch.zeros(B, N, device=device)
    run_scores[:, 1:] = NEG  # the N beams start identical: only beam 0 may expand at first
    run_beams = torch.full((B, N, L), -1, dtype=torch.int32, device=device) if cfg.return_dict_in_generate else None
    fin = Finished(run_tokens.clone(), torch.full((B, N), NEG, device=device),
                   torch.zeros(B, N, dtype=torch.long, device=device),
                   torch.zeros(B, N, dtype=torch.bool, device=device),
                   None if run_beams is None else run_beams.clone())
    open_ = torch.ones(B, 1, dtype=torch.bool, device=device)
    top_n = torch.arange(K, device=device) < N  # only the top N candidates may finish
    row_base = torch.arange(B, device=device)[:, None] * N
    feed = HypothesisFeed.of(cfg.streamer, prompt)
    scores_out = [] if cfg.output_scores else None

    logits = dec.prefill()
    guard = Guard.of(cfg, B * N, device, per=N, what="beam")
    for step in range(L):
        bad = guard.check(logits, step) if guard is not None else None
        def ids(step=step):  # HF-style input_ids (B*N, T + step) for the caller's processors
            return torch.cat([dec.rows, run_tokens.view(B * N, L)[:, :step]], 1)
        logp = dec.process(torch.log_softmax(logits, dim=-1), step, dec.seen, ids)  # (B*N, V)
        if warp is not None:
            logp = warp(logp)
        if scores_out is not None:
            scores_out.append(logp)
        acc = (logp.view(B, N, V) + run_scores[:, :, None]).view(B, N * V)
        top_scores, top_idx = torch.topk(acc, K) if select is None else select(acc, K)  # (B, K) sorted
        parent, token = top_idx // V, top_idx % V
        cand = run_tokens.gather(1, parent[:, :, None].expand(B, K, L))  # (B, K, L)
        cand[:, :, step] = token
        cand_beams = None
        if run_beams is not None:
            cand_beams = run_beams.gather(1, parent[:, :, None].expand(B, K, L))
            cand_beams[:, :, step] = (parent + row_base).to(torch.int32)
        last = step + 1 >= L
        if last:
            stopped = torch.ones_like(token, dtype=torch.bool)
        elif eos_t is None:
            stopped = torch.zeros_like(token, dtype=torch.bool)
        else:
            stopped = token == eos_t[0] if len(eos) == 1 else torch.isin(token, eos_t)

        # the N best candidates that did not stop run on
        run_k = top_scores + stopped.to(torch.float32) * NEG
        keep = torch.topk(run_k, k=N)[1]  # (B, N)
        run_tokens = cand.gather(1, keep[:, :, None].expand(B, N, L))
        if run_beams is not None:
            run_beams = cand_beams.gather(1, keep[:, :, None].expand(B, N, L))
        run_scores = run_k.gather(1, keep)

        # the top-N candidates that stopped compete with the finished hypotheses
        just = stopped & top_n[None, :]
        cand_scores = top_scores / ((step + 1) ** lp)
        cand_scores += (torch.all(fin.done, dim=-1, keepdim=True) & (early is True)).to(torch.float32) * NEG
        cand_scores += (~open_).to(torch.float32) * NEG
        cand_scores += (~just) * NEG
        fin = fin.merge(cand, cand_scores, step + 1, just, cand_beams)

        dec.reorder((parent.gather(1, keep) + row_base).view(-1))  # one gather of the cache
        open_ = _still_open(open_, run_scores, fin, step + 1, L, cfg)
        if feed is not None:
            feed.step(_best_now(run_tokens, run_scores, fin, step + 1, lp))
        # HF also stops when every candidate stopped: only at max length, since at most n_eos x N
        # of the K = (1 + n_eos) x N candidates can end in eos
        go_on = open_.any() & ~(fin.done.all() & (early is True))
        if bad is not None:
            go_on = go_on & ~bad
        if last or not bool(go_on):  # the one host sync per step
            break
        tokens = run_tokens[:, :, step].reshape(B * N)
        dec.mark(tokens)
        logits = dec.forward(tokens)

    if guard is not None:
        guard.raise_if_bad()
    n = cfg.num_return_sequences
    lengths = fin.lengths[:, :n].reshape(B * n)
    width = int(lengths.max())
    new = fin.tokens[:, :n].reshape(B * n, L)[:, :width]
    sequences = torch.cat([prompt.rows(n), new], 1)
    if feed is not None:
        feed.finish(new, lengths, n)
    return GenerationOutput(sequences=sequences, scores=tuple(scores_out) if scores_out is not None else None,
                            sequences_scores=fin.scores[:, :n].reshape(B * n) if cfg.output_scores else None,
                            beam_indices=None if fin.beams is None else fin.beams[:, :n].reshape(B * n, L)[:, :width],
                            stats=dec.stats(int(lengths.sum())))


def _best_now(run_tokens, run_scores, fin: Finished, n_gen: int, lp) -> list[list[int]]:
    """Per row, the hypothesis that would win if the search ended now: the best finished one
    unless the best running beam scores higher at its current length."""
    running = run_scores[:, 0] / (n_gen ** lp)
    use_fin = fin.done[:, 0] & (fin.scores[:, 0] >= running)
    lengths = torch.where(use_fin, fin.lengths[:, 0], n_gen).tolist()
    tokens = torch.where(use_fin[:, None], fin.tokens[:, 0], run_tokens[:, 0]).tolist()
    return [t[:n] for t, n in zip(tokens, lengths)]
