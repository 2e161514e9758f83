"""The decode kernel as a Hugging Face attention implementation (docs/DESIGN.md 3.3).

Enable it on a loaded model (transformers 5.17 and 5.24):

    from models.hf_attention import enable
    enable(model)   # = register(); model.set_attn_implementation("decoding_decode")

or call `register()` before `from_pretrained(..., attn_implementation="decoding_decode")` (or before
building a model from a config whose `_attn_implementation` is "decoding_decode").

HF gives a custom attention function the causal mask only if a mask function is registered under
its name: we register SDPA's, so every call the kernel cannot take falls back to HF's own SDPA with
HF's mask (exactly what attn_implementation="sdpa" computes). The kernel itself ignores the mask:
it derives causality from the key count (keys end at slot S: HF's DynamicCache, which the adapter
uses, not a StaticCache) and left padding from `kv_start`, a per-row first-valid-key index
(int32 [B]) that the caller passes as a keyword of the model's forward (HF threads it through to
the attention function). It takes:

- a call with `kv_start`, on a non-sliding layer: every hole of the key mask must be a left pad,
  i.e. row b's keys [kv_start[b], S) are all real. `kv_start_kwargs` builds it from the HF
  adapter's validity mask and returns {} when holes sit elsewhere (per-row rollback, right pads):
  those calls use SDPA with the mask. The adapter passes `**kv_start_kwargs(valid)` (after
  recording the new tokens' validity) only when the model uses "decoding_decode".
- a call without `kv_start` when HF built no mask (T == 1 without pads, or a prefill with S == T).

Only on the Triton backend (CUDA tensors, or DECODING_ATTN=triton) and for blocks of at most
models.attention.KERNEL_MAX_TOKENS queries (decode and verify steps); CPU falls back to SDPA.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import KERNEL_DTYPES, kernel_for

NAME = "decoding_decode"


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward(*args, **kwargs)


def _kernel_args(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, dropout, kwargs):
    """(kernel, kv_start, window) when the kernel can take this call, else None."""
    B, Hq, T, D = query.shape
    S = key.shape[2]
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal  # as HF's sdpa reads it
    if (dropout or not causal or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
            or kwargs.get("position_bias") is not None
            or query.dtype not in KERNEL_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype
            or D > 256 or value.shape[-1] != D or key.shape[0] != B):
        return None
    kernel = kernel_for(query, T)
    if kernel is None:
        return None
    window = kwargs.get("sliding_window") or 0
    kv_start = kwargs.get("kv_start")
    if kv_start is not None:
        # a sliding layer keeps only its window of keys: absolute kv_start does not index them
        return (kernel, kv_start, 0) if not window else None
    if attention_mask is None and (T == 1 or S == T):  # HF's "no mask": plain causal, keys end at S
        return kernel, None, window
    return None


def decode_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """HF's attention signature: query (B, Hq, T, D), key/value (B, Hkv, S, D) -> ((B, T, Hq, D), None)."""
    args = _kernel_args(module, query, key, value, attention_mask, dropout, kwargs)
    if args is None:
        kwargs.pop("kv_start", None)
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kernel, kv_start, window = args
    B, S = key.shape[0], key.shape[2]
    lengths = torch.full((B,), S, dtype=torch.int32, device=key.device)
    out = kernel(query.transpose(1, 2), key, value, lengths, kv_start=kv_start, window=window, sm_scale=scaling)
    return out, None


def kv_start_kwargs(valid: Tensor) -> dict:
    """{"kv_start": int32 [B]} from a key-validity mask (B, S) (1 = real) whose holes are all left
    pads; {} when a row has a hole after a real key (use SDPA with the mask). One read-back."""
    valid = valid.bool()
    if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
        return {}
    return {"kv_start": (valid.shape[1] - valid.sum(1)).to(torch.int32)}


def register() -> str:
    """Register the kernel (and SDPA's mask builder) under NAME; idempotent. Returns NAME."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask
    AttentionInterface.register(NAME, decode_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def enable(model):
    """Register and switch `model` (an HF PreTrainedModel) to the kernel; returns the model."""
    model.set_attn_implementation(register())
    return model
