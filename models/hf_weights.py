"""Import Llama-family weights from Hugging Face models (Llama, Qwen2, Mistral) into the native
decoder, and export the native decoder back to an HF `LlamaForCausalLM`."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ACTIVATIONS, DecoderConfig
from .llama import LlamaDecoder

SUPPORTED = ("llama", "qwen2", "mistral")


def _rope_theta(hf) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    scaling = getattr(hf, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type not in ("default", None):
        raise NotImplementedError(f"rope scaling {rope_type!r} is not supported by the native decoder")
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _windows(hf) -> list[int] | None:
    mt = hf.model_type
    if mt == "mistral":
        return [int(hf.sliding_window or 0)] * hf.num_hidden_layers
    if mt == "qwen2":
        types = getattr(hf, "layer_types", None)
        window = int(getattr(hf, "sliding_window", None) or 0)
        if types and getattr(hf, "use_sliding_window", False):
            return [window if t == "sliding_attention" else 0 for t in types]
    return None


def config_from_hf(hf) -> DecoderConfig:
    if hf.model_type not in SUPPORTED:
        raise ValueError(f"cannot import model_type {hf.model_type!r}: the native decoder loads {SUPPORTED}")
    act = getattr(hf, "hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise NotImplementedError(f"hidden_act {act!r}: the native decoder's gated MLP takes {ACTIVATIONS}")
    if getattr(hf, "mlp_bias", False):
        raise NotImplementedError("mlp_bias=True is not supported by the native decoder")
    qkv_bias = hf.model_type == "qwen2" or bool(getattr(hf, "attention_bias", False))
    windows = _windows(hf)
    return DecoderConfig(
        vocab_size=hf.vocab_size, dim=hf.hidden_size, n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads, n_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        hidden_dim=hf.intermediate_size, hidden_act=act, rope_theta=_rope_theta(hf), norm_eps=hf.rms_norm_eps,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)), qkv_bias=qkv_bias,
        layer_windows=windows if windows and any(windows) else None,
        max_seq_len=hf.max_position_embeddings, bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
        pad_token_id=getattr(hf, "pad_token_id", None))


def state_dict_from_hf(sd: dict, cfg: DecoderConfig) -> dict:
    """Map HF Llama-family tensor names onto the native ones (q/k/v and gate/up fused)."""
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        if a + "o_proj.bias" in sd and bool(sd[a + "o_proj.bias"].any()):
            raise NotImplementedError("a non-zero o_proj bias is not supported by the native decoder")
        out[f"layers.{i}.attn.wqkv.weight"] = torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"])
        if cfg.qkv_bias:
            out[f"layers.{i}.attn.wqkv.bias"] = torch.cat([sd[a + f"{n}_proj.bias"] for n in "qkv"])
        out[f"layers.{i}.attn.wo.weight"] = sd[a + "o_proj.weight"]
        out[f"layers.{i}.mlp.w13.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[f"layers.{i}.mlp.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[f"layers.{i}.attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[f"layers.{i}.mlp_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def from_hf(model_or_path, *, dtype=None) -> LlamaDecoder:
    """Native decoder with the weights of an HF Llama/Qwen2/Mistral model (in memory or a directory)."""
    if isinstance(model_or_path, (str, Path)):
        from transformers import AutoModelForCausalLM
        path = Path(model_or_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: pass an HF model directory")
        hf_model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    else:
        hf_model = model_or_path
    cfg = config_from_hf(hf_model.config)
    model = LlamaDecoder(cfg)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state_dict_from_hf(sd, cfg), strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"weight mapping failed: missing {missing}, unexpected {unexpected}")
    return model.to(dtype or next(hf_model.parameters()).dtype)


def to_hf(model: LlamaDecoder):
    """Export to an HF `LlamaForCausalLM` with identical weights (window-free models only)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = model.config
    if cfg.sliding_window or (cfg.layer_windows and any(cfg.layer_windows)):
        raise ValueError("LlamaForCausalLM has no sliding window: export needs a window-free model")
    eos = cfg.eos_token_id
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, hidden_act=cfg.hidden_act, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.qkv_bias, bos_token_id=cfg.bos_token_id, eos_token_id=eos,
        pad_token_id=cfg.pad_token_id)
    hf = LlamaForCausalLM(hf_cfg).to(model.dtype)
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
          "lm_head.weight": model.lm_head.weight}
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for i, layer in enumerate(model.layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        for n, t in zip("qkv", layer.attn.wqkv.weight.split([q, kv, kv])):
            sd[a + f"{n}_proj.weight"] = t
        if cfg.qkv_bias:
            for n, t in zip("qkv", layer.attn.wqkv.bias.split([q, kv, kv])):
                sd[a + f"{n}_proj.bias"] = t
            sd[a + "o_proj.bias"] = torch.zeros(cfg.dim, dtype=model.dtype)
        sd[a + "o_proj.weight"] = layer.attn.wo.weight
        gate, up = layer.mlp.w13.weight.chunk(2)
        sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"] = gate, up
        sd[p + "mlp.down_proj.weight"] = layer.mlp.w2.weight
        sd[p + "input_layernorm.weight"] = layer.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = layer.mlp_norm.weight
    hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return hf.eval()
