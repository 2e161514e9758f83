"""Native Llama-family decoder: RMSNorm, rotary embeddings, SwiGLU, MHA/GQA/MQA, optional
Qwen2 q/k/v bias and Mistral sliding window. Implements the model protocol over a StaticCache."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import AttentionBatch, attend
from .cache import StaticCache
from .compiled import llama_static_logits
from .config import DecoderConfig
from .layout import k_major_
from .native import NativeDecoder
from .rope import apply_rope, inv_freq, rope_cos_sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.n_eps = torch.tensor([float(dim), eps]).unbind()  # CPU path's operands (plain, not buffers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and x.device.type == "cpu":
            # the float32 formula below without its no-op casts and Python-scalar operands (a scalar op costs
            # a CPU decode step a few us); mean is sum / n on CPU, so the bits are the same
            n, eps = self.n_eps
            return self.weight * (x * torch.rsqrt((x * x).sum(-1, keepdim=True) / n + eps))
        # float32 statistics, as HF Llama, so imported weights give the same logits
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.layer, self.window = layer, cfg.window(layer)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, qkv_out, bias=cfg.qkv_bias)  # one matmul for q, k and v
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor):
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x)
        qk = apply_rope(qkv[..., :(H + Hkv) * D].view(B, T, H + Hkv, D), cos, sin)  # q and k rotated at once
        return qk[:, :, :H], qk[:, :, H:], qkv[..., (H + Hkv) * D:].view(B, T, Hkv, D)

    def forward(self, x, cos, sin, cache: StaticCache, batch: AttentionBatch) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        cache.write(self.layer, k, v, batch.slots)
        out = attend(q, cache.k[self.layer], cache.v[self.layer], batch, window=self.window, sm_scale=self.scale)
        return self.wo(out.reshape(B, T, -1))

    def forward_train(self, x, cos, sin) -> Tensor:
        B, T, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.project(x, cos, sin))  # (B, H, T, D)
        if self.window:
            i = torch.arange(T, device=x.device)
            mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                 enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


def activation(name: str):
    """The gate activation named as in HF configs (the functions HF's ACT2FN applies)."""
    if name in ("silu", "swish"):
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown hidden_act {name!r}")


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)  # gate and up in one matmul
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.act = activation(getattr(cfg, "hidden_act", "silu"))  # YOCOConfig has no hidden_act: SwiGLU

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(self.act(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, batch):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, batch)
        return x + self.mlp(self.mlp_norm(x))

    def forward_train(self, x, cos, sin):
        x = x + self.attn.forward_train(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class LlamaDecoder(NativeDecoder):
    """Decoder-only transformer. `forward` follows the model protocol; `forward_train` is cache-free."""
    cache_type = StaticCache
    cuda_graphs = True
    max_rollback = None  # capability (models/protocol.py): the static cache rolls any row back any distance

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        k_major_(self)  # faster skinny matmuls on CPU (models/layout.py)
        self.register_buffer("inv_freq", inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.cache_heads = cfg.n_kv_heads  # KV heads this process caches (its own on a tensor-parallel rank)

    def forward(self, input_ids: Tensor, cache: StaticCache, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0, return_hidden: bool = False):
        """Append the new tokens (real ones where attention_mask is 1) to `cache`; logits (B, T', V).
        return_hidden=True gives (logits, final-norm hidden (B, T', dim)) for proposal heads."""
        out = self.checked_step(input_ids, cache, attention_mask, positions, logits_to_keep, return_hidden)
        if out is not None:
            return out
        T = input_ids.shape[1]
        slots, valid, exact = self.new_slots(T, cache, attention_mask)  # raises on overflow before any work
        x = self.embed_ids(input_ids)  # the ids' range check: before the cache changes
        cache.advance(T if valid is None else valid.sum(1))
        # keys up to the longest row's bound (no read-back); exact: no mask needed for one query
        batch = AttentionBatch(slots, cache.lengths, valid, cache.longest, exact=exact and valid is None)
        if positions is None:
            positions = slots  # no stored pads: a token's slot is its position
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, cache, batch)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        h = self.norm(x)
        return (self.lm_head(h), h) if return_hidden else self.lm_head(h)

    __call__ = nn.Module.__call__

    def static_logits(self, input_ids: Tensor, cache: StaticCache, hidden: bool = False, keep=None):
        return llama_static_logits(self, input_ids, cache, hidden, keep)

    def hidden_train(self, input_ids: Tensor) -> Tensor:
        """Final-norm hidden states (B, T, dim) of a full causal pass, no cache."""
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.dtype)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer.forward_train(x, cos, sin)
        return self.norm(x)
