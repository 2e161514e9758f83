"""One copy of an HF model's weights: what the native decoders built on an installed HF model
(models/hf_native.py, models/hf_native_gpt2.py) share.

A shared weight is either the HF tensor itself (or a view of it), or a re-laid copy that the HF
parameter is re-pointed at (same Parameter object: optimizers keep working), so the HF model and
the native decoder read one storage. `saves_contiguous` keeps HF's state_dict / save_pretrained
giving tensors of their own for the weights that became strided views.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn


class FromHF:
    """Mixin of a native decoder built on an HF model's weights: its generation defaults are the
    HF model's (exactly the adapter's), it counts its forwards (decoding.hf: did a refusal come
    before any work?), and its compiled CPU step takes the weights as inputs (one copy)."""
    compile_frozen = False  # models/compiled_cpu.py: the weights are the caller's HF model's
    forwards = 0

    def forward(self, *args, **kwargs):
        self.forwards += 1
        return super().forward(*args, **kwargs)

    @property
    def generation_defaults(self) -> dict:
        from .adapt import as_decoder
        hf = self._hf()
        return as_decoder(hf).generation_defaults if hf is not None else {}


def k_major(weight: torch.Tensor) -> torch.Tensor:
    """`weight` stored k-major (models/layout.py): itself when it already is, else a re-laid copy."""
    return weight if weight.stride(0) == 1 else weight.t().contiguous().t()


def fuse(weights: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One k-major (sum out, in) matrix holding `weights` stacked, and its row-slices (views)."""
    total, k = sum(w.shape[0] for w in weights), weights[0].shape[1]
    storage = torch.empty(k, total, dtype=weights[0].dtype, device=weights[0].device)
    fused, views, start = storage.t(), [], 0
    for w in weights:
        fused[start:start + w.shape[0]].copy_(w)
        views.append(fused[start:start + w.shape[0]])
        start += w.shape[0]
    return fused, views


_SAVED: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()  # view -> its copy, while one is alive


def _state_dict_contiguous(module, state_dict, prefix, local_metadata) -> None:
    """state_dict() hook of the HF modules whose weights are now slices of a shared storage: their
    entries are tensors of their own, as before install (safetensors and HF's save_pretrained refuse
    strided or partly shared tensors). A tied embedding/lm_head pair gets one copy for both."""
    for name, _ in module.named_parameters(recurse=False):
        t = state_dict.get(prefix + name)
        if t is None or isinstance(t, nn.Parameter):  # keep_vars=True asks for the parameters themselves
            continue
        if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t._version, t.dtype,
               t.device)
        copy = _SAVED.get(key)
        if copy is None:
            copy = _SAVED[key] = t.contiguous() if not t.is_contiguous() else t.clone()
        state_dict[prefix + name] = copy


def saves_contiguous(module: nn.Module) -> None:
    if not getattr(module, "_decoding_contiguous_hook", False):
        module.register_state_dict_post_hook(_state_dict_contiguous)
        object.__setattr__(module, "_decoding_contiguous_hook", True)


def share(module_param: nn.Parameter, tensor: torch.Tensor) -> nn.Parameter:
    """Point the HF parameter at `tensor` (same Parameter object: optimizers keep working) and
    return a native Parameter on the same storage."""
    module_param.data = tensor
    return nn.Parameter(tensor, requires_grad=False)


def view_of(tensor: torch.Tensor) -> nn.Parameter:
    """A native Parameter on `tensor`'s storage (no copy, HF's parameter left as it is)."""
    return nn.Parameter(tensor.detach(), requires_grad=False)


def hooks_or_placement(hf) -> str | None:
    """What no native decoder expresses, whatever the architecture: weights on several devices or
    dtypes (or not loaded), accelerate hooks, forward hooks."""
    params = list(hf.parameters())
    if any(p.device.type == "meta" for p in params) or len({(p.device, p.dtype) for p in params}) != 1:
        return "weights on several devices or dtypes, or not loaded (meta)"
    for module in hf.modules():
        if getattr(module, "_hf_hook", None) is not None:
            return "accelerate hooks (device_map / offloading)"
        if module._forward_hooks or module._forward_pre_hooks:
            return "forward hooks on the model"
    return None
