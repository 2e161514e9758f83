"""Beam sampling (do_sample=True, num_beams > 1), as Hugging Face transformers 5.x draws it: beam
search whose processed log-probs also pass the sampling warpers (temperature, top-k, top-p, min-p,
each keeping at least n_eos + 1 tokens so a beam can always go on), and whose K candidates per row
are drawn without replacement from softmax(accumulated scores) with torch.multinomial, then sorted
best first. The draw is HF's own call on the same probabilities, so under the same seed (torch's
global RNG, or `generator=`) it picks the same candidates.
"""
from __future__ import annotations

import torch

from .. import processors, sampling
from . import beam


def run(model, prompt, cfg, stop=None):
    keep = len(cfg.eos_token_id) + 1 if cfg.eos_token_id else 2
    generator = sampling.make_generator(cfg.seed, cfg.generator, prompt.ids.device)

    warp = processors.Warpers(cfg, min_keep=keep)

    def select(acc, k):
        idx = torch.multinomial(acc.softmax(-1), k, generator=generator)
        top, order = acc.gather(1, idx).sort(dim=-1, descending=True)
        return top, idx.gather(1, order)

    plain = _without_warpers(cfg)
    return beam.run(model, prompt, plain, stop, warp=warp, select=select)


def _without_warpers(cfg):
    """The config the beam search's processor pipeline reads: the warpers run in `warp` instead,
    after the processors, with HF's beam minimum of tokens kept."""
    import copy
    plain = copy.copy(cfg)
    plain.do_sample = False
    return plain
