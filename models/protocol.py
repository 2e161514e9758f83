"""The two protocols every strategy talks to: a decoder model and its KV cache (DESIGN.md 3.2-3.3)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Cache(Protocol):
    lengths: Tensor  # int32 [B]: row b's tokens occupy slots [0, lengths[b])

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
    vocab_size: int

    def new_cache(self, batch_size: int, max_len: int, *, dtype=None, device=None) -> Cache: ...

    def forward(self, input_ids: Tensor, cache: Cache, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0) -> Tensor: ...


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
