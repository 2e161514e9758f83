"""The native decoder behind an installed HF Llama-family model, on the model's own weights.

`native_for(hf_model)` gives a `LlamaDecoder` whose parameters and the HF model's are ONE copy:
q/k/v (and gate/up) are fused into one k-major matrix (models/layout.py) and the HF model's
q_proj/k_proj/v_proj (gate_proj/up_proj) weights are re-pointed at row-slices of it; o_proj,
down_proj, the embedding and lm_head are re-laid k-major and shared; the norms are shared as they
are. The HF model keeps working through these views (values unchanged; in-place edits such as an
optimizer step or `load_state_dict` land in the shared storage, so the native decoder sees them).
A change the views cannot carry (`model.to(...)`, a parameter replaced or re-pointed, a module
swapped, a hook added, a config edit) changes the model's fingerprint, and the next call rebuilds.

It refuses (returns None, with the reason in `unsupported_reason`) whatever the native decoder does
not express exactly: other architectures or subclasses, rope scaling types it lacks, non-SiLU MLPs,
MLP or o_proj biases, dropout in training mode, accelerate hooks, forward hooks.

GPT2LMHeadModel runs on the native GPT-2 decoder the same way (models/hf_native_gpt2.py: its
Conv1D weights are shared as they are, wte is re-laid k-major).
"""
from __future__ import annotations

import functools
import inspect
import weakref

import torch
import torch.nn as nn

from . import hf_native_gpt2
from .config import DecoderConfig
from .hf_adapter import call_setting
from .hf_share import FromHF, fuse, hooks_or_placement, k_major, saves_contiguous, share
from .hf_weights import config_from_hf
from .llama import LlamaDecoder, RMSNorm
from .rope import inv_freq

# exact classes only: a subclass may override forward, and the native decoder would not follow it
CLASSES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "mistral",
           "GPT2LMHeadModel": "gpt2"}

_BUILT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # hf model -> (fingerprint, decoder | reason)


class HFNativeDecoder(FromHF, LlamaDecoder):
    """LlamaDecoder whose generation defaults and position limit are those of the HF model it was
    built from. Rotary positions have no table to run out of: like the HF model (and the engine's
    HF adapter) it runs past max_position_embeddings when the engine lets it (its cache is sized
    per call, so config.max_seq_len bounds nothing here)."""
    runs_past_max_positions = True

    @property
    def max_positions(self):
        hf = self._hf()
        return getattr(hf.config, "max_position_embeddings", None) if hf is not None else None


def native_for(hf_model) -> FromHF | None:
    """The native decoder sharing `hf_model`'s weights, built on first use and rebuilt when the
    model changed since; None when the model is not one the native decoder expresses exactly."""
    if type(hf_model).__name__ not in CLASSES:
        return None
    fp = _fingerprint(hf_model)
    built = _BUILT.get(hf_model)
    if built is not None and built[0] == fp:
        return built[1] if isinstance(built[1], FromHF) else None
    reason = unsupported_reason(hf_model)
    if reason is None:
        with torch.no_grad():
            value = hf_native_gpt2.build(hf_model) if _is_gpt2(hf_model) else _build(hf_model)
        fp = _fingerprint(hf_model)  # the re-pointed weights
    else:
        value = reason
    _BUILT[hf_model] = (fp, value)
    return value if isinstance(value, FromHF) else None


def why_not_native(hf_model) -> str | None:
    """The reason the last native_for(hf_model) refused, else None."""
    built = _BUILT.get(hf_model)
    return built[1] if built is not None and isinstance(built[1], str) else None


def unsupported_reason(hf) -> str | None:
    """None when the native decoder computes exactly what `hf`'s forward computes, else why not."""
    name = type(hf).__name__
    if name not in CLASSES or not type(hf).__module__.startswith("transformers.models."):
        return f"{name} is not one of {sorted(CLASSES)}"
    if _is_gpt2(hf):
        return hf_native_gpt2.unsupported_reason(hf)
    try:
        cfg = config_from_hf(hf.config)
    except (NotImplementedError, ValueError) as e:
        return str(e)
    if getattr(hf.config, "pretraining_tp", 1) not in (1, None):
        return f"pretraining_tp={hf.config.pretraining_tp}"
    if hf.training and float(getattr(hf.config, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout in training mode"
    base, head = hf.model, hf.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return "lm_head is not a bias-free nn.Linear"
    if type(base.embed_tokens) is not nn.Embedding:
        return "embed_tokens is not an nn.Embedding"
    if head.weight.shape != base.embed_tokens.weight.shape:
        return f"lm_head {tuple(head.weight.shape)} and embeddings {tuple(base.embed_tokens.weight.shape)} differ"
    if len(base.layers) != cfg.n_layers:
        return "layer count differs from the config"
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(lin) is not nn.Linear:
                return f"a projection is {type(lin).__name__}, not nn.Linear (adapters, quantization)"
        if a.o_proj.bias is not None or m.gate_proj.bias is not None or m.up_proj.bias is not None \
                or m.down_proj.bias is not None:
            return "o_proj / MLP biases are not expressed by the native decoder"
        if (a.q_proj.bias is None) != (not cfg.qkv_bias) or not (
                (a.q_proj.bias is None) == (a.k_proj.bias is None) == (a.v_proj.bias is None)):
            return "q/k/v biases do not match the config"
    return hooks_or_placement(hf)


def _is_gpt2(hf) -> bool:
    return CLASSES.get(type(hf).__name__) == "gpt2"


def _fingerprint(hf) -> tuple:
    """Everything whose change makes a built decoder stale, cheap to compare per call."""
    ptrs = tuple((p.data_ptr(), p.dtype, p.device, p.shape) for p in hf.parameters())
    modules = list(hf.modules())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + (getattr(m, "_hf_hook", None) is not None)
                for m in modules)
    names = ("rope_parameters", "rope_scaling", "rms_norm_eps", "sliding_window", "layer_types", "use_sliding_window",
             "max_position_embeddings", "hidden_act", "attention_dropout", "pretraining_tp")
    names += hf_native_gpt2.CONFIG_NAMES
    return (ptrs, hooks, hf.training, tuple(map(type, modules)),  # a module swapped (GPT-2's activations)
            repr([getattr(hf.config, n, None) for n in names]))


def _build(hf) -> HFNativeDecoder:
    cfg: DecoderConfig = config_from_hf(hf.config)
    base = hf.model
    embed = base.embed_tokens.weight
    cfg.vocab_size = int(embed.shape[0])  # resized embeddings count, not the config's number
    cfg.tie_embeddings = hf.get_output_embeddings().weight is embed
    cfg.max_seq_len = 2 ** 31 - 1  # the limit is max_positions, checked (or not) by the engine as for HF
    device, dtype = embed.device, embed.dtype
    with torch.device("meta"):  # the structure only: every tensor is the HF model's, set below
        model = HFNativeDecoder(cfg)
    object.__setattr__(model, "_hf", weakref.ref(hf))  # not a submodule, not a strong reference
    model.embed.weight = share(base.embed_tokens.weight, k_major(embed.detach()))
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    else:
        head = hf.get_output_embeddings().weight
        model.lm_head.weight = share(head, k_major(head.detach()))
    model.norm.weight = share(base.norm.weight, base.norm.weight.detach())
    for module in (base.embed_tokens, hf.get_output_embeddings()):
        saves_contiguous(module)
    for layer, block in zip(base.layers, model.layers):
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            saves_contiguous(lin)
        fused, views = fuse([a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach()])
        for lin, view in zip((a.q_proj, a.k_proj, a.v_proj), views):
            lin.weight.data = view
        block.attn.wqkv.weight = nn.Parameter(fused, requires_grad=False)
        if cfg.qkv_bias:
            bias = torch.cat([a.q_proj.bias.detach(), a.k_proj.bias.detach(), a.v_proj.bias.detach()])
            start = 0
            for lin in (a.q_proj, a.k_proj, a.v_proj):
                n = lin.bias.shape[0]
                lin.bias.data = bias[start:start + n]
                start += n
            block.attn.wqkv.bias = nn.Parameter(bias, requires_grad=False)
        fused, views = fuse([m.gate_proj.weight.detach(), m.up_proj.weight.detach()])
        m.gate_proj.weight.data, m.up_proj.weight.data = views
        block.mlp.w13.weight = nn.Parameter(fused, requires_grad=False)
        block.attn.wo.weight = share(a.o_proj.weight, k_major(a.o_proj.weight.detach()))
        block.mlp.w2.weight = share(m.down_proj.weight, k_major(m.down_proj.weight.detach()))
        block.attn_norm.weight = share(layer.input_layernorm.weight, layer.input_layernorm.weight.detach())
        block.mlp_norm.weight = share(layer.post_attention_layernorm.weight,
                                       layer.post_attention_layernorm.weight.detach())
    for module in model.modules():
        if isinstance(module, RMSNorm):  # CPU-path operands were made on meta above
            module.n_eps = torch.tensor([float(cfg.dim), module.eps]).unbind()
    model.inv_freq = inv_freq(cfg.head_dim, cfg.rope_theta, device=device)
    assert all(p.device == device and p.dtype == dtype for p in model.parameters())
    return model.eval()


def extra_bytes(hf_model) -> int:
    """Bytes the native decoder holds beyond the HF model's own storages (0 when fully shared)."""
    built = _BUILT.get(hf_model)
    if built is None or not isinstance(built[1], FromHF):
        return 0
    hf_storages = {p.untyped_storage().data_ptr() for p in hf_model.parameters()}
    seen, extra = set(), 0
    for t in list(built[1].parameters()) + list(built[1].buffers()):
        s = t.untyped_storage()
        if s.data_ptr() not in hf_storages and s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            extra += s.nbytes()
    return extra


# Calls that need the HF model itself: its attentions / hidden states / cache object in the output,
# HF's cache-free recomputation (use_cache=False), or model inputs beyond ids and mask (a cache,
# embeddings, positions, token types, or any other model kwarg).
ADAPTER_OUTPUTS = ("output_attentions", "output_hidden_states")
MODEL_INPUTS = ("past_key_values", "cache", "cache_position", "inputs_embeds", "position_ids", "token_type_ids",
                "logits_to_keep")


@functools.lru_cache(maxsize=None)
def _model_inputs(cls) -> frozenset:
    """What generate() would hand this class's forward besides the prompt, its mask and use_cache:
    the arguments its forward names, and HF's other model inputs."""
    named = set(inspect.signature(cls.forward).parameters) - {"self", "input_ids", "attention_mask", "use_cache",
                                                                "labels", "kwargs"}
    return frozenset(named | set(MODEL_INPUTS))


def route(hf_model, call: dict, attention_mask=None):
    """THE routing decision of the drop-in: the native decoder for `call` (the generate() keyword
    arguments the caller passed, prompt and mask removed) when it computes exactly what HF's model
    would, else `hf_model` itself (the engine then drives it through the HF adapter)."""
    return route_why(hf_model, call, attention_mask)[0]


def route_why(hf_model, call: dict, attention_mask=None):
    """(route(...)'s answer, why not native: None when native)."""
    if type(hf_model).__name__ not in CLASSES:
        return hf_model, f"{type(hf_model).__name__} is not one of {sorted(CLASSES)}"
    if attention_mask is not None:
        # holes inside a row are fine (not stored, positions count real tokens, as HF); a pad in the
        # last column is not: HF takes the next token from the logits of that pad's forward
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or \
                not bool(attention_mask[:, -1].all()):
            return hf_model, "attention_mask: right padding or not a 2D tensor"
    inputs = _model_inputs(type(hf_model))
    for name, value in call.items():
        if value is not None and name in inputs:
            return hf_model, f"model input {name}"  # only the HF forward knows it
    for name in ADAPTER_OUTPUTS:
        if call_setting(hf_model, call, name):
            return hf_model, name
    if call_setting(hf_model, call, "use_cache") is False:
        return hf_model, "use_cache=False"  # HF recomputes every step without a cache: the adapter does so
    if call_setting(hf_model, call, "return_dict_in_generate"):
        return hf_model, "return_dict_in_generate"  # HF's output carries HF's own cache: the adapter's
    native = native_for(hf_model)
    if native is None:
        return hf_model, why_not_native(hf_model)
    c = native.config
    windowed = getattr(c, "sliding_window", 0) or any(getattr(c, "layer_windows", None) or ())
    if attention_mask is not None and windowed and \
            not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
        return hf_model, "attention_mask holes under a sliding window"  # HF's window counts them as slots
    return native, None

