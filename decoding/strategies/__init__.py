"""One module per algorithm family; `select` maps a resolved config to its `run` function.

Every `run(model, prompt, cfg, stop) -> GenerationOutput` takes a model behind the model protocol,
a `decoding.api.Prompt`, a resolved `GenerationConfig` and the stop-string checker (or None), and
drives a `decoding.state.DecodeState`.
"""
from __future__ import annotations

from . import greedy, speculative


def select(cfg):
    if cfg.assistant_model is not None or cfg.prompt_lookup_num_tokens is not None:
        return speculative.run
    if cfg.strategy in ("jacobi", "gs_jacobi", "sjd"):
        from . import jacobi
        return jacobi.run
    if cfg.strategy == "blockwise":
        from . import blockwise
        return blockwise.run
    if cfg.num_beams > 1 and cfg.do_sample:
        from . import beam_sample
        return beam_sample.run
    if cfg.num_beams > 1:  # diverse beam search is beam search with groups
        from . import beam, diverse_beam
        return diverse_beam.run if cfg.num_beam_groups > 1 else beam.run
    return greedy.run
