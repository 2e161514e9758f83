"""What generate() returns (docs/DESIGN.md 2): sequences, optional scores, and fixed-name stats."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class GenerationStats:
    new_tokens: int = 0  # non-pad tokens generated, summed over rows (eos included)
    prefill_tokens: int = 0  # real prompt tokens run through the target
    target_forwards: int = 0  # forwards of the target model, prefill included
    draft_forwards: int = 0
    tau: float = 0.0  # tokens emitted per target forward a row took part in (accepted + bonus)
    accept_rate_by_position: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # the whole call, prefill included
    tokens_per_s: float = 0.0  # new_tokens / wall_s
    kv_cache_bytes: int = 0  # peak


@dataclass
class GenerationOutput:
    sequences: Tensor  # (B * num_return_sequences, prompt_len + new)
    scores: tuple[Tensor, ...] | None = None  # per step (B * n, V) processed scores, HF layout
    sequences_scores: Tensor | None = None  # beam modes
    # HF's other return_dict_in_generate fields (decoding.hf_call fills them for HF models)
    logits: tuple[Tensor, ...] | None = None  # per step (B * n, V) raw logits
    hidden_states: tuple | None = None  # per step, per layer
    attentions: tuple | None = None
    # beam search and beam sampling with return_dict_in_generate: (B * n, new) flat beam row behind
    # each token, -1 after
    beam_indices: Tensor | None = None
    cache: object = None  # HF's cache object (HF models, use_cache)
    stats: GenerationStats = field(default_factory=GenerationStats)
