"""The model kwargs of an HF generate() call (token_type_ids, position_ids, logits_to_keep, ...) and
the per-step outputs HF returns (output_logits / output_hidden_states / output_attentions, the
cache): what the engine runs, and the NotImplementedError naming the argument for what it does not.

Outputs are recorded by the HF adapter (models.hf_outputs.Recorder) for the lockstep strategies
(greedy, sampling, beam search, beam sampling), whose forwards are HF's forwards one for one.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from models.hf_adapter import past_refusal

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
    hf = target.hf_passthrough
    if extra.get("cache_position") is not None:
        raise _not_implemented("cache_position", "is not implemented by the engine")
    past, name = _past(extra), _past_name(extra)
    if past is not None:
        if not hf:
            raise _not_implemented(name, "is continued on Hugging Face models only")
        refusal = past_refusal(past)
        if refusal is not None:
            raise _not_implemented(name, refusal)
        if not _lockstep(cfg) or cfg.num_beams > 1 or cfg.num_return_sequences > 1 or cfg.use_cache is False:
            raise _not_implemented(name, "is continued with greedy decoding or sampling (one sequence per prompt)")
    if cfg.cache_implementation == "static":
        _check_static(target, cfg, past)
    if extra.get("inputs_embeds") is not None:
        if not hf or not _lockstep(cfg):
            raise _not_implemented("inputs_embeds", "is taken with greedy, sampling and beam search on Hugging Face "
                                   "models")
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


def _check_static(target, cfg, past) -> None:
    """cache_implementation="static" runs in HF's own StaticCache (created as HF's generate creates
    it) with greedy decoding or sampling, one sequence per prompt, uncompiled."""
    from .config import hf_auto_compiles
    if not target.hf_passthrough or not target.runs_static_cache:
        raise _not_implemented("cache_implementation", "='static' runs on Hugging Face models (transformers 5.x) only")
    if past is not None:
        raise ValueError("Passing both `cache_implementation` (used to initialize certain caches) and a cache "
                         "object (`past_key_values`) is unsupported; pass only one of the two")
    if not _lockstep(cfg) or cfg.num_beams > 1 or cfg.num_return_sequences > 1:
        raise _not_implemented("cache_implementation", "='static' runs with greedy decoding or sampling, one "
                               "sequence per prompt")
    if hf_auto_compiles(cfg, target.device):
        raise _not_implemented("cache_implementation", "='static' is compiled by HF's generate here (compile_config, "
                               "or an accelerator); the engine runs it uncompiled only")
    if cfg.max_cache_len is not None:
        raise _not_implemented("cache_implementation", "='static' with max_cache_len is not implemented by the engine")


def _past_name(extra: dict) -> str:
    """The name the caller passed its past cache under (`cache=` in transformers 5.2x)."""
    return "cache" if extra.get("cache") is not None else "past_key_values"


def _past(extra: dict):
    return extra.get(_past_name(extra))


def embeds_placeholder(embeds, cfg) -> Tensor:
    """Token ids standing in for an inputs_embeds prompt passed without input_ids (HF's generate
    then starts from empty input_ids): the model reads the embeddings, never these ids."""
    if not isinstance(embeds, Tensor) or embeds.dim() != 3:
        raise _not_implemented("inputs_embeds", "is taken as a [batch, length, hidden] tensor only")
    if cfg.repetition_penalty not in (None, 1.0):  # HF: new tokens only, with its pad count from the mask
        raise _not_implemented("repetition_penalty", "with inputs_embeds and no input_ids is not implemented by "
                               "the engine")
    return torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)


def check_shapes(extra: dict, prompt) -> None:
    for name in ("token_type_ids", "position_ids"):
        t = extra.get(name)
        if t is not None and tuple(t.shape) != tuple(prompt.ids.shape):
            raise _not_implemented(name, f"of shape {tuple(t.shape)} (not input_ids' {tuple(prompt.ids.shape)})")
    embeds = extra.get("inputs_embeds")
    if embeds is not None and (not isinstance(embeds, Tensor) or embeds.dim() != 3
                               or tuple(embeds.shape[:2]) != tuple(prompt.ids.shape)):
        raise _not_implemented("inputs_embeds", "is taken alongside input_ids of the same [batch, length] only")
    past = _past(extra)
    if past is not None:
        refusal = past_refusal(past, prompt.batch_size, prompt.width)
        if refusal is not None:
            raise _not_implemented(_past_name(extra), refusal)


@contextmanager
def bound(target, extra: dict, cfg, prompt):
    """Bind this call's model inputs and recorder to the HF adapter for the run; yields the recorder."""
    from models.hf_adapter import CallInputs
    if not target.hf_passthrough:
        yield None
        return
    recorder = None
    if cfg.return_dict_in_generate and any(getattr(cfg, n) for n in OUTPUTS):
        from models.hf_outputs import Recorder
        recorder = Recorder(bool(cfg.output_logits), bool(cfg.output_hidden_states), bool(cfg.output_attentions))
    device = prompt.ids.device
    tt, pos = extra.get("token_type_ids"), extra.get("position_ids")
    embeds = extra.get("inputs_embeds")
    no_cache = cfg.use_cache is False and _lockstep(cfg) and embeds is None  # HF caches inputs_embeds prompts
    call = CallInputs(None if tt is None else tt.to(device), None if pos is None else pos.to(device), recorder,
                      no_cache=no_cache, inputs_embeds=embeds, past=_past(extra))
    if cfg.cache_implementation == "static" and not no_cache:
        call.static_len = prompt.width + cfg.max_new_tokens - 1  # HF's max_length - 1: the last token is not cached
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
