"""Diverse beam search (Vijayakumar et al., "Diverse Beam Search"), identical to transformers 4.55's
group beam search (`num_beam_groups=G`, `diversity_penalty=lambda`), which transformers 5.x dropped.

The N beams of a batch row form G contiguous groups of N/G. Each step the groups take turns: group g
runs one step of beam search on its own beams, its log-probabilities first lowered by lambda times
the number of times each token was just chosen by groups 0..g-1 of the same row (the Hamming
diversity term), then processed as in beam search. Each (row, group) keeps its own finished
hypotheses (`beam_hyps.Hypotheses`) with its own length penalty and early stopping; the answer is
the best of all groups. 4.55's quirks are kept: a (row, group) that is done takes pad tokens, score
0 and the cache of row 0's first beam of the group; an eos-ended hypothesis is written with
eos_token_id[0]; rows are padded with pad_token_id.

The model runs one forward per step for all B*N beams and the cache follows them with one
`cache.reorder` per step; the group loop is the algorithm's (group g reads groups < g).
"""
from __future__ import annotations

import torch

from ..beam_streamer import HypothesisFeed
from ..output import GenerationOutput
from .beam import BeamDecoder
from .beam_hyps import Hypotheses, best_of


def run(model, prompt, cfg, stop=None) -> GenerationOutput:
    B, N, G, L = prompt.batch_size, cfg.num_beams, cfg.num_beam_groups, cfg.max_new_tokens
    S = N // G  # beams per group
    dec = BeamDecoder(model, prompt, cfg, N, penalise_prompt_pads=True)  # 4.55 penalises pads too
    device, V = prompt.ids.device, dec.V
    eos = cfg.eos_token_id
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    K = max(2, 1 + len(eos or [])) * S  # candidates per (row, group)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    lam = float(cfg.diversity_penalty or 0.0)
    hyps = [[Hypotheses(S, cfg.length_penalty, cfg.early_stopping, L) for _ in range(G)] for _ in range(B)]
    done = torch.zeros(B, G, dtype=torch.bool, device=device)
    done_host = [[False] * G for _ in range(B)]

    tokens = torch.zeros(B, N, L, dtype=torch.long, device=device)  # generated tokens per beam
    beam_scores = torch.full((B, N), -1e9, device=device)
    beam_scores[:, ::S] = 0  # each group starts from its first beam
    row_base = torch.arange(B, device=device)[:, None]
    rank = torch.arange(K, device=device)
    feed = HypothesisFeed.of(cfg.streamer, prompt)
    scores_out = [] if cfg.output_scores else None

    logits = dec.prefill()
    for step in range(L):
        logp = torch.log_softmax(logits, dim=-1).view(B, N, V)
        chosen = torch.zeros(B, N, dtype=torch.long, device=device)  # this step's tokens, per beam
        index = torch.zeros(B, N, dtype=torch.long, device=device)  # cache reorder, per beam
        processed = torch.zeros(B, N, V, device=device) if scores_out is not None else None
        for g in range(G):
            beams = slice(g * S, (g + 1) * S)
            s = logp[:, beams]  # (B, S, V)
            if lam > 0 and g > 0:  # Hamming diversity: tokens the earlier groups just chose
                counts = torch.zeros(B, V, dtype=torch.long, device=device)
                counts.scatter_add_(1, chosen[:, :g * S], torch.ones_like(chosen[:, :g * S]))
                s = s - lam * counts[:, None, :]
            seen = None if dec.seen is None else dec.seen.view(B, N, V)[:, beams].reshape(B * S, V)

            def ids(g=g, step=step, beams=beams):  # 4.55's group_input_ids (B*S, T + step)
                prompt_rows = dec.rows.view(B, N, -1)[:, beams].reshape(B * S, -1)
                return torch.cat([prompt_rows, tokens[:, beams, :step].reshape(B * S, step)], 1)
            s = dec.process(s.reshape(B * S, V), step, seen, ids).view(B, S, V)
            if processed is not None:
                processed[:, beams] = s
            acc = (s + beam_scores[:, beams, None]).view(B, S * V)
            top_scores, top_idx = torch.topk(acc, K, dim=1, largest=True, sorted=True)  # (B, K)
            parent, token = torch.div(top_idx, V, rounding_mode="floor"), top_idx % V
            is_eos = torch.isin(token, eos_t) if eos_t is not None else torch.zeros_like(token, dtype=torch.bool)

            # eos candidates among the top S become hypotheses (host side, in rank order)
            ending = is_eos & (rank < S) & ~done[:, g:g + 1]
            if bool(ending.any()):
                _add_hypotheses(hyps, g, ending, top_scores, parent, tokens[:, beams], step)
            # the S best candidates that do not end in eos run on
            take = (is_eos.long() * K + rank).argsort(dim=1)[:, :S]  # (B, S)
            next_scores = top_scores.gather(1, take)
            next_tokens = token.gather(1, take)
            source = parent.gather(1, take) + row_base * S  # index among the group's B*S beams
            gone = done[:, g:g + 1]
            next_scores = next_scores.masked_fill(gone, 0.0)
            next_tokens = next_tokens.masked_fill(gone, pad)
            source = source.masked_fill(gone, 0)  # 4.55: a done row takes beam 0 of the batch

            best = top_scores[:, 0].tolist()  # 4.55: next_scores[row].max()
            for b in range(B):
                if not done_host[b][g] and hyps[b][g].is_done(best[b], step + 1):
                    done_host[b][g] = True
            done[:, g] = torch.tensor([d[g] for d in done_host], device=device)

            group_tokens = tokens[:, beams].reshape(B * S, L)[source.view(-1)].view(B, S, L)
            group_tokens[:, :, step] = next_tokens
            tokens[:, beams] = group_tokens
            beam_scores[:, beams] = next_scores
            chosen[:, beams] = next_tokens
            index[:, beams] = N * torch.div(source, S, rounding_mode="floor") + g * S + source % S
        if scores_out is not None:
            scores_out.append(processed.view(B * N, V))
        dec.reorder(index.view(-1))
        if feed is not None:
            feed.step(_best_now(hyps, tokens, beam_scores, step + 1, cfg.length_penalty))
        if all(all(d) for d in done_host) or step + 1 >= L:
            break
        flat = chosen.view(-1)
        dec.mark(flat)
        logits = dec.forward(dec.feed(flat, done.repeat_interleave(S, 1).view(-1)))
    n_steps = step + 1

    # rows still searching at max length: their running beams become hypotheses too
    run_host, scores_host = tokens[:, :, :n_steps].tolist(), beam_scores.tolist()
    for b in range(B):
        for g in range(G):
            if not done_host[b][g]:
                for i in range(g * S, (g + 1) * S):
                    hyps[b][g].add(run_host[b][i], scores_host[b][i], n_steps)
    n = cfg.num_return_sequences
    winners = [h for b in range(B) for h in best_of(hyps[b], n)]
    sequences, new_tokens = _write(winners, prompt.rows(n), L, pad, eos)
    if feed is not None:
        width = sequences.shape[1] - prompt.width
        new = sequences[:, prompt.width:]
        lengths = torch.tensor([min(len(t) + 1, width) for _, t in winners], device=device)
        feed.finish(new, lengths, n)
    return GenerationOutput(
        sequences=sequences, scores=tuple(scores_out) if scores_out is not None else None,
        sequences_scores=torch.tensor([s for s, _ in winners], dtype=torch.float32, device=device)
        if cfg.output_scores else None,
        stats=dec.stats(new_tokens))


def _add_hypotheses(hyps, g, ending, top_scores, parent, group_tokens, step) -> None:
    """The eos candidates (B, K) that end their beam: hypothesis = the parent's tokens (without
    the eos), scored over step + 1 generated tokens."""
    rows, ranks = ending.nonzero(as_tuple=True)  # row-major: rank order within a row
    scores = top_scores[rows, ranks].tolist()
    prefixes = group_tokens[rows, parent[rows, ranks], :step].tolist()
    for b, score, prefix in zip(rows.tolist(), scores, prefixes):
        hyps[b][g].add(prefix, score, step + 1)


def _write(winners, prompt_rows, max_new: int, pad: int, eos) -> tuple[torch.Tensor, int]:
    """4.55's finalize: each hypothesis, eos_token_id[0] after those that ended early, pad after
    that; the new tokens' width = longest + 1, at most max_new_tokens (a row: at most the prompt +
    max_new_tokens)."""
    longest = max(len(t) for _, t in winners)
    width = min(longest + 1, max_new)
    new = torch.full((len(winners), width), pad, dtype=torch.long)
    count = 0
    for i, (_, t) in enumerate(winners):
        new[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        count += len(t)
        if len(t) < width:
            new[i, len(t)] = eos[0]
            count += 1
    return torch.cat([prompt_rows, new.to(prompt_rows.device)], 1), count


def _best_now(hyps, tokens, beam_scores, n_gen, lp) -> list[list[int]]:
    """Per row, the best finished hypothesis over all groups, or the best running beam if it
    scores higher at its current length."""
    running = (beam_scores / (n_gen ** lp)).max(1)
    run_scores, run_beam = running.values.tolist(), running.indices.tolist()
    out = []
    for b, groups in enumerate(hyps):
        finished = [h for g in groups for h in g.items]
        top = max(finished, key=lambda h: h[0]) if finished else None
        if top is not None and top[0] >= run_scores[b]:
            out.append(top[1])
        else:
            out.append(tokens[b, run_beam[b], :n_gen].tolist())
    return out
