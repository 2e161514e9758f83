"""Native YOCO decoder-decoder (Sun et al., "You Only Cache Once").

    ids -> self-decoder (L/2 sliding-window layers) -> norm -> one global K/V (k roped)
        -> cross-decoder (L/2 layers: own q against the global K/V, causal) -> norm -> logits

Only the global K/V grows with the context; the self-decoder keeps a ring of `window +
max_rollback` positions per layer (models/yoco_cache.py). Prefill early exit: with
`logits_to_keep=k` the cross-decoder runs only for the last k tokens, since nothing else reads it.
The self-decoder, RMSNorm, MLP and rotary pieces are LlamaDecoder's.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import AttentionBatch, attend, fused_attention
from .compiled import last
from .config import DecoderConfig
from .llama import MLP, Block, RMSNorm
from .layout import k_major_
from .native import NativeDecoder
from .rope import apply_rope, inv_freq, rope_cos_sin
from .yoco_cache import YOCOCache


@dataclass
class YOCOConfig:
    vocab_size: int
    dim: int
    n_layers: int  # even: n_layers/2 self-decoder + n_layers/2 cross-decoder layers
    n_heads: int
    n_kv_heads: int | None = None  # of the self-decoder and of the one global K/V
    head_dim: int | None = None
    hidden_dim: int | None = None
    window: int = 128  # self-decoder sliding window (a query sees itself and window-1 earlier tokens)
    max_rollback: int = 64  # exact cache rollback this far back (ring slack of the window state)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = field(default="native_yoco")

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = 32 * -(-int(8 * self.dim / 3) // 32)
        if self.n_layers < 2 or self.n_layers % 2:
            raise ValueError(f"YOCO needs an even n_layers >= 2 (half self-, half cross-decoder), got {self.n_layers}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.window < 1 or self.max_rollback < 0:
            raise ValueError(f"need window >= 1 and max_rollback >= 0, got {self.window}, {self.max_rollback}")

    def self_decoder_config(self) -> DecoderConfig:
        """The self-decoder is a stack of LlamaDecoder blocks with a sliding window."""
        return DecoderConfig(vocab_size=self.vocab_size, dim=self.dim, n_layers=self.n_layers // 2,
                             n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                             hidden_dim=self.hidden_dim, rope_theta=self.rope_theta, norm_eps=self.norm_eps,
                             sliding_window=self.window, max_seq_len=self.max_seq_len)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "YOCOConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown YOCOConfig fields {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "YOCOConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def yoco_zoo_config(vocab_size: int, bos: int | None, eos: int | None, pad: int | None) -> YOCOConfig:
    """The shipped YOCO model: about the target's size (5.2M parameters at vocab 4096)."""
    return YOCOConfig(vocab_size=vocab_size, dim=256, n_layers=6, n_heads=8, n_kv_heads=2, window=128,
                      max_rollback=64, tie_embeddings=True, max_seq_len=2048,
                      bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def window_attend(q: Tensor, k: Tensor, v: Tensor, ring_k: Tensor, ring_v: Tensor, ring_rel: Tensor,
                  *, window: int, scale: float, chunk: int | None, fused: bool = False) -> Tensor:
    """Sliding-window attention of T packed new tokens (row b's token t sits at start_b + t).

    q (B, T, Hq, D), k/v (B, T, Hkv, D); ring_k/v (B, Hkv, S, D) hold older keys at positions
    start_b + ring_rel (B, S) (valid where ring_rel < 0, else -inf). Query t sees keys at relative
    positions (t - window, t]. Queries go in chunks, each against the ring and the new keys of its
    window only, so a T-token prefill costs O(T * (window + chunk)), not O(T^2); chunk=None: one
    chunk, with no Python arithmetic on T (the compiled step's T is symbolic). fused: the attention
    as models/attention.fused_attention (the compiled CPU step's trace).
    """
    B, T, Hq, _ = q.shape
    q_in = q
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    ring_k, ring_v = ring_k.to(q.dtype), ring_v.to(q.dtype)
    gqa = k.shape[1] != Hq
    outs = []
    for c0, c1 in [(0, T)] if chunk is None else ((c0, min(T, c0 + chunk)) for c0 in range(0, T, chunk)):
        k0 = max(0, c0 - window + 1)  # first new key any query of this chunk can see
        tq = torch.arange(c0, c1, device=q.device)[:, None]  # (C, 1)
        tk = torch.arange(k0, c1, device=q.device)[None]  # (1, K)
        mask = ((tk <= tq) & (tk > tq - window)).expand(B, -1, -1)  # (B, C, K)
        keys, vals = k[:, :, k0:c1], v[:, :, k0:c1]
        if c0 < window - 1:  # early queries still reach back into the ring
            ring_vis = (ring_rel[:, None, :] < 0) & (ring_rel[:, None, :] > tq[None] - window)  # (B, C, S)
            mask = torch.cat([ring_vis, mask], -1)
            keys, vals = torch.cat([ring_k, keys], 2), torch.cat([ring_v, vals], 2)
        if fused:
            outs.append(fused_attention(q_in[:, c0:c1], keys, vals, mask[:, None], scale).transpose(1, 2))
            continue
        outs.append(F.scaled_dot_product_attention(q[:, :, c0:c1], keys, vals, attn_mask=mask[:, None],
                                                   scale=scale, enable_gqa=gqa))
    return torch.cat(outs, 2).transpose(1, 2)  # (B, T, Hq, D)


class GlobalKV(nn.Module):
    """The one K/V of the cross-decoder, from the normed self-decoder output (k roped)."""

    def __init__(self, cfg: YOCOConfig):
        super().__init__()
        self.n_kv_heads, self.head_dim = cfg.n_kv_heads, cfg.head_dim
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.wkv = nn.Linear(cfg.dim, 2 * cfg.n_kv_heads * cfg.head_dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        k, v = self.wkv(self.norm(x)).view(B, T, 2, self.n_kv_heads, self.head_dim).unbind(2)
        return apply_rope(k, cos, sin), v  # (B, T, Hkv, D) each


class CrossBlock(nn.Module):
    """Cross-decoder layer: its own q against the shared global K/V, then the MLP."""

    def __init__(self, cfg: YOCOConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn) -> Tensor:
        """attn: (B, T, Hq, D) queries -> (B, T, Hq, D), against the global K/V."""
        B, T, _ = x.shape
        q = apply_rope(self.wq(self.attn_norm(x)).view(B, T, self.n_heads, self.head_dim), cos, sin)
        x = x + self.wo(attn(q).reshape(B, T, -1))
        return x + self.mlp(self.mlp_norm(x))


class YOCODecoder(NativeDecoder):
    """Decoder-decoder. `forward` follows the model protocol; `forward_train` is cache-free."""
    cache_type = YOCOCache

    def __init__(self, cfg: YOCOConfig):
        super().__init__()
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        scfg = cfg.self_decoder_config()
        self.self_layers = nn.ModuleList(Block(scfg, i) for i in range(cfg.n_layers // 2))
        self.global_kv = GlobalKV(cfg)
        self.cross_layers = nn.ModuleList(CrossBlock(cfg) for _ in range(cfg.n_layers // 2))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        k_major_(self)  # faster skinny matmuls on CPU (models/layout.py)
        self.register_buffer("inv_freq", inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.prefill_chunk = max(256, cfg.window)  # query chunk of the windowed prefill
        self.cache_heads = cfg.n_kv_heads  # KV heads this process caches (its own on a tensor-parallel rank)

    @property
    def max_rollback(self) -> int:  # capability (models/protocol.py): the rings' slack
        return self.config.max_rollback

    def new_cache(self, batch_size: int, max_len: int, *, dtype=None, device=None) -> YOCOCache:
        self.check_cache_len(max_len)
        c = self.config
        return YOCOCache(c.n_layers // 2, batch_size, self.cache_heads, max_len, c.head_dim, window=c.window,
                         max_rollback=c.max_rollback, dtype=dtype or self.dtype, device=device or self.device)

    def forward(self, input_ids: Tensor, cache: YOCOCache, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0, return_hidden: bool = False):
        """Append the new tokens (real ones where attention_mask is 1) to `cache`; logits (B, T', V).
        return_hidden=True gives (logits, final-norm hidden (B, T', dim)), as LlamaDecoder."""
        out = self.checked_step(input_ids, cache, attention_mask, positions, logits_to_keep, return_hidden)
        if out is not None:
            return out
        B, T = input_ids.shape
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        # Pack each row's real tokens to the front (stable), so token t of row b sits at slot len_b + t
        # and a window is a range of t. Pads follow at len_b + n_b + ..., where the cache puts them.
        order = None if attention_mask is None else torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
        pack = (lambda x: x) if order is None else (lambda x: x.gather(1, order))
        ids, valid = pack(input_ids), pack(valid)
        slots = cache.kv.slots_for(valid)  # (B, T) = len_b + t; raises on overflow before any work
        x = self.embed_ids(ids)  # (B, T, dim), packed; the ids' range check, before the cache changes
        positions = slots if positions is None else pack(positions)
        start, n_new = cache.lengths.clone(), valid.sum(1).to(torch.int32)
        high = torch.maximum(cache.high, start + n_new)
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.dtype)
        x = self._self_decoder(x, cos, sin, cache, start, n_new, high, slots, chunk=self.prefill_chunk)
        cache.kv.advance(n_new)
        cache.high.copy_(high)

        # Early exit: only the kept tokens go through the cross-decoder, in the caller's order.
        kept = torch.arange(T - logits_to_keep if logits_to_keep else 0, T, device=ids.device)
        if order is not None:
            keep = torch.argsort(order, dim=1)[:, kept]  # (B, T') packed index of each kept original column
            take = lambda t: t.gather(1, keep.view(B, -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))
        else:
            take = lambda t: t[:, kept] if logits_to_keep else t
        x, cos, sin = take(x), take(cos), take(sin)
        batch = AttentionBatch(take(slots), cache.lengths, take(valid), cache.kv.longest)
        h = self._cross_decoder(x, cos, sin, cache, batch)
        return (self.lm_head(h), h) if return_hidden else self.lm_head(h)

    __call__ = nn.Module.__call__

    def _self_decoder(self, x, cos, sin, cache: YOCOCache, start, n_new, high, slots, *, chunk: int | None,
                      fused: bool = False) -> Tensor:
        """Self-decoder over the packed new tokens (rings read and written), then the global K/V
        written at `slots`; returns the self-decoder's output (B, T, dim)."""
        T = x.shape[1]
        ring_rel = cache.ring_positions(cache.high) - start.long()[:, None]  # (B, S) old ring, relative
        ring_rel = torch.where(ring_rel + start.long()[:, None] >= 0, ring_rel, 0)  # never-written slots: invisible
        plan = cache.ring_plan(start, n_new, high, T)
        B = x.shape[0]
        for i, blk in enumerate(self.self_layers):
            q, k, v = blk.attn.project(blk.attn_norm(x), cos, sin)  # (B, T, H, D)
            out = window_attend(q, k, v, cache.ring_k[i], cache.ring_v[i], ring_rel,
                                window=self.config.window, scale=self.scale, chunk=chunk, fused=fused)
            cache.write_ring(i, k.transpose(1, 2), v.transpose(1, 2), plan)
            x = x + blk.attn.wo(out.reshape(B, T, -1))
            x = x + blk.mlp(blk.mlp_norm(x))
        k, v = self.global_kv(x, cos, sin)
        cache.kv.write(0, k, v, slots)
        return x

    def _cross_decoder(self, x, cos, sin, cache: YOCOCache, batch: AttentionBatch) -> Tensor:
        attn = lambda q: attend(q, cache.kv.k[0], cache.kv.v[0], batch, sm_scale=self.scale)
        for blk in self.cross_layers:
            x = blk(x, cos, sin, attn)
        return self.norm(x)

    def static_logits(self, input_ids: Tensor, cache: YOCOCache, hidden: bool = False, keep=None):
        """The fixed-shape step (models/compiled.py): T real tokens per row at each row's length,
        keys over the cache's readable range (hidden=True: and the final-norm hidden states; keep:
        only the last `keep` tokens go through the cross-decoder, as the eager early exit); writes
        rings and K/V, the caller advances lengths and high."""
        T = input_ids.shape[1]
        start = cache.lengths
        n_new = torch.full_like(start, T)
        slots = start.long()[:, None] + torch.arange(T, device=input_ids.device)
        cos, sin = rope_cos_sin(slots, self.inv_freq, self.dtype)
        x = self._self_decoder(self.embed(input_ids), cos, sin, cache, start, n_new,
                               torch.maximum(cache.high, start + T), slots, chunk=None, fused=cache.traced)
        x, cos, sin, slots = (last(t, keep) for t in (x, cos, sin, slots))
        batch = AttentionBatch.static(slots, start + T, cache)
        h = self._cross_decoder(x, cos, sin, cache, batch)
        return (self.lm_head(h), h) if hidden else self.lm_head(h)

    def hidden_train(self, input_ids: Tensor) -> Tensor:
        """Final-norm hidden states (B, T, dim) of a full causal pass, no cache."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device)[None].expand(B, -1)
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.dtype)
        x = self.embed(input_ids)
        for blk in self.self_layers:
            x = blk.forward_train(x, cos, sin)  # LlamaDecoder's block with its window mask
        k, v = (t.transpose(1, 2) for t in self.global_kv(x, cos, sin))  # (B, Hkv, T, D)
        gqa = k.shape[1] != self.config.n_heads
        attn = lambda q: F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, scale=self.scale,
                                                        enable_gqa=gqa).transpose(1, 2)
        for blk in self.cross_layers:
            x = blk(x, cos, sin, attn)
        return self.norm(x)
