"""Greedy decoding and multinomial sampling: one forward per token, HF 5.x's loop without its
per-step overhead (static shapes, processors only when on, no host sync but the stop check)."""
from __future__ import annotations

from .. import sampling
from ..finite import Guard
from ..output import GenerationOutput
from ..processors import Pipeline
from ..state import DecodeState


def run(model, prompt, cfg, stop=None) -> GenerationOutput:
    n = cfg.num_return_sequences
    device = prompt.ids.device
    pipeline = Pipeline(cfg, model.vocab_size, device)
    state = DecodeState(prompt.rows(n), prompt.mask_rows(n), max_new_tokens=cfg.max_new_tokens,
                        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, stop=stop,
                        streamer=cfg.streamer, seen_vocab=model.vocab_size if pipeline.needs_seen else 0)
    generator = sampling.make_generator(cfg.seed, cfg.generator, device)
    choose = sampling.sampler(cfg.do_sample, generator)
    # finished rows are fed pad, as HF does, unless pad is no valid input id
    feed_pad = cfg.pad_token_id is None or cfg.pad_token_id < prompt.embed_size
    scores_out = [] if cfg.output_scores else None

    cache = model.new_cache(prompt.batch_size, prompt.max_len + cfg.max_new_tokens)
    state.count_forward(lockstep=True)
    logits = model(prompt.ids, cache, attention_mask=prompt.mask, logits_to_keep=1)  # (B, 1, V)
    if n > 1:  # one prefill per prompt, then fan the cache out (rows b*n .. b*n+n-1, HF's layout)
        cache.repeat(n)
        logits = logits.repeat_interleave(n, 0)
    step_forward = model.forward_on(cache)  # the decode steps' forward, its checks done once
    guard = Guard.of(cfg, state.batch_size, device, per=n)
    # greedy on the raw logits: the guard's reduction is the argmax (torch.max's first maximum, as argmax)
    raw_argmax = guard is not None and not cfg.do_sample and not pipeline.active
    for step in range(cfg.max_new_tokens):
        bad = guard.check(logits[:, -1], step) if guard is not None else None
        scores = logits[:, -1].float()  # (B*n, V)
        if pipeline.active:
            scores = pipeline(scores, state.context())
        if scores_out is not None:
            scores_out.append(scores)
        chosen = guard.argmax if raw_argmax else choose(scores)
        tokens = state.append_one(chosen)
        if step + 1 == cfg.max_new_tokens:
            break
        done = state.finished.all() if bad is None else state.finished.all() | bad
        if bool(done):  # the one host sync per step
            break
        if not feed_pad:
            tokens = tokens.masked_fill(state.finished, 0)
        state.count_forward(lockstep=True)
        logits = step_forward(tokens[:, None])
    if guard is not None:
        guard.raise_if_bad()
    state.note_cache(cache)
    if cfg.streamer is not None:
        cfg.streamer.end()
    return GenerationOutput(sequences=state.output_sequences(),
                            scores=tuple(scores_out) if scores_out is not None else None,
                            stats=state.stats())
