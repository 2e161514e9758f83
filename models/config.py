"""Configuration of the native Llama-family decoder, stored as JSON beside its safetensors."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


# the gate activations of the MLP, named as in HF configs (the same functions as HF's ACT2FN)
ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")


@dataclass
class DecoderConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # 1 = multi-query, n_heads = multi-head, else grouped-query
    head_dim: int | None = None  # default dim // n_heads
    hidden_dim: int | None = None  # SwiGLU width; default 4 * dim * 2/3 rounded up to 32
    hidden_act: str = "silu"  # the gate's activation (GLU variants: "gelu", "gelu_pytorch_tanh", "relu")
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    sliding_window: int = 0  # 0 = full attention; Mistral's window otherwise
    layer_windows: list[int] | None = None  # per-layer window (0 = full), overrides sliding_window
    max_seq_len: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = field(default="native_llama")

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = 32 * -(-int(8 * self.dim / 3) // 32)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.layer_windows is not None and len(self.layer_windows) != self.n_layers:
            raise ValueError(f"layer_windows needs one entry per layer ({self.n_layers}), got {len(self.layer_windows)}")

    def window(self, layer: int) -> int:
        return self.layer_windows[layer] if self.layer_windows is not None else self.sliding_window

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["hidden_act"] == "silu":
            del d["hidden_act"]  # the default: configs saved before the field existed read back the same
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DecoderConfig fields {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DecoderConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
