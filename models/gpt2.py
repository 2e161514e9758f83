"""Native GPT-2 decoder (Radford et al. 2019): learned absolute positions (wte + wpe), pre-LayerNorm
blocks with biases, fused c_attn, multi-head attention, a c_fc -> activation -> c_proj MLP, ln_f,
lm_head tied to wte. Implements the model protocol over a StaticCache, as LlamaDecoder does; the
drop-in builds it on an installed GPT2LMHeadModel's own weights (models/hf_native_gpt2.py).

Positions: a token's position is its slot in the cache, which counts the row's real tokens before
it (pads are not stored): HF's generate gives GPT-2 the same, `attention_mask.cumsum(-1) - 1`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import AttentionBatch, attend
from .cache import StaticCache
from .compiled import last
from .layout import k_major_
from .native import NativeDecoder


def _gelu_new(x: Tensor) -> Tensor:  # HF's NewGELUActivation (OpenAI GPT's tanh GELU), op for op
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: Tensor) -> Tensor:  # HF's FastGELUActivation, op for op
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: Tensor) -> Tensor:  # HF's QuickGELUActivation
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: Tensor) -> Tensor:  # HF's GELUTanh ("gelu_pytorch_tanh")
    return F.gelu(x, approximate="tanh")


# config.activation_function -> the function HF's ACT2FN[name] applies (the same ops, so the same bits)
ACTIVATIONS = {"gelu_new": _gelu_new, "gelu_fast": _gelu_fast, "quick_gelu": _quick_gelu, "gelu": F.gelu,
               "gelu_pytorch_tanh": _gelu_tanh, "relu": F.relu, "silu": F.silu, "swish": F.silu}


@dataclass
class GPT2Config:
    vocab_size: int
    dim: int  # n_embd
    n_layers: int
    n_heads: int
    hidden_dim: int | None = None  # n_inner; default 4 * dim
    activation: str = "gelu_new"  # HF's activation_function
    norm_eps: float = 1e-5  # layer_norm_epsilon
    n_positions: int = 1024  # rows of the position table: the position limit
    max_seq_len: int | None = None  # cache capacity bound; default n_positions
    scale_attn_weights: bool = True  # scores / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and / (layer + 1)
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = field(default="native_gpt2")

    def __post_init__(self):
        if self.hidden_dim is None:
            self.hidden_dim = 4 * self.dim
        if self.max_seq_len is None:
            self.max_seq_len = self.n_positions
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads  # multi-head attention

    def attn_scale(self, layer: int) -> float:
        """HF GPT2Attention's `scaling`, computed as it computes it."""
        scale = 1.0
        if self.scale_attn_weights:
            scale = self.head_dim ** -0.5
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.head_dim = layer, cfg.n_heads, cfg.head_dim
        self.c_attn = nn.Linear(cfg.dim, 3 * cfg.dim)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.dim, cfg.dim)
        self.scale = cfg.attn_scale(layer)

    def project(self, x: Tensor):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        return q, k, v

    def forward(self, x: Tensor, cache: StaticCache, batch: AttentionBatch) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x)
        cache.write(self.layer, k, v, batch.slots)
        out = attend(q, cache.k[self.layer], cache.v[self.layer], batch, sm_scale=self.scale)
        return self.c_proj(out.reshape(B, T, -1))

    def forward_train(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.project(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.c_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.c_proj = nn.Linear(cfg.hidden_dim, cfg.dim)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cache, batch):
        x = x + self.attn(self.ln_1(x), cache, batch)
        return x + self.mlp(self.ln_2(x))

    def forward_train(self, x):
        x = x + self.attn.forward_train(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def gpt2_static_logits(model, input_ids: Tensor, cache, hidden: bool = False, keep=None):
    """GPT2Decoder's fixed-shape step (models/compiled.py): logits (B, T, V) of T real tokens per
    row appended at each row's length, which are also their positions (hidden=True: and the ln_f
    hidden states; keep: of the last `keep` tokens only). Writes their K/V; the caller advances the
    lengths. No checks, no syncs."""
    T = input_ids.shape[1]
    slots = cache.lengths.long()[:, None] + torch.arange(T, device=input_ids.device)
    batch = AttentionBatch.static(slots, cache.lengths + T, cache)
    x = model.embed(input_ids) + model.wpe(slots)
    for layer in model.layers:
        x = layer(x, cache, batch)
    h = model.ln_f(last(x, keep))
    return (model.lm_head(h), h) if hidden else model.lm_head(h)


class GPT2Decoder(NativeDecoder):
    """GPT-2. `forward` follows the model protocol; `forward_train` is cache-free."""
    cache_type = StaticCache
    cuda_graphs = True
    max_rollback = None  # the static cache rolls any row back any distance

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)  # HF's wte
        self.wpe = nn.Embedding(cfg.n_positions, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        k_major_(self)  # faster skinny matmuls on CPU (models/layout.py)
        self.cache_heads = cfg.n_heads

    @property
    def max_positions(self) -> int:
        return self.config.n_positions  # the position table ends there

    def forward(self, input_ids: Tensor, cache: StaticCache, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0, return_hidden: bool = False):
        """Append the new tokens (real ones where attention_mask is 1) to `cache`; logits (B, T', V).
        return_hidden=True gives (logits, ln_f hidden (B, T', dim))."""
        out = self.checked_step(input_ids, cache, attention_mask, positions, logits_to_keep, return_hidden)
        if out is not None:
            return out
        T = input_ids.shape[1]
        slots, valid, exact = self.new_slots(T, cache, attention_mask)  # raises on overflow before any work
        if positions is None:
            # no stored pads: a real token's slot is its position; a pad's (a scratch slot, which may
            # lie past the table) is 0, as HF's masked_fill; its output is never read
            positions = slots if valid is None else slots.masked_fill(~valid, 0)
        x = self.embed_ids(input_ids) + self.embed_positions(positions)  # range checks: before the cache changes
        cache.advance(T if valid is None else valid.sum(1))
        batch = AttentionBatch(slots, cache.lengths, valid, cache.longest, exact=exact and valid is None)
        for layer in self.layers:
            x = layer(x, cache, batch)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        h = self.ln_f(x)
        return (self.lm_head(h), h) if return_hidden else self.lm_head(h)

    __call__ = nn.Module.__call__

    def embed_positions(self, positions: Tensor) -> Tensor:
        try:
            return self.wpe(positions)
        except IndexError:  # the engine checks prompt + max_new_tokens first: a caller's own positions
            raise ValueError(f"positions must lie in [0, {self.config.n_positions}) (the model's n_positions); "
                             "shorten the prompt or max_new_tokens") from None

    def static_logits(self, input_ids: Tensor, cache: StaticCache, hidden: bool = False, keep=None):
        return gpt2_static_logits(self, input_ids, cache, hidden, keep)

    def hidden_train(self, input_ids: Tensor) -> Tensor:
        """ln_f hidden states (B, T, dim) of a full causal pass, no cache."""
        x = self.embed(input_ids) + self.wpe(torch.arange(input_ids.shape[1], device=input_ids.device))
        for layer in self.layers:
            x = layer.forward_train(x)
        return self.ln_f(x)
