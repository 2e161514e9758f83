"""Rotary position embeddings with Hugging Face Llama's conventions (rotate_half, float32 angles)."""
from __future__ import annotations

import torch
from torch import Tensor


def inv_freq(head_dim: int, theta: float, device=None) -> Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))


def rope_cos_sin(positions: Tensor, inv_f: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """positions (B, T) -> cos, signed sin (B, T, 1, D), computed in float32 as HF does. The sin's
    first half is negated once here, so each layer's rotation is a roll instead of rotate_half's
    two slices, negation and concatenation (a CPU decode step pays per op)."""
    freqs = positions.float()[..., None] * inv_f  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[..., :sin.shape[-1] // 2].neg_()
    cos = emb.cos()
    if dtype != cos.dtype:  # no cast op where none is needed
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos[:, :, None], sin[:, :, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, T, H, D); cos and signed sin from rope_cos_sin. Bit-identical to HF's
    x * cos + rotate_half(x) * sin: (-x2) * s and x2 * (-s) round alike."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin
