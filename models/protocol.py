"""The two protocols every strategy talks to: a decoder model and its KV cache (docs/DESIGN.md 3).

Besides the operations, a model declares its capabilities: what the strategies would otherwise
have to find out by poking at it. A strategy reads them before any work and refuses a run the
model cannot do with an error naming the argument to change. `models.adapt.as_decoder` brings any
accepted model behind this protocol (Hugging Face causal LMs through the adapter; a native model
that declares only the operations gets the conservative defaults).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Cache(Protocol):
    lengths: Tensor  # int32 [B]: row b's tokens occupy slots [0, lengths[b])
    # truncate(n) may drop at most this many tokens below a row's high-water length (a ring of
    # recent keys, YOCO); None: any row back to any length
    max_rollback: int | None

    @property
    def batch_size(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    def truncate(self, n: int | Tensor) -> None: ...  # drop the last n positions (per row if a tensor)
    def reorder(self, index: Tensor) -> None: ...  # rows <- rows[index], same batch size
    def repeat(self, k: int) -> None: ...  # row b -> rows b*k .. b*k+k-1 (beam layout)
    def select(self, index: Tensor) -> None: ...  # keep rows[index]
    def nbytes(self) -> int: ...


@runtime_checkable
class DecoderModel(Protocol):
    vocab_size: int  # width of the logits
    embed_size: int  # input ids must lie below this (an HF embedding may be padded past vocab_size)
    device: torch.device
    max_positions: int | None  # longest row the model can position (prompt + generated); None: no limit
    # True: past max_positions the model still runs (HF models: HF's generate warns and goes on);
    # False: max_positions is a hard limit (native rope tables and caches end there)
    runs_past_max_positions: bool
    # the caches' truncate bound (Cache.max_rollback), known before a cache exists; None: unbounded
    max_rollback: int | None
    # a cache that forgets keys once a row holds this many slots (HF sliding-window layers): it rolls
    # back only in runs shorter than this, and only by the same count in every row; None: no such limit
    rollback_window: int | None
    # forward takes HF's per-call model inputs (token_type_ids, position_ids, inputs_embeds, a caller's
    # past cache) and records HF's per-step outputs: the HF adapter (models/hf_adapter.CallInputs)
    hf_passthrough: bool
    returns_hidden: bool  # forward(..., return_hidden=True) -> (logits, final-norm hidden (B, T', dim))
    generation_defaults: dict  # the model's own generation settings (eos/pad/bos at least, when known)

    def new_cache(self, batch_size: int, max_len: int, *, dtype=None, device=None) -> Cache: ...

    def forward(self, input_ids: Tensor, cache: Cache, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0) -> Tensor: ...

    # forward bound to one call's cache: (input_ids, attention_mask=None, logits_to_keep=0, **kw) ->
    # forward's output; a model may do its per-forward checks once here (default: bound_forward)
    def forward_on(self, cache: Cache) -> Callable: ...


CAPABILITIES = ("embed_size", "device", "max_positions", "runs_past_max_positions", "max_rollback",
                "rollback_window", "hf_passthrough", "returns_hidden", "generation_defaults", "forward_on")


def bound_forward(model, cache) -> Callable:
    """forward_on's default: the model's forward itself on `cache`."""
    return lambda ids, attention_mask=None, logits_to_keep=0, **kw: \
        model(ids, cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kw)


def special_tokens(config) -> dict:
    """generation_defaults of a native model: the special tokens its config names."""
    out = {}
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if value is not None:
            out[name] = value
    return out


def cache_overflow(cached: int, new: int, capacity: int) -> ValueError:
    """The one error every cache raises when a forward would write past its capacity."""
    return ValueError(f"cache overflow: {cached} cached + {new} new tokens > capacity {capacity}; "
                      "create the cache with a larger max_len")


def check_input_ids(input_ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """Validate ids before any work: 2-D integer tensor with every id in [0, vocab_size)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.LongTensor [B, T], got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold integer token ids (torch.long), got {input_ids.dtype}")
    if not input_ids.numel():
        return
    lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one read-back per forward
    if lo < 0 or hi >= vocab_size:
        bad = hi if hi >= vocab_size else lo
        raise ValueError(f"{name} holds token id {bad} outside the vocabulary [0, {vocab_size}); "
                         f"check the tokenizer matches the model")
