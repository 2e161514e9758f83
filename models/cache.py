"""Static, preallocated KV cache with per-row lengths and no stored pads (docs/DESIGN.md 3.2)."""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from .protocol import cache_overflow


class StaticCache:
    """K/V of every layer in `[B, H_kv, S_max, D]` buffers; row b's tokens live in slots [0, lengths[b]).

    Truncation is a change of `lengths` only, so decode steps keep fixed shapes (CUDA graphs).
    Slots past a row's length hold garbage and are never attended to.

    `longest` is a host-side upper bound on max(lengths), kept without a read-back of its own:
    appends raise it by their width, a truncation sets it exactly (its bounds check reads the new
    maximum in the same read), a reorder or select leaves it (still a bound). Overflow checks and
    the attention's key range use it; the lengths are read back only when the bound says a forward
    might overflow (then it is made exact again).
    """
    max_rollback = None  # capability (models/protocol.py): any row truncates to any length

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 *, dtype=torch.float32, device=None):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self._lengths = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.longest, self.exact = 0, True  # host bound on max(lengths); True while it is equal to it
        self.graphs: dict = {}  # CUDA graphs recorded on these buffers (models/compiled.py)
        self._spare: list | None = None  # CPU reorder's second set of buffers (allocated by the first reorder)
        self._index: tuple | None = None  # (slots, row index) of the current forward
        # the compiled CPU step reads keys [0, longest) only: it gets the bound as the size of a view
        # of this buffer (sizes are its dynamic inputs), not the capacity (a step then costs by the
        # context held, not by the room reserved for max_new_tokens)
        self._bound = torch.empty(max_len, dtype=torch.uint8, device=device)
        self.key_range = None  # inside a traced step: that size (<= capacity); None elsewhere

    @property
    def lengths(self) -> Tensor:
        return self._lengths

    @lengths.setter
    def lengths(self, value: Tensor) -> None:  # a new tensor from outside: its bound is unknown
        self._lengths = value
        self.longest, self.exact = None, False

    def sync_longest(self) -> int:
        """Make the host bound exact (one read-back) and return it."""
        self.longest, self.exact = int(self._lengths.max()), True
        return self.longest

    def reserve(self, T: int) -> int:
        """Room for T more tokens per row: the bound on the longest row before them. Raises on
        overflow before any work; reads the lengths back only when the bound says it might."""
        if self.longest is None or self.longest + T > self.capacity:
            self.sync_longest()
            if self.longest + T > self.capacity:
                raise cache_overflow(self.longest, T, self.capacity)
        before = self.longest
        self.longest += T
        return before

    @property
    def batch_size(self) -> int:
        return self._lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    @property
    def readable(self):
        """Keys a fixed-shape step attends over (masked past each row's length): the traced
        key range, else the whole capacity (CUDA graphs keep one shape)."""
        return self.capacity if self.key_range is None else self.key_range

    @property
    def traced(self) -> bool:
        """Inside the compiled CPU step's trace (a cache from from_state): attention runs fused."""
        return self.key_range is not None

    @property
    def dtype(self):
        return self.k[0].dtype

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v + (self._spare or []))

    # -- the compiled step's view (models/compiled_cpu.py) ------------------------------------
    def step_state(self) -> list[Tensor]:
        """The tensors a fixed-shape step reads and writes: lengths, every layer's K, V, then a view
        whose size is the host bound on the longest row (call after reserve())."""
        bound = self.capacity if self.longest is None else min(self.longest, self.capacity)
        return [self._lengths, *self.k, *self.v, self._bound[:bound]]

    def step_dims(self) -> list[dict[int, str]]:
        """Dynamic dimensions of step_state: B (batch), S (capacity), L (the key range)."""
        return [{0: "B"}] + [{0: "B", 2: "S"}] * (2 * len(self.k)) + [{0: "L"}]

    def from_state(self, state: list[Tensor]) -> "StaticCache":
        """This cache over other tensors laid out as step_state (for tracing)."""
        c, n = copy.copy(self), len(self.k)
        c._lengths, c.k, c.v, c._index, c.graphs = state[0], list(state[1:1 + n]), list(state[1 + n:1 + 2 * n]), None, {}
        # step_state's bound never exceeds the capacity; told so, the trace's sizes are the bound itself
        # rather than min(bound, capacity) (simpler symbolic sizes: a shorter build)
        c.key_range = state[1 + 2 * n].shape[0]
        torch._check(c.key_range <= c.capacity)
        return c

    # -- writes -------------------------------------------------------------------------------
    def slots_for(self, mask: Tensor) -> Tensor:
        """Slot of each new token (mask [B, T], 1 = real). Real tokens go to [len_b, len_b + n_b);
        pads go to the scratch slots after them, which stay invisible."""
        self.reserve(mask.shape[1])
        self.exact = False  # rows with pads grow by less than T
        rank = mask.long().cumsum(1) - 1  # (B, T) index among the row's real tokens
        n = mask.long().sum(1, keepdim=True)
        pad_rank = n + (1 - mask.long()).cumsum(1) - 1
        return self.lengths.long()[:, None] + torch.where(mask.bool(), rank, pad_rank)

    def append_slots(self, T: int) -> tuple[Tensor, int]:
        """Slots (B, T) of T real tokens per row appended at each row's length, and the bound on the
        longest row's length before them. The mask-free case of slots_for in two ops, no read-back."""
        longest = self.reserve(T)
        return self.lengths.long()[:, None] + torch.arange(T, device=self.lengths.device), longest

    def write(self, layer: int, k: Tensor, v: Tensor, slots: Tensor) -> None:
        """k, v: (B, T, H_kv, D), as the projections make them, written at `slots` (B, T)."""
        if self._index is None or self._index[0] is not slots:  # built once per forward, not per layer
            self._index = (slots, torch.arange(slots.shape[0], device=slots.device)[:, None])
        rows = self._index[1]
        # an index_put, not a scatter: a compiled step (models/compiled_cpu.py) then writes the cache
        # in place; a scatter into a graph input is copied whole, in and out, every layer and step
        # (rows, :, slots) puts the indexed dims first: the value is (B, T, H_kv, D) as it comes, no
        # transposes; a cast only where the dtypes differ (each op is a node of the compiled step's graph)
        self.k[layer][rows, :, slots] = k if k.dtype == self.dtype else k.to(self.dtype)
        self.v[layer][rows, :, slots] = v if v.dtype == self.dtype else v.to(self.dtype)

    def advance(self, n_new: Tensor | int) -> None:
        """Lengths += n_new (per row): tokens a forward wrote after reserve()."""
        self._lengths += n_new if isinstance(n_new, int) else n_new.to(torch.int32)

    # -- operations of the cache protocol ----------------------------------------------------
    def truncate(self, n) -> None:
        """Drop the last n tokens (per row if a tensor). The bounds check's one read-back also brings
        back the new longest length, so the host bound stays exact: a step's attention reads keys up
        to it, and a loose bound (it grew by every verify's width) cost each later step. One row
        whose bound is exact and a host int n: the bound is its length, so no check or read-back."""
        if isinstance(n, int) and self.exact and self.longest is not None and self.batch_size == 1:
            if not 0 <= n <= self.longest:
                raise ValueError(f"truncate(n): n must lie in [0, length] per row; lengths [{self.longest}], n {n}")
            self._lengths -= n
            self.longest -= n
            return
        _, left, top, _ = self.checked_truncation(n)
        self.set_lengths(left, top)

    def checked_truncation(self, n, floor: Tensor | None = None) -> tuple[Tensor, Tensor, int, bool]:
        """A truncate's checks, nothing changed: n as (B,) int32, the lengths left, their maximum and
        whether a row would go below `floor` (B,) (False without one), all in one read-back; raises
        where n lies outside [0, length] (before any floor)."""
        n = torch.as_tensor(n, dtype=torch.int32, device=self.lengths.device).expand_as(self.lengths)
        left = self._lengths - n
        probe = [((n < 0) | (left < 0)).any().int(), left.max()]
        if floor is not None:
            probe.append((left < floor).any().int())
        bad, top, *deep = torch.stack(probe).tolist()
        if bad:
            raise ValueError(f"truncate(n): n must lie in [0, length] per row; lengths "
                             f"{self.lengths.tolist()}, n {n.tolist()}")
        return n, left, top, bool(deep and deep[0])

    def set_lengths(self, lengths: Tensor, longest: int) -> None:
        """A truncate's end, its checks done by the caller (checked_truncation): the new lengths (B,),
        at most the old ones, and their maximum, read back in that check."""
        self._lengths.copy_(lengths)
        self.longest, self.exact = longest, True

    def _check_index(self, index: Tensor, name: str) -> Tensor:
        index = torch.as_tensor(index, dtype=torch.long, device=self.lengths.device)
        bad = index.dim() != 1
        if not bad and index.numel():
            low, high = torch.stack([index.min(), index.max()]).tolist()  # one read-back for both bounds
            bad = low < 0 or high >= self.batch_size
        if bad:
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
        self._lengths.copy_(self._lengths.index_select(0, index))
        self.exact = False  # rows may repeat or drop: the bound holds, equality may not

    def select(self, index: Tensor) -> None:
        index = self._check_index(index, "select")
        self.k = [b.index_select(0, index) for b in self.k]
        self.v = [b.index_select(0, index) for b in self.v]
        self._lengths = self._lengths.index_select(0, index)  # the bound still holds
        self.exact = False
        self.graphs = {}  # new buffers: recorded graphs point at the old ones
        self._spare = None

    def repeat(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"repeat(k) needs k >= 1, got {k}")
        self.select(torch.arange(self.batch_size, device=self.lengths.device).repeat_interleave(k))
