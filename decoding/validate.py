"""Checks of a resolved GenerationConfig's values, before any forward: types and ranges, word lists,
beam and assisted settings, the engine's own modes; and one warning per setting the chosen mode
leaves idle (as HF). Resolution itself is decoding/config.py."""
from __future__ import annotations

import warnings

import torch

# Settings that only act in some modes: (applies?, HF default) -> a warning when set but idle.
SAMPLING_ONLY = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None}
BEAM_ONLY = {"length_penalty": 1.0, "early_stopping": False, "diversity_penalty": 0.0}
ASSISTANT_ONLY = {"num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant",
                  "assistant_confidence_threshold": 0.4}
SCHEDULES = ("constant", "heuristic", "heuristic_transient")  # heuristic is per call here: both alike


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value, name: str, low: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {short(value)}")


def _num(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {short(value)}")
    return float(value)


def validate(cfg) -> None:
    """ValueError (TypeError for wrong kinds of objects) naming the argument and the fix."""
    _int(cfg.max_new_tokens, "max_new_tokens", 1)
    _int(cfg.max_length, "max_length", 1)
    _int(cfg.min_new_tokens, "min_new_tokens", 0)
    _int(cfg.min_length, "min_length", 0)
    _int(cfg.num_return_sequences, "num_return_sequences", 1)
    _int(cfg.num_beams, "num_beams", 1)
    for name in ("use_cache", "output_scores", "return_dict_in_generate"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {short(value)}")
    if cfg.repetition_penalty is not None and _num(cfg.repetition_penalty, "repetition_penalty") <= 0:
        raise ValueError(f"`repetition_penalty` must be > 0 (1.0 = off), got {cfg.repetition_penalty}")
    if cfg.do_sample:
        if cfg.temperature is not None and _num(cfg.temperature, "temperature") <= 0:
            raise ValueError(f"`temperature` must be > 0 when sampling, got {cfg.temperature}; "
                             "use do_sample=False for greedy decoding")
        _int(cfg.top_k, "top_k", 0)
        if cfg.top_p is not None and not 0 < _num(cfg.top_p, "top_p") <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1] (1.0 = off), got {cfg.top_p}")
        if cfg.min_p is not None and not 0 <= _num(cfg.min_p, "min_p") <= 1:
            raise ValueError(f"`min_p` must lie in [0, 1], got {cfg.min_p}")
    elif cfg.num_return_sequences > 1 and cfg.num_beams == 1:
        raise ValueError(f"`num_return_sequences={cfg.num_return_sequences}` needs do_sample=True (greedy "
                         "decoding returns one sequence per prompt) or beam search")
    for name in ("eos_token_id",):
        for t in getattr(cfg, name) or []:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise ValueError(f"`{name}` must be a non-negative token id or a list of them, got {short(t)}")
    _int(cfg.bos_token_id, "bos_token_id", 0)
    if cfg.pad_token_id is not None and (isinstance(cfg.pad_token_id, bool) or not isinstance(cfg.pad_token_id, int)):
        raise ValueError(f"`pad_token_id` must be an integer token id, got {short(cfg.pad_token_id)}")
    for name in ("output_logits", "output_hidden_states", "output_attentions", "remove_invalid_values"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {short(value)}")
    _int(cfg.no_repeat_ngram_size, "no_repeat_ngram_size", 1)
    validate_word_lists(cfg)
    if cfg.stop_strings is not None:
        if not isinstance(cfg.stop_strings, (list, tuple)) or not cfg.stop_strings or \
                not all(isinstance(s, str) and s for s in cfg.stop_strings):
            raise ValueError("`stop_strings` must be a non-empty string or a list of them, "
                             f"got {short(cfg.stop_strings)}")
        if cfg.tokenizer is None:
            raise ValueError("`stop_strings` needs the model's tokenizer: pass tokenizer=... to generate()")
    if cfg.logits_processor is not None:
        if not isinstance(cfg.logits_processor, (list, tuple)) or not all(callable(f) for f in cfg.logits_processor):
            raise TypeError("`logits_processor` must be a list of callables (input_ids, scores) -> scores")
    if cfg.streamer is not None and not (hasattr(cfg.streamer, "put") and hasattr(cfg.streamer, "end")):
        raise TypeError("`streamer` must have put(token_ids) and end() methods (HF's streamer protocol)")
    if cfg.seed is not None and cfg.generator is not None:
        raise ValueError("pass `seed` or `generator`, not both")
    _int(cfg.seed, "seed", 0)
    if cfg.generator is not None and not isinstance(cfg.generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {type(cfg.generator).__name__}")
    validate_assisted(cfg)
    validate_beams(cfg)
    validate_engine_args(cfg)


def _token_list(seq) -> bool:
    return isinstance(seq, list) and len(seq) > 0 and \
        all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq)


def validate_word_lists(cfg) -> None:
    """bad_words_ids and sequence_bias as HF accepts them (ValueError otherwise, as HF)."""
    bad = cfg.bad_words_ids
    if bad is not None and (not isinstance(bad, list) or not bad or not all(_token_list(w) for w in bad)):
        raise ValueError(f"`bad_words_ids` has to be a non-empty list of lists of token ids (non-negative "
                         f"integers), but is {short(bad)}")
    bias = cfg.sequence_bias
    if bias is None:
        return
    if isinstance(bias, dict):
        ok = bias and all(isinstance(k, tuple) and _token_list(list(k)) and isinstance(v, float)
                          for k, v in bias.items())
    else:
        ok = isinstance(bias, list) and bias and all(
            isinstance(e, (list, tuple)) and len(e) == 2 and _token_list(e[0]) and isinstance(e[1], float)
            for e in bias)
    if not ok:
        raise ValueError(f"`sequence_bias` has to be a non-empty list of [token ids, float bias] pairs (or a dict "
                         f"{{tuple of token ids: float}}), but is {short(bias)}")


# cache_implementation values the engine runs: its own cache is dynamic; "static" runs on Hugging Face
# models only, in HF's StaticCache (decoding/hf_call.py checks the rest)
CACHES = (None, "dynamic", "static")


def check_supported(cfg) -> None:
    """NotImplementedError naming the argument for HF settings the engine does not run yet."""
    if cfg.num_beams > 1 and cfg.do_sample is True and cfg.num_beam_groups > 1:
        return  # an invalid combination: validate_beams raises the ValueError
    if cfg.num_beams > 1 and cfg.stop_strings is not None:
        raise NotImplementedError("`stop_strings` with beam search is not implemented by the engine yet; call "
                                  "the model's own generate() for it")
    if cfg.cache_implementation not in CACHES:
        raise NotImplementedError(f"`cache_implementation={cfg.cache_implementation!r}` is not implemented by the "
                                  "engine (it runs a dynamic cache); call the model's own generate() for it")


def validate_beams(cfg) -> None:
    """Beam and diverse beam search settings (HF 5.x / 4.55 rules), then what does not run yet."""
    _int(cfg.num_beam_groups, "num_beam_groups", 1)
    _num(cfg.length_penalty, "length_penalty")
    if _num(cfg.diversity_penalty, "diversity_penalty") < 0:
        raise ValueError(f"`diversity_penalty` must be >= 0 (0 = off), got {cfg.diversity_penalty}")
    if not (isinstance(cfg.early_stopping, bool) or cfg.early_stopping == "never"):
        raise ValueError(f"`early_stopping` must be True, False or 'never', got {short(cfg.early_stopping)}")
    if cfg.num_beams > 1 and cfg.num_return_sequences > cfg.num_beams:
        raise ValueError(f"`num_return_sequences` ({cfg.num_return_sequences}) must be <= `num_beams` "
                         f"({cfg.num_beams}): beam search returns its best beams")
    if cfg.num_beam_groups > 1:
        if cfg.num_beam_groups > cfg.num_beams:
            raise ValueError(f"`num_beam_groups` ({cfg.num_beam_groups}) must be <= `num_beams` ({cfg.num_beams}): "
                             "every group needs at least one beam")
        if cfg.num_beams % cfg.num_beam_groups:
            raise ValueError(f"`num_beams` ({cfg.num_beams}) must be divisible by `num_beam_groups` "
                             f"({cfg.num_beam_groups}): groups have equal sizes")
        if cfg.do_sample:
            raise ValueError("diverse beam search (num_beam_groups > 1) is deterministic: set do_sample=False")


def validate_assisted(cfg) -> None:
    """Speculative decoding's arguments: a draft model or prompt lookup, k >= 1, no beams."""
    _int(cfg.num_assistant_tokens, "num_assistant_tokens", 1)
    _int(cfg.prompt_lookup_num_tokens, "prompt_lookup_num_tokens", 1)
    _int(cfg.max_matching_ngram_size, "max_matching_ngram_size", 1)
    if cfg.num_assistant_tokens_schedule is not None and cfg.num_assistant_tokens_schedule not in SCHEDULES:
        raise ValueError(f"`num_assistant_tokens_schedule` must be one of {SCHEDULES}, "
                         f"got {short(cfg.num_assistant_tokens_schedule)}")
    threshold = cfg.assistant_confidence_threshold
    if threshold is not None and not 0 <= _num(threshold, "assistant_confidence_threshold") <= 1:
        raise ValueError(f"`assistant_confidence_threshold` must lie in [0, 1] (0 = off), got {threshold}")
    if cfg.assistant_model is None and cfg.prompt_lookup_num_tokens is None:
        return
    if cfg.assistant_model is not None and cfg.prompt_lookup_num_tokens is not None:
        raise ValueError("pass `assistant_model` (a draft model) or `prompt_lookup_num_tokens` (n-gram "
                         "lookup), not both")
    mode = "assistant_model" if cfg.assistant_model is not None else "prompt_lookup_num_tokens"
    if cfg.num_beams > 1:
        raise ValueError(f"`{mode}` (speculative decoding) does not combine with beam search (num_beams="
                         f"{cfg.num_beams}); use num_beams=1")
    if cfg.strategy is not None:
        raise ValueError(f"`{mode}` (speculative decoding) does not combine with strategy={cfg.strategy!r}")


STRATEGIES = ("jacobi", "gs_jacobi", "sjd", "blockwise")
JACOBI_INITS = ("pad", "repeat", "ngram")
JACOBI = ("jacobi", "gs_jacobi", "sjd")  # the modes block_size and jacobi_init act in
ACCEPTANCES = ("exact", "topk")


def validate_engine_args(cfg) -> None:
    if cfg.strategy is not None and cfg.strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES} (greedy, sampling, beam and speculative "
                         f"follow from the HF arguments), got {short(cfg.strategy)}")
    _int(cfg.block_size, "block_size", 1)
    if cfg.jacobi_init is not None and cfg.jacobi_init not in JACOBI_INITS:
        raise ValueError(f"`jacobi_init` must be one of {JACOBI_INITS}, got {short(cfg.jacobi_init)}")
    if cfg.acceptance is not None and cfg.acceptance not in ACCEPTANCES:
        raise ValueError(f"`acceptance` must be one of {ACCEPTANCES}, got {short(cfg.acceptance)}")
    _int(cfg.acceptance_top_k, "acceptance_top_k", 1)
    if cfg.strategy in JACOBI:
        if cfg.num_beams > 1:
            raise ValueError(f"strategy={cfg.strategy!r} does not combine with beam search (num_beams="
                             f"{cfg.num_beams}); use num_beams=1")
        if cfg.do_sample and cfg.strategy != "sjd":
            raise ValueError(f"strategy={cfg.strategy!r} is greedy (token-identical to greedy decoding); for "
                             "sampling use strategy='sjd' (speculative Jacobi decoding) or do_sample=False")
    if cfg.strategy == "blockwise":  # heads vs block_size is checked when the heads are loaded
        if cfg.num_beams > 1:
            raise ValueError(f"strategy='blockwise' does not combine with beam search (num_beams={cfg.num_beams}); "
                             "use num_beams=1")
        if cfg.do_sample:
            raise ValueError("strategy='blockwise' is greedy (acceptance='exact') or its lossy top-k variant: "
                             "set do_sample=False")


def warn_idle(cfg, explicit: set[str]) -> None:
    """One warning per setting the caller gave that the chosen mode does not use (as HF)."""
    idle = []
    if not cfg.do_sample:
        idle += [n for n, d in SAMPLING_ONLY.items() if n in explicit and getattr(cfg, n) not in (d, None)]
    if cfg.num_beams == 1:
        idle += [n for n, d in BEAM_ONLY.items() if n in explicit and getattr(cfg, n) not in (d, None)]
    elif cfg.num_beam_groups == 1 and "diversity_penalty" in explicit and cfg.diversity_penalty:
        idle.append("diversity_penalty")  # only acts between groups
    elif cfg.num_beam_groups > 1 and not cfg.diversity_penalty:
        warnings.warn("num_beam_groups > 1 with diversity_penalty=0: every group will find the same beams "
                      "(transformers 4.55 refuses this setting)", UserWarning, stacklevel=4)
    if cfg.assistant_model is None:
        idle += [n for n, d in ASSISTANT_ONLY.items() if n in explicit and getattr(cfg, n) not in (d, None)]
    if cfg.prompt_lookup_num_tokens is None and "max_matching_ngram_size" in explicit \
            and cfg.max_matching_ngram_size is not None:
        idle.append("max_matching_ngram_size")
    if cfg.strategy != "blockwise":
        idle += [n for n in ("heads", "acceptance", "acceptance_top_k") if n in explicit and getattr(cfg, n) is not None]
    elif cfg.acceptance != "topk" and "acceptance_top_k" in explicit and cfg.acceptance_top_k is not None:
        idle.append("acceptance_top_k")
    if cfg.strategy is None and "block_size" in explicit and cfg.block_size is not None:
        idle.append("block_size")
    if cfg.strategy not in JACOBI and "jacobi_init" in explicit and cfg.jacobi_init is not None:
        idle.append("jacobi_init")
    for name in idle:
        warnings.warn(f"`{name}={short(getattr(cfg, name))}` has no effect in this decoding mode "
                      f"(do_sample={cfg.do_sample}, num_beams={cfg.num_beams}"
                      f"{', no assistant_model' if cfg.assistant_model is None else ''}); it is ignored",
                      UserWarning, stacklevel=4)
