"""The one attention function of the native models: cached keys in a static cache, per-row lengths.

Everything that depends only on the batch layout (which slot each query sits in, which keys it may
see) is computed once per forward in `AttentionBatch` and shared by all layers.

Three paths. The decode kernel (`kernels.decode_attention`) when its dispatcher picks Triton (CUDA
tensors, or DECODING_ATTN=triton) and the queries are in its layout: each row's real queries come
first, pads after, and the real ones take the row's last slots (decode steps, verify blocks, the
static CUDA-graph step). In the compiled CPU step's trace, `fused_attention`: the same product
written as reductions, so inductor generates it as loops inside the step. Otherwise SDPA with an
explicit mask: eager CPU forwards, prefills, and any other layout (a left-padded prompt, a mask
with holes).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

# Longer blocks are prefills: compute-bound, where SDPA's flash kernels win; the decode kernel's
# (group * T)-row query blocks are sized for memory-bound steps.
KERNEL_MAX_TOKENS = 64
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def kernel_for(x: Tensor, T: int):
    """`kernels.decode_attention` if its backend for x's device is Triton and T fits, else None.
    Reads DECODING_ATTN now (once per forward)."""
    if not (x.is_cuda or os.environ.get("DECODING_ATTN")) or T > KERNEL_MAX_TOKENS:
        return None  # the CPU default: SDPA, without loading Triton (nor a guard on T in an export)
    import kernels
    return kernels.decode_attention if kernels.backend(x) == "triton" else None


def _kernel_layout(slots: Tensor, lengths: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """q_lens (B,) int32, and a 0-dim bool: every row is its q_len real queries then pads, query t
    at slot lengths - q_len + t (what the kernel's causal rule assumes)."""
    valid = valid.bool()
    t = torch.arange(slots.shape[1], device=slots.device)
    q_lens = valid.sum(1, dtype=torch.int32)
    prefix = valid == (t < q_lens[:, None])
    at_end = ~valid | (slots == (lengths - q_lens).long()[:, None] + t)
    return q_lens, (prefix & at_end).all()


class AttentionBatch:
    """Layout of one forward: query slots (B, T), lengths after the write (B,), real-query mask (B, T)
    (None: every query real and appended at its row's end) and `kv_len`, a host bound on the
    longest row after the write: keys past it are never read (None: read the lengths back).
    `exact`: kv_len is every row's length (one row, one query: then no mask is needed).
    `kernel` is the decode kernel when this layout can use it (else None), with `q_lens` (B,).
    `fused`: attention runs as `fused_attention` (the compiled CPU step's trace)."""

    def __init__(self, slots: Tensor, lengths: Tensor, valid: Tensor | None = None, kv_len: int | None = None,
                 *, exact: bool = False):
        self.slots, self.lengths, self.valid, self.exact, self.fused = slots, lengths, valid, exact, False
        self._masks: dict[int, Tensor | None] = {}
        self.kernel, self.q_lens = kernel_for(slots, slots.shape[1]), None
        self.kv_len = kv_len
        if valid is None:  # the kernel's layout by construction
            if self.kernel is not None:
                self.q_lens = torch.full_like(lengths, slots.shape[1])
        elif self.kernel is not None:
            self.q_lens, ok = _kernel_layout(slots, lengths, valid)
            longest, ok = torch.stack([lengths.max().long(), ok.long()]).tolist()  # one read-back for both
            self.kv_len = longest if kv_len is None else kv_len
            if not ok:
                self.kernel = None
        if self.kv_len is None:
            self.kv_len = int(lengths.max())  # keys past the longest row are never read

    @classmethod
    def static(cls, slots: Tensor, lengths: Tensor, cache) -> "AttentionBatch":
        """The fixed-shape layout (CUDA graphs, the compiled CPU step) over `cache`: every query real
        and at its row's end, every row reading the cache's readable slots, visibility from the
        device-side slots only. On CUDA the kernel runs with q_lens=None and reads the lengths on the
        device; in the compiled CPU step's trace (`cache.traced`) attention is `fused_attention`."""
        batch = cls(slots, lengths, None, cache.readable)
        batch.q_lens = None  # the kernel's default: slots.shape[1] queries per row
        batch.fused = cache.traced
        return batch

    def mask(self, window: int) -> Tensor | None:
        """(B, 1, T, kv_len) bool, True = visible; None when every query sees every key."""
        if window not in self._masks:
            B, T = self.slots.shape
            if self.exact and B == 1 and T == 1 and (not window or window >= self.kv_len):
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
    """q (B, T, Hq, D), caches (B, Hkv, S, D) -> (B, T, Hq, D). Padded query rows are zeros on the
    kernel path and unspecified on the SDPA path: callers ignore them."""
    L = batch.kv_len
    k, v = k_cache[:, :, :L], v_cache[:, :, :L]
    if batch.kernel is not None and q.dtype == k.dtype and q.dtype in KERNEL_DTYPES and q.shape[-1] <= 256:
        return batch.kernel(q, k, v, batch.lengths, q_lens=batch.q_lens, window=window, sm_scale=sm_scale)
    if batch.fused:
        if k.dtype != torch.float32:  # fp32 sums; cast before the slice (a cast of the slice guards its length)
            k, v = k_cache.float()[:, :, :L], v_cache.float()[:, :, :L]
            return fused_attention(q.float(), k, v, batch.mask(window), sm_scale).to(q.dtype)
        return fused_attention(q, k, v, batch.mask(window), sm_scale)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=batch.mask(window),
                                         scale=sm_scale, enable_gqa=k.shape[1] != q.shape[2])
    return out.transpose(1, 2)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T * scale, masked) v written as two reductions over a broadcast product, for a
    trace that inductor compiles (models/compiled_cpu.py): it generates them as loops fused into
    the step. The CPU SDPA kernel it replaces there costs ~20 us a layer at a decode step's size in
    fixed overhead (transposes, allocations, dispatch), most of a layer's attention. Not for eager
    use: the product is materialised there. q (B, T, Hq, D), k/v (B, Hkv, L, D), mask (B, 1, T, L)
    bool (True = visible; every query sees a key) or None -> (B, T, Hq, D)."""
    import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_force_stride_order)
    B, T, Hq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv  # queries per KV head (GQA/MQA): they read the same keys
    qg = q.reshape(B, T, Hkv, G, D).permute(0, 2, 3, 1, 4)  # (B, Hkv, G, T, D)
    # stored once: else inductor inlines q's RoPE into the score loop and recomputes its cos/sin per key
    qg = torch.ops.prims.inductor_force_stride_order(qg, (Hkv * G * T * D, G * T * D, T * D, D, 1))
    s = (qg[..., None, :] * k[:, :, None, None]).sum(-1) * scale  # (B, Hkv, G, T, L)
    if mask is not None:
        s = s.masked_fill(~mask[:, :, None], float("-inf"))
    e = torch.exp(s - s.amax(-1, keepdim=True))
    # normalised after the sum over keys: one division per output, not one per key and output
    o = (e[..., None] * v[:, :, None, None]).sum(-2) / e.sum(-1)[..., None]  # (B, Hkv, G, T, D)
    return o.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, D)
