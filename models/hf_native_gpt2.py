"""The native GPT-2 decoder behind an installed HF GPT2LMHeadModel, on the model's own weights.

HF's Conv1D weights are (in, out): their transposes are already the k-major (out, in) layout of
the native nn.Linear weights (models/layout.py), so c_attn, c_proj, c_fc and their biases, the
LayerNorms and wpe are shared as they are (views, the HF parameters untouched); wte (and lm_head,
tied to it) is re-laid k-major and the HF parameter re-pointed at it. One copy: `extra_bytes` is 0.

It refuses whatever the native decoder does not express exactly: other module classes anywhere in
the model (a subclass, a swapped module or activation), cross-attention (add_cross_attention),
reorder_and_upcast_attn, an activation outside models/gpt2.ACTIVATIONS, a LayerNorm eps other than
the config's, dropout in training mode, and (models/hf_share.py) hooks and mixed placements.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from .gpt2 import ACTIVATIONS, GPT2Config, GPT2Decoder
from .hf_share import FromHF, hooks_or_placement, k_major, saves_contiguous, share, view_of

# what the fingerprint of models/hf_native.py watches besides the weights (a change rebuilds)
CONFIG_NAMES = ("n_positions", "layer_norm_epsilon", "activation_function", "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention",
                "attn_pdrop", "resid_pdrop", "embd_pdrop", "n_inner")


class HFNativeGPT2(FromHF, GPT2Decoder):
    """GPT2Decoder whose generation defaults are those of the HF model it was built from. Its
    position limit is the table's (n_positions), a hard one: past it HF's own forward fails too, so
    the engine refuses such a call before any work and the drop-in hands it to HF."""


def unsupported_reason(hf) -> str | None:
    """None when GPT2Decoder computes exactly what `hf`'s forward computes, else why not."""
    from transformers.activations import ACT2FN
    from transformers.models.gpt2 import modeling_gpt2 as m
    from transformers.pytorch_utils import Conv1D
    c, t = hf.config, hf.transformer
    if type(t) is not m.GPT2Model:
        return f"transformer is {type(t).__name__}, not GPT2Model"
    if getattr(c, "add_cross_attention", False):
        return "add_cross_attention (cross-attention blocks) is not expressed by the native decoder"
    if getattr(c, "reorder_and_upcast_attn", False):
        return "reorder_and_upcast_attn is not expressed by the native decoder"
    act = c.activation_function
    if act not in ACTIVATIONS:
        return f"activation_function {act!r} is not one of {sorted(ACTIVATIONS)}"
    if hf.training and any(float(getattr(c, n, 0.0) or 0.0) > 0 for n in ("attn_pdrop", "resid_pdrop", "embd_pdrop")):
        return "dropout in training mode"
    head = hf.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return "lm_head is not a bias-free nn.Linear"
    if type(t.wte) is not nn.Embedding or type(t.wpe) is not nn.Embedding:
        return "wte / wpe are not nn.Embedding"
    if head.weight.shape != t.wte.weight.shape:
        return f"lm_head {tuple(head.weight.shape)} and wte {tuple(t.wte.weight.shape)} differ"
    if t.wpe.weight.shape[0] != c.n_positions:
        return f"wpe has {t.wpe.weight.shape[0]} rows, the config n_positions={c.n_positions}"
    dim, n = c.n_embd, len(t.h)
    if n != c.n_layer or dim % c.n_head:
        return "layer count or head split differs from the config"
    inner = c.n_inner if c.n_inner is not None else 4 * dim
    act_type = type(ACT2FN[act])
    norms = [t.ln_f] + [ln for b in t.h for ln in (b.ln_1, b.ln_2)]
    if any(type(ln) is not nn.LayerNorm or ln.weight is None or ln.bias is None or ln.normalized_shape != (dim,)
           or ln.eps != c.layer_norm_epsilon for ln in norms):
        return "a LayerNorm is not nn.LayerNorm(n_embd, eps=layer_norm_epsilon) with weight and bias"
    for block in t.h:
        a, mlp = block.attn, block.mlp
        if (type(block), type(a), type(mlp)) != (m.GPT2Block, m.GPT2Attention, m.GPT2MLP) or a.is_cross_attention:
            return "a block, attention or MLP is not GPT-2's own class"
        if any(type(lin) is not Conv1D for lin in (a.c_attn, a.c_proj, mlp.c_fc, mlp.c_proj)):
            return "a projection is not Conv1D (adapters, quantization)"
        shapes = [tuple(lin.weight.shape) for lin in (a.c_attn, a.c_proj, mlp.c_fc, mlp.c_proj)]
        if shapes != [(dim, 3 * dim), (dim, dim), (dim, inner), (inner, dim)]:
            return "projection shapes differ from the config"
        if type(mlp.act) is not act_type:
            return f"an MLP activation is {type(mlp.act).__name__}, not ACT2FN[{act!r}]"
    return hooks_or_placement(hf)


def build(hf) -> HFNativeGPT2:
    c, t = hf.config, hf.transformer
    wte, head = t.wte.weight, hf.get_output_embeddings().weight
    cfg = GPT2Config(vocab_size=int(wte.shape[0]), dim=c.n_embd, n_layers=c.n_layer, n_heads=c.n_head,
                     hidden_dim=c.n_inner if c.n_inner is not None else 4 * c.n_embd,
                     activation=c.activation_function, norm_eps=c.layer_norm_epsilon, n_positions=c.n_positions,
                     # the cache may be wider (pads' scratch slots); positions end at n_positions
                     max_seq_len=2 ** 31 - 1,
                     scale_attn_weights=bool(c.scale_attn_weights),
                     scale_attn_by_inverse_layer_idx=bool(c.scale_attn_by_inverse_layer_idx),
                     tie_embeddings=head is wte, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                     pad_token_id=c.pad_token_id)
    device, dtype = wte.device, wte.dtype
    with torch.device("meta"):  # the structure only: every tensor is the HF model's, set below
        model = HFNativeGPT2(cfg)
    object.__setattr__(model, "_hf", weakref.ref(hf))  # not a submodule, not a strong reference
    model.embed.weight = share(wte, k_major(wte.detach()))  # lm_head's matmul wants wte k-major
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    else:
        model.lm_head.weight = share(head, k_major(head.detach()))
    for module in (t.wte, hf.get_output_embeddings()):
        saves_contiguous(module)
    model.wpe.weight = view_of(t.wpe.weight)

    def same(dst: nn.Module, src: nn.Module, conv: bool = False) -> None:
        dst.weight = view_of(src.weight.t() if conv else src.weight)  # Conv1D (in, out): its transpose
        dst.bias = view_of(src.bias)

    same(model.ln_f, t.ln_f)
    for src, dst in zip(t.h, model.layers):
        same(dst.ln_1, src.ln_1)
        same(dst.ln_2, src.ln_2)
        same(dst.attn.c_attn, src.attn.c_attn, conv=True)
        same(dst.attn.c_proj, src.attn.c_proj, conv=True)
        same(dst.mlp.c_fc, src.mlp.c_fc, conv=True)
        same(dst.mlp.c_proj, src.mlp.c_proj, conv=True)
    assert all(p.device == device and p.dtype == dtype for p in model.parameters())
    return model.eval()
