"""Named models of the shipped zoo: architecture, config and training recipe.

Compute per token (docs/DESIGN.md 10) = 2 x (non-embedding parameters + LM-head parameters):

| name   | layers x dim | heads q/kv (head dim) | SwiGLU | params (tied) | compute/token | ratio |
|--------|--------------|-----------------------|--------|---------------|---------------|-------|
| target | 8 x 256      | 4 / 2 (64), GQA       | 704    | 6,951,168     | 13.90 MFLOP   | 1     |
| draft  | 2 x 128      | 2 / 1 (64), MQA       | 288    | 844,416       | 1.69 MFLOP    | 1/8.23|

Why: the target spends its 7M on depth (tied embeddings free 1M for layers); the draft has two
layers, the fewest that can form induction heads (copying names seen earlier matters in code),
and the 4096-entry LM head is already 0.52M of its 0.84M compute-parameters, so it stays narrow.

Another architecture adds an entry to ARCHS (config class, model class, save, load) and a ZOO
entry with arch=<its name>; its model needs `forward_train(ids) -> logits` and a `.config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from . import checkpoint
from .config import DecoderConfig
from .llama import LlamaDecoder
from .yoco import YOCOConfig, YOCODecoder


@dataclass
class Arch:
    config_cls: type
    model_cls: type
    save: Callable  # save(model, directory, dtype=...)
    load: Callable  # load(directory, dtype=..., device=...)


ARCHS: dict[str, Arch] = {"llama": Arch(DecoderConfig, LlamaDecoder, checkpoint.save, checkpoint.load),
                          "yoco": Arch(YOCOConfig, YOCODecoder, checkpoint.save, checkpoint.load)}


@dataclass
class Recipe:
    """Training hyper-parameters. Batches are in sequences of seq_len tokens."""
    lr: float
    batch_gpu: int
    batch_cpu: int
    seq_len: int = 1024
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    gpu_seconds: float = 100.0  # wall-clock share of the one GPU run
    cpu_tokens: int = 5_000_000  # CPU-only fallback; the target ran ~0.7k tok/s on one busy thread here


@dataclass
class Entry:
    arch: str
    config: dict
    recipe: Recipe
    note: str = ""


ZOO: dict[str, Entry] = {
    "target": Entry(
        "llama",
        dict(dim=256, n_layers=8, n_heads=4, n_kv_heads=2, hidden_dim=704, tie_embeddings=True, max_seq_len=1024),
        Recipe(lr=2e-3, batch_gpu=128, batch_cpu=8, gpu_seconds=100.0, cpu_tokens=5_000_000),
        "default model: GQA target, <= 7M parameters",
    ),
    "draft": Entry(
        "llama",
        dict(dim=128, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=288, tie_embeddings=True, max_seq_len=1024),
        Recipe(lr=3e-3, batch_gpu=128, batch_cpu=8, gpu_seconds=40.0, cpu_tokens=5_000_000),
        "draft for speculative decoding: <= 1/8 of the target's compute per token",
    ),
    # YOCO (Sun et al.): 4 sliding-window self-decoder layers, one global KV, 4 cross-decoder layers,
    # the target's width and MLP.
    # Trained on the CPU (the session's GPU time went to target, draft and heads), so on far fewer
    # tokens than the target: compare its loss with that in mind.
    "yoco": Entry(
        "yoco",
        dict(dim=256, n_layers=8, n_heads=4, n_kv_heads=2, hidden_dim=704, window=128, max_rollback=64, tie_embeddings=True,
             max_seq_len=2048),
        Recipe(lr=2e-3, batch_gpu=128, batch_cpu=8, seq_len=512, gpu_seconds=60.0, cpu_tokens=6_000_000),
        "decoder-decoder with one global KV cache, about the target's size",
    ),
}


def make_config(name: str, tok, **overrides):
    """The entry's config with the tokenizer's vocabulary and special ids filled in."""
    e = ZOO[name]
    kw = dict(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    return ARCHS[e.arch].config_cls(**{**kw, **e.config, **overrides})


def build(name: str, tok, **overrides) -> nn.Module:
    e = ZOO[name]
    return ARCHS[e.arch].model_cls(make_config(name, tok, **overrides))


def compute_params(model: nn.Module) -> int:
    """Non-embedding + LM-head parameters (a tied head counts once, as the head)."""
    emb = model.embed.weight.numel()
    head = model.lm_head.weight.numel()
    tied = model.lm_head.weight is model.embed.weight
    total = sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once
    return total - emb + (head if tied else 0)


def compute_per_token(model: nn.Module) -> int:
    return 2 * compute_params(model)
