"""One door into the model protocol (models/protocol.py): `as_decoder(model)`.

Only here does the engine ask what kind of object it was given: a Hugging Face causal LM goes
through the adapter (one per model, kept while the model lives); a native model that declares the
protocol's capabilities is used as is; one that has only the operations (vocab_size, new_cache,
forward) gets the conservative defaults through `Declared`.
"""
from __future__ import annotations

import inspect
import sys
import weakref

import torch

from .protocol import CAPABILITIES, bound_forward, special_tokens

_ADAPTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def as_decoder(model):
    """The model behind the model protocol, or a TypeError saying what the protocol needs."""
    # no PreTrainedModel exists before transformers.modeling_utils is imported; importing it to ask
    # costs seconds, which the first call's wall_s (tokens/s) would count
    if "transformers.modeling_utils" in sys.modules:
        from .hf_adapter import HFModel, is_hf_model
        if is_hf_model(model):
            adapter = _ADAPTERS.get(model)
            if adapter is None:
                adapter = _ADAPTERS[model] = HFModel(model)  # raises for encoder-decoder / no LM head
            return adapter
    if not (callable(getattr(model, "new_cache", None)) and callable(getattr(model, "forward", None))
            and isinstance(getattr(model, "vocab_size", None), int)):
        raise TypeError(f"model must be a Hugging Face causal LM or a native decoder with vocab_size, new_cache() "
                        f"and forward() (the model protocol), got {type(model).__name__}")
    if all(hasattr(model, name) for name in CAPABILITIES):
        return model
    return Declared(model)


class Declared:
    """A native model with only the protocol's operations, and the capabilities it does not declare
    filled in: ids below vocab_size, the device of its parameters, the position limit of its
    config (max_seq_len), no rollback limit, hidden states if its forward takes return_hidden, its
    config's special tokens, its forward as forward_on."""

    def __init__(self, model):
        self.model = model
        self.vocab_size = model.vocab_size
        self.embed_size = getattr(model, "embed_size", model.vocab_size)
        self.device = _device(model)
        config = getattr(model, "config", None)
        self.max_positions = getattr(model, "max_positions", getattr(config, "max_seq_len", None))
        self.runs_past_max_positions = getattr(model, "runs_past_max_positions", False)
        self.hf_passthrough = False
        self.max_rollback = getattr(model, "max_rollback", None)
        self.rollback_window = getattr(model, "rollback_window", None)
        self.returns_hidden = getattr(model, "returns_hidden", None)
        if self.returns_hidden is None:
            self.returns_hidden = "return_hidden" in inspect.signature(model.forward).parameters
        self.generation_defaults = getattr(model, "generation_defaults", None) or special_tokens(config)
        self.new_cache = model.new_cache
        self.forward = model.forward
        if not callable(getattr(model, "forward_on", None)):
            self.forward_on = lambda cache: bound_forward(self, cache)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name):  # anything else the model has (its config, its modules)
        if "model" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["model"], name)


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    if device is None:
        params = getattr(model, "parameters", None)
        device = next(params()).device if callable(params) else "cpu"
    return torch.device(device)
