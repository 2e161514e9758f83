"""Blockwise proposal heads on a frozen native target. From the target's final-norm hidden state at
position t, head i (i = 1..k) predicts token t+1+i; the target's own lm_head predicts t+1. Every
head ends in the TARGET's lm_head (shared and frozen, so it is not stored with the heads).

Two kinds (HeadsConfig.kind):
  "independent"  Stern et al., "Blockwise Parallel Decoding": head i is a residual feed-forward
                 layer and a norm on the hidden state alone, all heads in one batched matmul.
  "hydra"        sequentially dependent heads (Ankner et al., "Hydra", 2024): head i also reads the
                 embedding of the token before the one it predicts (head 1: the target's own next
                 token, head i > 1: head i-1's guess), through a running residual state. One
                 shared feed-forward layer with a per-head bias and norms, so it fits the 4 MB
                 budget at any k; it costs k small sequential steps per round instead of one.

Files: `heads.safetensors` + `heads.json` (the HeadsConfig, which names the target it was trained for).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .artifacts import SHIPPED, shipped
from .config import DecoderConfig

WEIGHTS, CONFIG = "heads.safetensors", "heads.json"
KINDS = ("independent", "hydra")


@dataclass
class HeadsConfig:
    k: int
    dim: int
    # feed-forward width; default dim for "independent" (fits 4 MB in fp16 up to dim 384 at k 4), 3 * dim for
    # "hydra" (one layer shared by all heads)
    hidden: int | None = None
    norm_eps: float = 1e-6
    # fingerprint of the target the heads were trained on (its lm_head and hidden size)
    target_vocab_size: int | None = None
    target_dim: int | None = None
    target_n_layers: int | None = None
    kind: str = "independent"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"HeadsConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.hidden is None:
            self.hidden = 3 * self.dim if self.kind == "hydra" else self.dim
        if self.k < 1 or self.dim < 1 or self.hidden < 1:
            raise ValueError(f"HeadsConfig needs k, dim, hidden >= 1, got {self.k}, {self.dim}, {self.hidden}")

    def num_parameters(self) -> int:
        if self.kind == "hydra":  # shared W1 (2 dim -> hidden), W2; per head a bias and two norm weights
            return 3 * self.dim * self.hidden + self.k * (self.hidden + 2 * self.dim)
        return self.k * (2 * self.dim * self.hidden + self.dim)  # W1, W2, norm weight per head

    @classmethod
    def for_target(cls, target, k: int, hidden: int | None = None, kind: str = "independent") -> "HeadsConfig":
        c = target.config
        return cls(k=k, dim=c.dim, hidden=hidden, target_vocab_size=c.vocab_size, target_dim=c.dim,
                   target_n_layers=c.n_layers, kind=kind)

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
                             f"`python -m models.training.train_heads --target DIR --out DIR`.")

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
        return self._norm(h, self.norm_weight)

    def _norm(self, h: Tensor, weight: Tensor) -> Tensor:
        """The heads' output norm: float32 statistics, as the target's RMSNorm."""
        hf = h.float()
        hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        return weight.to(h.dtype) * hf.to(h.dtype)

    def greedy_guesses(self, hidden: Tensor, target) -> tuple[Tensor, Tensor]:
        """hidden (N, dim) -> (the target's logits (N, V), each row's k greedy guesses (N, k)), as one
        graph runs them (models/compiled_cpu.py): 2-D matmuls per head (a batched matmul over the heads
        has no C++ GEMM template), and one lm_head matmul over the target's rows and the heads' features
        together, so the LM head is read once for both."""
        dt, N = hidden.dtype, hidden.shape[0]
        rows = [hidden]
        for i in range(self.k):
            h = hidden + F.silu(hidden @ self.w1[i].to(dt)) @ self.w2[i].to(dt)
            rows.append(self._norm(h, self.norm_weight[i]))
        out = target.lm_head(torch.cat(rows))  # (N (k + 1), V): the target's rows, then head by head
        return out[:N], out[N:].view(self.k, N, -1).argmax(-1).T

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

    def train_logits(self, hidden: Tensor, inputs: Tensor, target) -> Tensor:
        """Training interface shared with HydraHeads; independent heads ignore the inputs."""
        return self(hidden, target.lm_head)

    def propose(self, hidden: Tensor, first: Tensor, target, pick) -> Tensor:
        """hidden (B, dim) -> (B, k) guesses; pick(j, logits (B, V), guesses so far (B, j)) -> (B,)."""
        logits = self(hidden[:, None], target.lm_head)[:, 0]  # (B, k, V)
        guess = first.new_empty(first.shape[0], self.k)  # filled column by column, no copy per guess
        for j in range(self.k):
            guess[:, j] = pick(j, logits[:, j], guess[:, :j])
        return guess


class HydraHeads(nn.Module):
    """Sequentially dependent heads: state s_0 = the target's hidden h_t; head i reads s_{i-1} and the
    embedding e_i of token t+i (the target's embedding table, frozen), and
        s_i = s_{i-1} + W2 silu(W1 [norm_in_i(s_{i-1}); e_i] + b_i),   logits_i = lm_head(norm_out_i(s_i)).
    Trained with teacher forcing (e_i of the real next tokens), which is exactly the case that matters
    for exact acceptance: head i's guess only counts when heads 1..i-1 guessed right."""

    def __init__(self, config: HeadsConfig, *, init: bool = True):
        super().__init__()
        if config.kind != "hydra":
            raise ValueError(f"HydraHeads needs a HeadsConfig with kind='hydra', got {config.kind!r}")
        self.config = c = config
        self.k, self.dim = c.k, c.dim
        self.w1 = nn.Parameter(torch.empty(2 * c.dim, c.hidden))
        self.b1 = nn.Parameter(torch.zeros(c.k, c.hidden))
        self.w2 = nn.Parameter(torch.zeros(c.hidden, c.dim))  # zero: s_i = h_t at init
        self.norm_in = nn.Parameter(torch.ones(c.k, c.dim))
        self.norm_out = nn.Parameter(torch.ones(c.k, c.dim))
        if init:  # first() shares trained weights: no random fill to throw away
            nn.init.normal_(self.w1, std=(2 * c.dim) ** -0.5)

    def step(self, i: int, s: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        """(state (..., dim), embedding of the token before head i's) -> (next state, lm_head input).
        Few ops on purpose: a decode round runs k of these one after another at batch size 1."""
        n, eps, dt = (self.dim,), self.config.norm_eps, s.dtype
        w1, b1, w2, g_in, g_out = self.w1, self.b1[i], self.w2, self.norm_in[i], self.norm_out[i]
        if w1.dtype != dt:  # e.g. fp32 master weights on bf16 features without autocast
            w1, b1, w2, g_in, g_out = (t.to(dt) for t in (w1, b1, w2, g_in, g_out))
        x = torch.cat([F.rms_norm(s, n, g_in, eps), emb.to(dt)], -1)
        if s.dim() == 2:  # a decode round (B, dim): bias and residual fused into the matmuls
            s = torch.addmm(s, F.silu(torch.addmm(b1, x, w1)), w2)
        else:
            s = s + F.silu(x @ w1 + b1) @ w2
        return s, F.rms_norm(s, n, g_out, eps)

    def train_logits(self, hidden: Tensor, inputs: Tensor, target) -> Tensor:
        """hidden (B, T, dim), inputs (B, T, k) = tokens t+1..t+k (teacher forcing) -> (B, T, k, V)."""
        emb, s, feats = target.embed(inputs), hidden, []
        for i in range(inputs.shape[-1]):
            s, f = self.step(i, s, emb[..., i, :])
            feats.append(f)
        return target.lm_head(torch.stack(feats, -2))

    def propose(self, hidden: Tensor, first: Tensor, target, pick) -> Tensor:
        """hidden (B, dim), first (B,) the target's token t+1 -> (B, k) guesses of t+2..t+k+1;
        pick(j, logits (B, V), guesses so far (B, j)) -> (B,) chooses each guess."""
        s, tok = hidden, first
        guess = first.new_empty(first.shape[0], self.k)  # filled column by column, no copy per guess
        for j in range(self.k):
            s, f = self.step(j, s, target.embed(tok))
            tok = guess[:, j] = pick(j, target.lm_head(f), guess[:, :j])
        return guess

    def greedy_guesses(self, hidden: Tensor, target) -> tuple[Tensor, Tensor]:
        """hidden (N, dim) -> (the target's logits (N, V), each row's k greedy guesses (N, k)): head 1
        after the target's own argmax, each next head after the last guess (first maximum, as numpy's
        and torch's argmax), as one graph runs them (models/compiled_cpu.py)."""
        logits = target.lm_head(hidden)
        return logits, self.propose(hidden, logits.argmax(-1), target, lambda j, scores, so_far: scores.argmax(-1))

    def first(self, k: int) -> "HydraHeads":
        """The first k heads (the shared layer, the leading biases and norms)."""
        if not 1 <= k <= self.k:
            raise ValueError(f"first(k) needs 1 <= k <= {self.k}, got {k}")
        sub = HydraHeads(dataclasses.replace(self.config, k=k), init=False)
        sub.w1, sub.w2 = self.w1, self.w2
        sub.b1, sub.norm_in, sub.norm_out = (nn.Parameter(p[:k]) for p in (self.b1, self.norm_in, self.norm_out))
        return sub


def build_heads(config: HeadsConfig) -> nn.Module:
    """An untrained heads module of config.kind."""
    if config.kind == "hydra":
        return HydraHeads(config)
    return BlockwiseHeads(config.dim, config.k, config=config)


def target_forward_with_hidden(model, input_ids: Tensor, cache, attention_mask: Tensor | None = None,
                               *, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One cached target forward -> (logits (B, T, V), final-norm hidden (B, T, dim)), so a verify step
    gets the target's check of the current proposals and the heads' next proposals from one pass."""
    if not model.returns_hidden:  # a capability of the model protocol
        raise TypeError(f"{type(model).__name__} cannot return hidden states; blockwise heads need a native "
                        f"decoder (models.LlamaDecoder)")
    return model(input_ids, cache, positions=positions, attention_mask=attention_mask, return_hidden=True)


def compiled_guessing(target, cache, heads):
    """The target's compiled CPU step that also returns these heads' greedy guesses, bound to `cache`
    (NativeDecoder.guessing_on), or None where the target has none."""
    guessing_on = getattr(target, "guessing_on", None)
    return None if guessing_on is None else guessing_on(cache, heads)


def save_heads(heads: nn.Module, directory: str | Path, *, dtype=torch.float16) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {n: p.detach().to(dtype).contiguous().cpu() for n, p in heads.state_dict().items()}
    save_file(sd, str(d / WEIGHTS), metadata={"format": "pt"})
    (d / CONFIG).write_text(json.dumps(heads.config.to_dict(), indent=2) + "\n")
    return d


def load_heads(heads, target, *, dtype=None, device=None):
    """Heads (BlockwiseHeads or HydraHeads) from a directory (or an already built module), checked
    against `target` and moved to the target's device and dtype unless told otherwise."""
    if isinstance(heads, (BlockwiseHeads, HydraHeads)):
        heads.config.check_target(target, "these heads")
        module = heads
    elif not isinstance(heads, (str, Path)):
        raise TypeError(f"heads must be a directory path or a models.heads module (BlockwiseHeads, HydraHeads), "
                        f"got {type(heads).__name__}")
    else:
        d = Path(heads)
        if not (d / CONFIG).exists() or not (d / WEIGHTS).exists():
            raise FileNotFoundError(f"{d} is not a heads directory: expected {WEIGHTS} and {CONFIG} "
                                    f"(written by models.heads.save_heads / python -m models.training.train_heads)")
        cfg = HeadsConfig.from_dict(json.loads((d / CONFIG).read_text()))
        cfg.check_target(target, f"heads in {d}")
        module = build_heads(cfg)
        sd = load_file(str(d / WEIGHTS))
        try:
            module.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"{d / WEIGHTS} does not match {d / CONFIG}: {e}") from None
    ref = target.lm_head.weight
    return module.to(device=device or ref.device, dtype=dtype or ref.dtype)


# -- the shipped heads ----------------------------------------------------------------------------------

def is_shipped_target(model) -> bool:
    """The shipped target, recognised by its config and a few embedding rows (any dtype)."""
    c = getattr(model, "config", None)
    d = SHIPPED / "target"
    if not isinstance(c, DecoderConfig) or not (d / "config.json").exists():
        return False
    if c != DecoderConfig.load(d / "config.json"):
        return False
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        ref = f.get_slice("embed.weight")[:8].float()
    with torch.no_grad():  # the lookup, not the weight: a tensor-parallel rank holds other rows
        mine = model.embed(torch.arange(8, device=model.device)).float().cpu()
    return torch.allclose(mine, ref, rtol=1e-2, atol=1e-3)


def default_heads(target) -> Path:
    """The shipped heads, which serve the shipped target only; ValueError for any other target."""
    if not is_shipped_target(target):
        raise ValueError("strategy='blockwise' needs heads=PATH (or a models.heads.BlockwiseHeads module) "
                         "trained for this model; the shipped heads (models/shipped/heads) serve only the "
                         "shipped target. Train heads with `python -m models.training.train_heads --target DIR --out DIR`.")
    return shipped("heads")
