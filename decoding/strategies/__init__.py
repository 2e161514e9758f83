"""One module per algorithm family; `select` maps a resolved config to its `run` function.

Every `run(model, prompt, cfg, stop) -> GenerationOutput` takes a model behind the model protocol,
a `decoding.api.Prompt`, a resolved `GenerationConfig` and the stop-string checker (or None), and
drives a `decoding.state.DecodeState`.
"""
from __future__ import annotations

from . import greedy


def select(cfg):
    # beam search, speculative and parallel decoding slot in here as their issues land
    return greedy.run
