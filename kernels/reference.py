"""Decode-phase attention in PyTorch (same layout and visibility rule as kernels/decode_attention.py):
a float64 oracle with an explicit mask, and the SDPA path that the dispatcher uses on CPU."""
import math

import torch
import torch.nn.functional as F


def _visible(lengths, q_lens, kv_start, window, T, S):
    """(B, T, S) mask: key n is seen by query t of row b."""
    n = torch.arange(S, device=lengths.device)
    t = torch.arange(T, device=lengths.device)
    upper = (lengths - q_lens)[:, None, None] + t[None, :, None]  # (B, T, 1)
    vis = (n >= kv_start[:, None, None]) & (n <= upper)
    if window > 0:
        vis &= n > upper - window
    return vis & (t[None, :, None] < q_lens[:, None, None])


def _stored(lengths, kv_start, S):
    """(B, 1, S, 1) slots holding real keys; the rest may be garbage, NaN included."""
    n = torch.arange(S, device=lengths.device)
    return ((n >= kv_start[:, None]) & (n < lengths[:, None]))[:, None, :, None]


def resolve_defaults(q, lengths, q_lens, kv_start, sm_scale):
    B, T, Hq, D = q.shape
    lengths = lengths.to(device=q.device, dtype=torch.int32)
    if q_lens is None:
        q_lens = torch.full((B,), T, dtype=torch.int32, device=q.device)
    if kv_start is None:
        kv_start = torch.zeros((B,), dtype=torch.int32, device=q.device)
    q_lens = q_lens.to(device=q.device, dtype=torch.int32)
    kv_start = kv_start.to(device=q.device, dtype=torch.int32)
    return lengths, q_lens, kv_start, (sm_scale if sm_scale is not None else 1.0 / math.sqrt(D))


def decode_attention_reference(q, k_cache, v_cache, lengths, *, q_lens=None, kv_start=None,
                               window=0, sm_scale=None):
    """Float64 oracle with an explicit mask (the kernels' work schedule does not change the answer)."""
    B, T, Hq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    lengths, q_lens, kv_start, sm_scale = resolve_defaults(q, lengths, q_lens, kv_start, sm_scale)
    stored = _stored(lengths, kv_start, S)
    k = torch.where(stored, k_cache.double(), 0.0).repeat_interleave(Hq // Hkv, 1)  # (B, Hq, S, D)
    v = torch.where(stored, v_cache.double(), 0.0).repeat_interleave(Hq // Hkv, 1)
    vis = _visible(lengths, q_lens, kv_start, window, T, S)[:, None]  # (B, 1, T, S)
    s = q.double().transpose(1, 2) @ k.transpose(-1, -2) * sm_scale  # (B, Hq, T, S)
    s = s.masked_fill(~vis, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row that sees nothing is all -inf -> zeros
    return (p @ v).transpose(1, 2).to(q.dtype)  # (B, T, Hq, D)


def torch_decode_attention(q, k_cache, v_cache, lengths, q_lens, kv_start, window, sm_scale):
    B, T, Hq, D = q.shape
    S = k_cache.shape[2]
    if not q.is_cuda:
        S = max(1, min(S, int(lengths.max())))  # free on CPU; on CUDA it would sync
    stored = _stored(lengths, kv_start, S)
    k = torch.where(stored, k_cache[:, :, :S], 0.0)
    v = torch.where(stored, v_cache[:, :, :S], 0.0)
    vis = _visible(lengths, q_lens, kv_start, window, T, S)  # (B, T, S)
    seen = vis.any(-1)  # (B, T)
    vis = vis | ~seen[..., None]  # SDPA turns all-masked rows into NaN: unmask, zero below
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=vis[:, None],
                                         scale=sm_scale, enable_gqa=Hq != k.shape[1])
    out = out.transpose(1, 2)  # (B, T, Hq, D)
    return torch.where(seen[..., None, None], out, 0.0)
