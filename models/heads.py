"""Blockwise proposal heads (Stern et al., "Blockwise Parallel Decoding"): k small heads on a frozen
native target. From the target's final-norm hidden state at position t, head i (i = 1..k) predicts
token t+1+i; the target's own lm_head predicts t+1. Each head is a residual feed-forward layer and
a norm, followed by the TARGET's lm_head (shared and frozen, so it is not stored with the heads).

Files: `heads.safetensors` + `heads.json` (the HeadsConfig, which names the target it was trained for).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

WEIGHTS, CONFIG = "heads.safetensors", "heads.json"


@dataclass
class HeadsConfig:
    k: int
    dim: int
    hidden: int | None = None  # feed-forward width; default dim (fits 4 MB in fp16 up to dim 384 at k 4)
    norm_eps: float = 1e-6
    # fingerprint of the target the heads were trained on (its lm_head and hidden size)
    target_vocab_size: int | None = None
    target_dim: int | None = None
    target_n_layers: int | None = None

    def __post_init__(self):
        if self.hidden is None:
            self.hidden = self.dim
        if self.k < 1 or self.dim < 1 or self.hidden < 1:
            raise ValueError(f"HeadsConfig needs k, dim, hidden >= 1, got {self.k}, {self.dim}, {self.hidden}")

    def num_parameters(self) -> int:
        return self.k * (2 * self.dim * self.hidden + self.dim)  # W1, W2, norm weight per head

    @classmethod
    def for_target(cls, target, k: int, hidden: int | None = None) -> "HeadsConfig":
        c = target.config
        return cls(k=k, dim=c.dim, hidden=hidden, target_vocab_size=c.vocab_size, target_dim=c.dim,
                   target_n_layers=c.n_layers)

    def check_target(self, target, where: str = "heads") -> None:
        """Raise a clear error when `target` is not the kind of model these heads were trained on."""
        c = getattr(target, "config", None)
        if c is None or not hasattr(c, "n_layers"):
            raise TypeError(f"{where}: blockwise heads need a native decoder target (models.LlamaDecoder), "
                            f"got {type(target).__name__}")
        want = (self.target_vocab_size, self.target_dim, self.target_n_layers)
        have = (c.vocab_size, c.dim, c.n_layers)
        if self.dim != c.dim or any(w is not None and w != h for w, h in zip(want, have)):
            raise ValueError(f"{where} were trained for a target with vocab_size={want[0]}, dim={want[1]}, "
                             f"n_layers={want[2]} (head dim {self.dim}); this target has vocab_size={have[0]}, "
                             f"dim={have[1]}, n_layers={have[2]}. Train heads for this target with "
                             f"`python -m models.train_heads --target DIR --out DIR`.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadsConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown HeadsConfig fields {sorted(unknown)}")
        return cls(**d)


class BlockwiseHeads(nn.Module):
    """k heads as stacked weights, so all heads run as one batched matmul per layer."""

    def __init__(self, dim: int, k: int, hidden: int | None = None, *, norm_eps: float = 1e-6,
                 config: HeadsConfig | None = None):
        super().__init__()
        self.config = config or HeadsConfig(k=k, dim=dim, hidden=hidden, norm_eps=norm_eps)
        c = self.config
        self.k, self.dim = c.k, c.dim
        self.w1 = nn.Parameter(torch.empty(c.k, c.dim, c.hidden))
        self.w2 = nn.Parameter(torch.zeros(c.k, c.hidden, c.dim))
        self.norm_weight = nn.Parameter(torch.ones(c.k, c.dim))
        nn.init.normal_(self.w1, std=c.dim ** -0.5)
        # w2 = 0 and a unit norm: at init every head outputs the target's next-token logits up to a
        # positive scale per position (same argmax), a sane start that training moves away from.

    def features(self, hidden: Tensor) -> Tensor:
        """hidden (B, T, dim) -> per-head features (B, T, k, dim), ready for the lm_head."""
        w1, w2 = self.w1.to(hidden.dtype), self.w2.to(hidden.dtype)
        u = F.silu(torch.einsum("btd,kdh->btkh", hidden, w1))  # (B, T, k, hidden)
        h = hidden[:, :, None, :] + torch.einsum("btkh,khd->btkd", u, w2)  # residual (B, T, k, dim)
        hf = h.float()  # float32 statistics, as the target's RMSNorm
        hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        return self.norm_weight.to(hidden.dtype) * hf.to(hidden.dtype)

    def first(self, k: int) -> "BlockwiseHeads":
        """The first k heads (weights shared): heads are independent, so heads trained with k = 6 also
        serve k = 2 and 4 (the benchmark's sweep) without retraining."""
        if not 1 <= k <= self.k:
            raise ValueError(f"first(k) needs 1 <= k <= {self.k}, got {k}")
        sub = BlockwiseHeads(self.dim, k, config=dataclasses.replace(self.config, k=k))
        sub.w1, sub.w2, sub.norm_weight = (nn.Parameter(p[:k]) for p in (self.w1, self.w2, self.norm_weight))
        return sub

    def forward(self, hidden: Tensor, lm_head: nn.Module) -> Tensor:
        """hidden (B, T, dim), the target's lm_head -> logits (B, T, k, V); [..., i-1, :] predicts t+1+i."""
        return lm_head(self.features(hidden))


def target_forward_with_hidden(model, input_ids: Tensor, cache, attention_mask: Tensor | None = None,
                               *, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One cached target forward -> (logits (B, T, V), final-norm hidden (B, T, dim)), so a verify step
    gets the target's check of the current proposals and the heads' next proposals from one pass."""
    if "return_hidden" not in inspect.signature(model.forward).parameters:
        raise TypeError(f"{type(model).__name__} cannot return hidden states; blockwise heads need a native "
                        f"decoder (models.LlamaDecoder)")
    return model(input_ids, cache, positions=positions, attention_mask=attention_mask, return_hidden=True)


def save_heads(heads: BlockwiseHeads, directory: str | Path, *, dtype=torch.float16) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {n: p.detach().to(dtype).contiguous().cpu() for n, p in heads.state_dict().items()}
    save_file(sd, str(d / WEIGHTS), metadata={"format": "pt"})
    (d / CONFIG).write_text(json.dumps(heads.config.to_dict(), indent=2) + "\n")
    return d


def load_heads(heads: str | Path | BlockwiseHeads, target, *, dtype=None, device=None) -> BlockwiseHeads:
    """Heads from a directory (or an already built module), checked against `target` and moved to
    the target's device and dtype unless told otherwise."""
    if isinstance(heads, BlockwiseHeads):
        heads.config.check_target(target, "these heads")
        module = heads
    else:
        d = Path(heads)
        if not (d / CONFIG).exists() or not (d / WEIGHTS).exists():
            raise FileNotFoundError(f"{d} is not a heads directory: expected {WEIGHTS} and {CONFIG} "
                                    f"(written by models.heads.save_heads / python -m models.train_heads)")
        cfg = HeadsConfig.from_dict(json.loads((d / CONFIG).read_text()))
        cfg.check_target(target, f"heads in {d}")
        module = BlockwiseHeads(cfg.dim, cfg.k, config=cfg)
        sd = load_file(str(d / WEIGHTS))
        try:
            module.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"{d / WEIGHTS} does not match {d / CONFIG}: {e}") from None
    ref = target.lm_head.weight
    return module.to(device=device or ref.device, dtype=dtype or ref.dtype)
