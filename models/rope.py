"""Rotary position embeddings with Hugging Face Llama's conventions (rotate_half, float32 angles)."""
from __future__ import annotations

import torch
from torch import Tensor


def inv_freq(head_dim: int, theta: float, device=None) -> Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))


def rope_cos_sin(positions: Tensor, inv_f: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """positions (B, T) -> cos, sin (B, T, 1, D), computed in float32 as HF does."""
    freqs = positions.float()[..., None] * inv_f  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, :, None], emb.sin().to(dtype)[:, :, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, T, H, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
