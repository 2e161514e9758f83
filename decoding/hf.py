"""The drop-in: `install(model)` makes an HF model's own `model.generate(...)` run on the engine.

It takes HF's arguments exactly as HF's `generate` does (positional `inputs`, `inputs=`,
`input_ids=`, `attention_mask=`, `generation_config=`, ...) and returns what HF returns: a
LongTensor, or HF's `GenerateDecoderOnlyOutput` / `GenerateBeamDecoderOnlyOutput` when
`return_dict_in_generate` is on. Whatever the engine does not implement (its validation raises
NotImplementedError before the first forward) runs on HF's own generate instead, with one warning
per argument. `uninstall(model)` removes the instance attribute, so the class's method is back.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import re
import types
import warnings

import torch

from models.hf_adapter import call_setting

from .api import generate as engine_generate

_ATTR = "_decoding_hf_install"  # the install record kept on the model


def install(model, native: bool = True):
    """Route `model.generate` through the engine; returns the model. Installing twice only updates
    `native`. native=True runs Llama-family models (Llama, Qwen2, Mistral) and GPT-2 on the native
    decoders built on their own weights (models/hf_native.py) where they compute exactly what HF's model does;
    native=False keeps every call on the HF adapter."""
    from models.hf_adapter import is_hf_model
    if not is_hf_model(model):
        raise TypeError(f"decoding.hf.install takes a Hugging Face PreTrainedModel, got {type(model).__name__}; "
                        "call decoding.generate(model, input_ids, ...) for native models")
    if getattr(model, _ATTR, None) is not None:
        getattr(model, _ATTR)["native"] = native
        return model
    had_own = "generate" in vars(model)  # an instance attribute someone set before us
    hf_generate = model.generate  # bound: the class's method or that attribute
    record = {"hf_generate": hf_generate, "had_own": had_own, "warned": set(), "native": native,
              "signature": inspect.signature(hf_generate)}  # follows HF's decorators (__wrapped__)

    @functools.wraps(getattr(hf_generate, "__func__", hf_generate))  # HF's docstring and signature
    def generate(self, *args, **kwargs):
        return _generate(self, vars(self)[_ATTR], args, kwargs)
    generate.__module__, generate.__qualname__ = __name__, "install.<locals>.generate"  # repr: not HF's

    # plain instance attributes (nn.Module tracks neither); a bound method, so copy.deepcopy(model)
    # gives a copy whose generate runs on the copy
    object.__setattr__(model, _ATTR, record)
    object.__setattr__(model, "generate", types.MethodType(generate, model))
    return model


def uninstall(model):
    """Give the model back HF's own generate (the exact method it had before install)."""
    record = vars(model).pop(_ATTR, None)
    if record is None:
        return model
    if record["had_own"]:
        object.__setattr__(model, "generate", record["hf_generate"])
    else:
        vars(model).pop("generate", None)  # the class's method shows through again
    return model


def is_installed(model) -> bool:
    return _ATTR in vars(model)


# calls that ran on the engine vs on HF's generate, and the fallbacks by argument (process-wide;
# tests read them so that a comparison cannot pass by falling back)
COUNTS = {"engine": 0, "fallback": 0}
FALLBACKS: collections.Counter = collections.Counter()


def counts() -> dict:
    return {**COUNTS, "fallbacks": dict(FALLBACKS)}


def reset_counts() -> None:
    COUNTS.update(engine=0, fallback=0)
    FALLBACKS.clear()


def _generate(model, record, args, kwargs):
    hf_generate, signature = record["hf_generate"], record["signature"]
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return hf_generate(*args, **kwargs)  # HF raises its own error for a call it cannot bind
    call = dict(bound.arguments)  # only what the caller passed
    extra = call.pop(next((n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), ""), {})
    call.update(extra)
    inputs = call.pop("inputs", None)
    if inputs is None:
        inputs = call.pop("input_ids", None)
    elif "input_ids" in call:
        return hf_generate(*args, **kwargs)  # HF's error for a prompt passed twice
    attention_mask = call.pop("attention_mask", None)
    if inputs is None and call.get("inputs_embeds") is None:
        inputs = _bos_prompt(model, call)  # HF starts from bos, batch size 1
        if inputs is None:
            return _fallback(record, "inputs", "no prompt and no bos_token_id", args, kwargs)
    if inputs is not None and not isinstance(inputs, torch.Tensor):  # None: an inputs_embeds prompt
        return _fallback(record, "inputs", "the prompt is not a token-id tensor", args, kwargs)
    streamer = call.get("streamer")
    if streamer is not None:
        call["streamer"] = watched = _Watched(streamer)
    target = model
    if record.get("native") and call_setting(model, call, "cache_implementation", None) != "static":
        # a static cache is HF's StaticCache, filled by HF's forward: the HF adapter runs it
        from models.hf_native import route
        target = route(model, call, attention_mask)  # the native decoder, or the model itself (the HF adapter)
    counter = _adapter(model) if target is model else target  # whose forward count tells if work began
    forwards = counter.forwards if counter is not None else None
    try:
        out = engine_generate(target, inputs, attention_mask, **call)
    except NotImplementedError as e:
        if streamer is not None and watched.started:
            watched.close()
            raise  # text already went out: running HF now would stream it twice
        return _fallback(record, _argument(e), str(e), args, kwargs)
    except (ValueError, TypeError) as e:
        streamed = streamer is not None and watched.started
        if streamed or counter is None or counter.forwards != forwards:
            if streamer is not None:
                watched.close()
            raise
        # the engine refused a value before any work: HF judges it (its own error, or its result)
        return _fallback(record, _argument(e), str(e), args, kwargs)
    except BaseException:
        if streamer is not None:
            watched.close()  # a TextIteratorStreamer's reader would otherwise wait forever
        raise
    COUNTS["engine"] += 1
    return _as_hf_output(model, out, call)


def _adapter(model):
    """The engine's adapter of `model` (its forward count tells whether a refusal came before any work)."""
    from .api import as_decoder
    try:
        return as_decoder(model)
    except (TypeError, NotImplementedError):
        return None  # the engine call raises the same: a fallback follows


def _bos_prompt(model, call: dict):
    """HF's prompt when none is given: [[bos_token_id]] on the model's device."""
    bos = call_setting(model, call, "bos_token_id", None)
    if isinstance(bos, torch.Tensor):
        bos = int(bos)
    if not isinstance(bos, int) or isinstance(bos, bool) or bos < 0:
        return None
    return torch.full((1, 1), bos, dtype=torch.long, device=model.device)


def _argument(error: Exception) -> str:
    """The argument an engine NotImplementedError names (it quotes it as `name=value` or `name`)."""
    found = re.search(r"`([A-Za-z_][A-Za-z0-9_]*)", str(error))
    return found.group(1) if found else type(error).__name__


def _fallback(record, name: str, reason: str, args, kwargs):
    result = record["hf_generate"](*args, **kwargs)  # HF's own errors propagate as HF raises them
    COUNTS["fallback"] += 1
    FALLBACKS[name] += 1
    if name not in record["warned"]:  # once per argument, as HF's warning_once
        record["warned"].add(name)
        warnings.warn(f"decoding.hf: `{name}` runs on Hugging Face's own generate() ({reason.split(';')[0]}); "
                      "this warning is shown once", UserWarning, stacklevel=4)
    return result


class _Watched:
    """Passes put/end through and remembers whether anything was streamed yet."""

    def __init__(self, streamer):
        self.streamer, self.started, self.ended = streamer, False, False

    def put(self, value):
        self.started = True
        self.streamer.put(value)

    def end(self):
        self.ended = True
        self.streamer.end()

    def close(self) -> None:
        """end() once if streaming began and the run died before its own end()."""
        if self.started and not self.ended:
            self.end()

    def __getattr__(self, name):  # the streamer's other methods (beam search's put_hypotheses)
        attr = getattr(self.streamer, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.started = True
            return attr(*args, **kwargs)
        return call



def _plain(t):
    # the engine runs under inference_mode; HF returns ordinary tensors that callers may edit in place
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def _steps(values):
    if values is None:
        return None
    return tuple(tuple(_plain(t) for t in v) if isinstance(v, tuple) else _plain(v) for v in values)


def _as_hf_output(model, out, call: dict):
    sequences = _plain(out.sequences)
    if not call_setting(model, call, "return_dict_in_generate", False):
        return sequences
    from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

    from models.hf_adapter import caller_cache
    beams = (call_setting(model, call, "num_beams", 1) or 1) > 1
    cls = GenerateBeamDecoderOnlyOutput if beams else GenerateDecoderOnlyOutput
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = dict(sequences=sequences, scores=_steps(out.scores), logits=_steps(out.logits),
              attentions=_steps(out.attentions), hidden_states=_steps(out.hidden_states))
    kw["cache" if "cache" in fields else "past_key_values"] = caller_cache(out.cache)
    if beams:
        kw.update(sequences_scores=_plain(out.sequences_scores), beam_indices=_plain(out.beam_indices))
    return cls(**{k: v for k, v in kw.items() if k in fields})
