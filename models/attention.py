"""The one attention function of the native models: cached keys in a static cache, per-row lengths.

Everything that depends only on the batch layout (which slot each query sits in, which keys it may
see) is computed once per forward in `AttentionBatch` and shared by all layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionBatch:
    """Layout of one forward: query slots (B, T), lengths after the write (B,), real-query mask (B, T)."""

    def __init__(self, slots: Tensor, lengths: Tensor, valid: Tensor):
        self.slots, self.lengths, self.valid = slots, lengths, valid
        self.kv_len = int(lengths.max())  # keys past the longest row are never read
        self._masks: dict[int, Tensor | None] = {}

    def mask(self, window: int) -> Tensor | None:
        """(B, 1, T, kv_len) bool, True = visible; None when every query sees every key."""
        if window not in self._masks:
            B, T = self.slots.shape
            if B == 1 and T == 1 and (not window or window >= self.kv_len):
                self._masks[window] = None
            else:
                n = torch.arange(self.kv_len, device=self.slots.device)
                q = self.slots[:, :, None]  # (B, T, 1)
                m = n <= q
                if window:
                    m = m & (n > q - window)
                self._masks[window] = m[:, None]
        return self._masks[window]


def attend(q: Tensor, k_cache: Tensor, v_cache: Tensor, batch: AttentionBatch, *, window: int = 0,
           sm_scale: float) -> Tensor:
    """q (B, T, Hq, D), caches (B, Hkv, S, D) -> (B, T, Hq, D)."""
    L = batch.kv_len
    k, v = k_cache[:, :, :L], v_cache[:, :, :L]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=batch.mask(window),
                                         scale=sm_scale, enable_gqa=k.shape[1] != q.shape[2])
    return out.transpose(1, 2)
