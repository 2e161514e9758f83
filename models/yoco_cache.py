"""YOCO's cache: one global K/V shared by every cross-decoder layer, plus a small ring of recent
self-decoder K/V per self layer (Sun et al., "You Only Cache Once").

The global K/V is a one-layer StaticCache, so per-row truncation is a change of lengths. The rings
hold the last `window + max_rollback` positions of each row: the `window` a sliding-window query
needs, and `max_rollback` of slack so that a speculative/Jacobi rollback of up to that many tokens
still finds the keys it needs. Slot j of a ring holds position p with p = j (mod ring); which p it is
follows from the row's high-water length, so no positions are stored.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from .cache import StaticCache


class YOCOCache:
    def __init__(self, n_self_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 *, window: int, max_rollback: int, dtype=torch.float32, device=None):
        self.kv = StaticCache(1, batch_size, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.window, self.max_rollback = window, max_rollback
        self.ring = window + max_rollback
        shape = (batch_size, n_kv_heads, self.ring, head_dim)
        self.ring_k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_self_layers)]
        self.ring_v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_self_layers)]
        # high-water length: the largest length each row has reached. The rings hold positions
        # [high - ring, high), valid below the row's current length, so a row may be truncated back to
        # high - max_rollback: rollbacks add up until the row grows past its old high-water mark
        self.high = torch.zeros(batch_size, dtype=torch.int32, device=device)

    @property
    def lengths(self) -> Tensor:
        return self.kv.lengths

    @lengths.setter
    def lengths(self, value: Tensor) -> None:
        self.kv.lengths = value

    @property
    def longest(self) -> int | None:  # host bound on max(lengths) (models/cache.py)
        return self.kv.longest

    @property
    def exact(self) -> bool:
        return self.kv.exact

    def sync_longest(self) -> int:
        return self.kv.sync_longest()

    def reserve(self, T: int) -> int:
        return self.kv.reserve(T)

    def advance(self, T: int) -> None:
        """After a fixed-shape step of T tokens per row: lengths and high-water lengths move on."""
        torch.maximum(self.high, self.lengths + T, out=self.high)
        self.kv.advance(T)

    @property
    def batch_size(self) -> int:
        return self.kv.batch_size

    @property
    def capacity(self) -> int:
        return self.kv.capacity

    @property
    def readable(self):
        return self.kv.readable

    @property
    def traced(self) -> bool:
        return self.kv.traced

    @property
    def dtype(self):
        return self.kv.dtype

    def nbytes(self) -> int:
        return self.kv.nbytes() + sum(t.numel() * t.element_size() for t in self.ring_k + self.ring_v)

    def ring_positions(self, high: Tensor) -> Tensor:
        """(B, ring) long: the position slot j holds when the rows' high-water lengths are `high`."""
        base = high.long()[:, None] - self.ring
        j = torch.arange(self.ring, device=high.device)
        return base + torch.remainder(j - base, self.ring)

    def ring_plan(self, start: Tensor, n_new: Tensor, high: Tensor, T: int) -> tuple[Tensor, Tensor]:
        """Where the T packed new tokens (row b's real ones at t < n_new[b], at positions start[b] + t)
        land in the rings once the high-water lengths are `high`: (fresh (B, S) bool, source t (B, S))."""
        t = self.ring_positions(high) - start.long()[:, None]  # (B, S) index among the new tokens
        return (t >= 0) & (t < n_new.long()[:, None]), t.clamp(0, T - 1)

    def write_ring(self, layer: int, k: Tensor, v: Tensor, plan: tuple[Tensor, Tensor]) -> None:
        """k, v (B, H_kv, T, D) of the new tokens; slots not written this forward keep their keys.
        A gather + where rather than a scatter: deterministic when T > ring, and fixed shapes."""
        fresh, t = plan
        fresh = fresh[:, None, :, None]
        idx = t[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        for ring, new in ((self.ring_k[layer], k), (self.ring_v[layer], v)):
            ring.copy_(torch.where(fresh, new.gather(2, idx).to(ring.dtype), ring))  # in place: stable addresses

    # -- the compiled step's view (models/compiled_cpu.py) ------------------------------------
    def step_state(self) -> list[Tensor]:
        return [*self.kv.step_state(), self.high, *self.ring_k, *self.ring_v]

    def step_dims(self) -> list[dict[int, str]]:
        return self.kv.step_dims() + [{0: "B"}] * (1 + 2 * len(self.ring_k))

    def from_state(self, state: list[Tensor]) -> "YOCOCache":
        c, m, n = copy.copy(self), len(self.kv.step_dims()), len(self.ring_k)  # the kv cache's own layout first
        c.kv, c.high = self.kv.from_state(state[:m]), state[m]
        c.ring_k, c.ring_v = list(state[m + 1:m + 1 + n]), list(state[m + 1 + n:])
        return c

    # -- operations of the cache protocol ----------------------------------------------------
    def truncate(self, n) -> None:
        """Drop the last n tokens (per row if a tensor), no row below its high-water length minus
        max_rollback (the rings' slack). One read-back for both checks and the new longest length."""
        floor = (self.high - self.max_rollback).clamp(min=0)
        n, left, top, deep = self.kv.checked_truncation(n, floor)
        if deep:
            raise ValueError(
                f"truncate(n): YOCO's sliding-window state keeps max_rollback={self.max_rollback} positions "
                f"of slack, so each row can go back at most to its high-water length - {self.max_rollback} "
                f"(rows may drop at most {(self.lengths - floor).tolist()}, asked {n.tolist()}); "
                f"build the model with a larger max_rollback")
        self.kv.set_lengths(left, top)

    def reorder(self, index: Tensor) -> None:
        self.kv.reorder(index)  # validates index
        index = torch.as_tensor(index, dtype=torch.long, device=self.high.device)
        for buf in self.ring_k + self.ring_v:
            buf.copy_(buf.index_select(0, index))
        self.high.copy_(self.high.index_select(0, index))

    def select(self, index: Tensor) -> None:
        self.kv.select(index)
        index = torch.as_tensor(index, dtype=torch.long, device=self.high.device)
        self.ring_k = [b.index_select(0, index) for b in self.ring_k]
        self.ring_v = [b.index_select(0, index) for b in self.ring_v]
        self.high = self.high.index_select(0, index)

    def repeat(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"repeat(k) needs k >= 1, got {k}")
        self.select(torch.arange(self.batch_size, device=self.high.device).repeat_interleave(k))
