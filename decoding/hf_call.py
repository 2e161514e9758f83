"""The model kwargs of an HF generate() call (token_type_ids, position_ids, logits_to_keep, ...) and
the per-step outputs HF returns (output_logits / output_hidden_states / output_attentions, the
cache): what the engine runs, and the NotImplementedError naming the argument for what it does not.

Outputs are recorded by the HF adapter (models.hf_outputs.Recorder) for the lockstep strategies
(greedy, sampling, beam search, beam sampling), whose forwards are HF's forwards one for one.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor

# model inputs HF's generate forwards to the model; popped before the generation config is resolved
MODEL_INPUTS = ("token_type_ids", "position_ids", "logits_to_keep", "inputs_embeds", "past_key_values", "cache",
                "cache_position")
OUTPUTS = ("output_logits", "output_hidden_states", "output_attentions")


def _lockstep(cfg) -> bool:
    return (cfg.assistant_model is None and cfg.prompt_lookup_num_tokens is None and cfg.strategy is None
            and cfg.num_beam_groups == 1)


def _not_implemented(name: str, why: str):
    return NotImplementedError(f"`{name}` {why}; call the model's own generate() for it (decoding.hf.install "
                               "falls back to it automatically)")


def check(target, extra: dict, cfg) -> None:
    """NotImplementedError for model inputs and outputs the engine does not run in this call."""
    from models.hf_adapter import HFModel
    hf = isinstance(target, HFModel)
    for name in ("inputs_embeds", "past_key_values", "cache", "cache_position"):
        if extra.get(name) is not None:
            raise _not_implemented(name, "is not implemented by the engine yet")
    for name in ("token_type_ids", "position_ids"):
        if extra.get(name) is not None:
            if not hf:
                raise _not_implemented(name, "is passed through to Hugging Face models only")
            if not isinstance(extra[name], Tensor) or extra[name].dim() != 2:
                raise _not_implemented(name, "is taken as a 2D tensor [batch, length] only")
            if not _lockstep(cfg):
                raise _not_implemented(name, "runs with greedy, sampling and beam search only")
    asked = [n for n in OUTPUTS if getattr(cfg, n)]
    if asked and cfg.return_dict_in_generate:
        if not hf:
            raise _not_implemented(asked[0], "is recorded for Hugging Face models only")
        if not _lockstep(cfg):
            raise _not_implemented(asked[0], "is recorded with greedy, sampling and beam search only")


def check_shapes(extra: dict, prompt) -> None:
    for name in ("token_type_ids", "position_ids"):
        t = extra.get(name)
        if t is not None and tuple(t.shape) != tuple(prompt.given.shape):
            raise _not_implemented(name, f"of shape {tuple(t.shape)} (not input_ids' {tuple(prompt.given.shape)})")


@contextmanager
def bound(target, extra: dict, cfg, prompt):
    """Bind this call's model inputs and recorder to the HF adapter for the run; yields the recorder."""
    from models.hf_adapter import CallInputs, HFModel
    if not isinstance(target, HFModel):
        yield None
        return
    recorder = None
    if cfg.return_dict_in_generate and any(getattr(cfg, n) for n in OUTPUTS):
        from models.hf_outputs import Recorder
        recorder = Recorder(bool(cfg.output_logits), bool(cfg.output_hidden_states), bool(cfg.output_attentions))
    device = prompt.ids.device
    tt, pos = extra.get("token_type_ids"), extra.get("position_ids")
    call = CallInputs(None if tt is None else tt.to(device), None if pos is None else pos.to(device), recorder,
                      no_cache=cfg.use_cache is False and _lockstep(cfg))
    target.call = call
    try:
        yield call
    finally:
        target.call = None


def attach(out, call, cfg) -> None:
    """The cache (HF's own object, None with use_cache=False as HF) and the recorded steps into the
    output, as HF's tuples (None where not asked)."""
    if call is None:
        return
    if cfg.use_cache is not False and _lockstep(cfg) and call.cache is not None:
        out.cache = call.cache.hf
    recorder = call.recorder
    if recorder is None:
        return
    recorder.finish()
    out.logits = tuple(recorder.logits) if cfg.output_logits else None
    out.hidden_states = tuple(recorder.hidden_states) if cfg.output_hidden_states else None
    out.attentions = tuple(recorder.attention_maps) if cfg.output_attentions else None
