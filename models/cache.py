"""Static, preallocated KV cache with per-row lengths and no stored pads (docs/DESIGN.md 3.2)."""
from __future__ import annotations

import torch
from torch import Tensor

from .protocol import cache_overflow


class StaticCache:
    """K/V of every layer in `[B, H_kv, S_max, D]` buffers; row b's tokens live in slots [0, lengths[b]).

    Truncation is a change of `lengths` only, so decode steps keep fixed shapes (CUDA graphs).
    Slots past a row's length hold garbage and are never attended to.
    """
    max_rollback = None  # capability (models/protocol.py): any row truncates to any length

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 *, dtype=torch.float32, device=None):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.graphs: dict = {}  # CUDA graphs recorded on these buffers (models/compiled.py)
        self._spare: list | None = None  # CPU reorder's second set of buffers (allocated by the first reorder)
        self._index: tuple | None = None  # (slots, scatter index) of the current forward

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    @property
    def dtype(self):
        return self.k[0].dtype

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v + (self._spare or []))

    # -- writes -------------------------------------------------------------------------------
    def slots_for(self, mask: Tensor) -> Tensor:
        """Slot of each new token (mask [B, T], 1 = real). Real tokens go to [len_b, len_b + n_b);
        pads go to the scratch slots after them, which stay invisible."""
        T = mask.shape[1]
        longest = int(self.lengths.max())
        if longest + T > self.capacity:
            raise cache_overflow(longest, T, self.capacity)
        rank = mask.long().cumsum(1) - 1  # (B, T) index among the row's real tokens
        n = mask.long().sum(1, keepdim=True)
        pad_rank = n + (1 - mask.long()).cumsum(1) - 1
        return self.lengths.long()[:, None] + torch.where(mask.bool(), rank, pad_rank)

    def append_slots(self, T: int) -> tuple[Tensor, int]:
        """Slots (B, T) of T real tokens per row appended at each row's length, and the longest
        row's length before them. The mask-free case of slots_for in two ops and one read-back."""
        longest = int(self.lengths.max())
        if longest + T > self.capacity:
            raise cache_overflow(longest, T, self.capacity)
        return self.lengths.long()[:, None] + torch.arange(T, device=self.lengths.device), longest

    def write(self, layer: int, k: Tensor, v: Tensor, slots: Tensor) -> None:
        """k, v: (B, H_kv, T, D) written at `slots` (B, T)."""
        if self._index is None or self._index[0] is not slots:  # built once per forward, not per layer
            self._index = (slots, slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3]))
        idx = self._index[1]
        self.k[layer].scatter_(2, idx, k if k.dtype == self.dtype else k.to(self.dtype))
        self.v[layer].scatter_(2, idx, v if v.dtype == self.dtype else v.to(self.dtype))

    def advance(self, n_new: Tensor) -> None:
        self.lengths += n_new.to(torch.int32)

    # -- operations of the cache protocol ----------------------------------------------------
    def truncate(self, n) -> None:
        n = torch.as_tensor(n, dtype=torch.int32, device=self.lengths.device).expand_as(self.lengths)
        if bool((n < 0).any()) or bool((n > self.lengths).any()):
            raise ValueError(f"truncate(n): n must lie in [0, length] per row; lengths "
                             f"{self.lengths.tolist()}, n {n.tolist()}")
        self.lengths -= n

    def _check_index(self, index: Tensor, name: str) -> Tensor:
        index = torch.as_tensor(index, dtype=torch.long, device=self.lengths.device)
        if index.dim() != 1 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.batch_size)):
            raise IndexError(f"{name}: index must be 1-D with values in [0, {self.batch_size}), "
                             f"got {index.tolist()}")
        return index

    def reorder(self, index: Tensor) -> None:
        index = self._check_index(index, "reorder")
        if index.numel() != self.batch_size:
            raise ValueError(f"reorder keeps the batch size {self.batch_size}; use select() to change it")
        if self.lengths.is_cuda:  # in place: buffers keep their addresses for CUDA graphs
            L = int(self.lengths.max())  # only the filled slots move
            for buf in self.k + self.v:
                buf[:, :, :L] = buf[:, :, :L].index_select(0, index)
        else:  # one gather into spare buffers, then swap: half the copying of a beam step on CPU
            bufs = self.k + self.v
            if self._spare is None:
                self._spare = [torch.empty_like(b) for b in bufs]
            for src, dst in zip(bufs, self._spare):
                torch.index_select(src, 0, index, out=dst)
            n = len(self.k)
            self.k, self.v, self._spare = self._spare[:n], self._spare[n:], bufs
        self.lengths.copy_(self.lengths.index_select(0, index))

    def select(self, index: Tensor) -> None:
        index = self._check_index(index, "select")
        self.k = [b.index_select(0, index) for b in self.k]
        self.v = [b.index_select(0, index) for b in self.v]
        self.lengths = self.lengths.index_select(0, index)
        self.graphs = {}  # new buffers: recorded graphs point at the old ones
        self._spare = None

    def repeat(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"repeat(k) needs k >= 1, got {k}")
        self.select(torch.arange(self.batch_size, device=self.lengths.device).repeat_interleave(k))
