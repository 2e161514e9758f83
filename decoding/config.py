"""GenerationConfig and HF's argument resolution: caller > generation_config= > the model's own
generation config > HF's global defaults. "Passed" means present in generate()'s **kwargs, so a
keyword passed as None counts (eos_token_id=None turns stopping off); a None field of a config
object counts as unset, as in HF.

Which HF arguments run, which are ignored, which only warn, which the engine does not run
(NotImplementedError, on which decoding.hf falls back to HF's generate) and which are unknown, is
decided by the tables below.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch

@dataclass
class GenerationConfig:
    """Every argument generate() reads. As an input (generation_config=), None means unset; after
    resolution every field holds the value the run uses."""
    # length
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int | None = None
    min_length: int | None = None
    # mode and processors
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list | None = None
    sequence_bias: Any = None
    remove_invalid_values: bool | None = None
    num_beams: int | None = None
    num_beam_groups: int | None = None
    diversity_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    num_return_sequences: int | None = None
    # special tokens
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    # outputs
    use_cache: bool | None = None
    output_scores: bool | None = None
    output_logits: bool | None = None
    output_hidden_states: bool | None = None
    output_attentions: bool | None = None
    return_dict_in_generate: bool | None = None
    cache_implementation: str | None = None
    stop_strings: str | list[str] | None = None
    # assisted / speculative decoding
    num_assistant_tokens: int | None = None
    num_assistant_tokens_schedule: str | None = None
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None
    assistant_confidence_threshold: float | None = None
    # the engine's own modes
    strategy: str | None = None
    block_size: int | None = None
    jacobi_init: str | None = None
    heads: Any = None
    acceptance: str | None = None
    acceptance_top_k: int | None = None
    # objects, not settings
    tokenizer: Any = None
    streamer: Any = None
    logits_processor: Any = None
    assistant_model: Any = None
    seed: int | None = None
    generator: Any = None


FIELDS = tuple(f.name for f in fields(GenerationConfig))
RUNTIME = ("tokenizer", "streamer", "logits_processor", "assistant_model", "seed", "generator")

# HF's global defaults (transformers 5.x), applied last.
HF_DEFAULTS = dict(
    max_length=20, min_length=0, do_sample=False, temperature=1.0, top_k=50, top_p=1.0,
    repetition_penalty=1.0, num_beams=1, num_beam_groups=1, diversity_penalty=0.0, length_penalty=1.0,
    early_stopping=False, num_return_sequences=1, use_cache=True, output_scores=False,
    return_dict_in_generate=False, num_assistant_tokens=20, num_assistant_tokens_schedule="constant",
    assistant_confidence_threshold=0.4,
)

# HF arguments outside the engine's scope: accepted while off, NotImplementedError when on.
HF_OTHER = {
    "encoder_no_repeat_ngram_size": (None, 0),
    "encoder_repetition_penalty": (None, 1.0), "force_words_ids": (None,),
    "constraints": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "top_h": (None,), "penalty_alpha": (None,), "dola_layers": (None,),
    "guidance_scale": (None, 1.0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "renormalize_logits": (None, False), "exponential_decay_length_penalty": (None,), "max_time": (None,),
    "watermarking_config": (None,), "token_healing": (None, False), "low_memory": (None, False),
    "use_mtp": (None, False), "assistant_early_exit": (None,), "stopping_criteria": (None, ()),
    "prefix_allowed_tokens_fn": (None,), "negative_prompt_ids": (None,), "negative_prompt_attention_mask": (None,),
    "synced_gpus": (None, False), "custom_generate": (None,), "assistant_tokenizer": (None,),
}

# HF arguments that cannot change the result here: accepted and ignored.
IGNORED = {"cache_config", "disable_compile", "compile_config", "trust_remote_code",
           "return_legacy_cache", "is_assistant", "assistant_lookbehind",
           "target_lookbehind", "decoder_start_token_id", "use_model_defaults", "prefill_chunk_size"}

# Settings that only act in some modes: (applies?, HF default) -> a warning when set but idle.
SAMPLING_ONLY = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None}
BEAM_ONLY = {"length_penalty": 1.0, "early_stopping": False, "diversity_penalty": 0.0}
ASSISTANT_ONLY = {"num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant",
                  "assistant_confidence_threshold": 0.4}
# HF reads these from the ASSISTANT's generation_config (docs/DESIGN.md 2); here a value passed to
# generate() still wins, then generation_config=, the assistant's config, the target's, HF's defaults.
ASSISTANT_FIELDS = tuple(ASSISTANT_ONLY)
SCHEDULES = ("constant", "heuristic", "heuristic_transient")  # heuristic is per call here: both alike


def _is_off(value, off_values) -> bool:
    if value is None:
        return None in off_values
    if isinstance(value, (list, tuple)) and not value:
        return () in off_values
    if isinstance(value, (bool, int, float, str)):
        return any(v is not None and not isinstance(v, tuple) and value == v for v in off_values)
    return False


def _hf_config_defaults() -> dict:
    try:
        from transformers import GenerationConfig as HFGenerationConfig
        return HFGenerationConfig().to_dict()
    except Exception:  # pragma: no cover
        return {}


def _config_items(obj) -> dict:
    """Non-None fields of a generation config object (HF's or ours)."""
    if obj is None:
        return {}
    if isinstance(obj, GenerationConfig):
        return {k: getattr(obj, k) for k in FIELDS if getattr(obj, k) is not None}
    if hasattr(obj, "to_dict"):
        return {k: v for k, v in obj.to_dict().items() if v is not None and not k.startswith("_")}
    raise TypeError(f"generation_config must be a transformers.GenerationConfig or decoding.GenerationConfig, "
                    f"got {type(obj).__name__}")


def model_defaults(model, name: str = "model") -> dict:
    """The model's own generation settings, as it declares them (models/protocol.py: an HF model's
    generation_config over its config's special tokens; a native model's special tokens)."""
    from .capabilities import as_decoder
    try:
        return as_decoder(model).generation_defaults
    except TypeError as e:
        if name == "model":
            raise
        raise TypeError(f"{name}: {e}") from None


def check_names(kwargs: dict, source: str = "generate()", strict: bool = True, unknown_only: bool = False) -> None:
    """TypeError for a name no one knows (strict: keyword arguments; config objects may carry extra
    entries); then, unless unknown_only, NotImplementedError for an HF argument the engine does not
    run (HF_OTHER, or one newer than these tables) that is switched on."""
    hf_known = None
    for name, value in kwargs.items():
        if name in FIELDS or name in IGNORED:
            continue
        if not strict and name not in HF_OTHER:
            continue  # config objects carry metadata (transformers_version, ...) and newer fields
        if name in HF_OTHER:
            if not unknown_only and not _is_off(value, HF_OTHER[name]):
                raise NotImplementedError(
                    f"{source}: `{name}={_short(value)}` is not implemented by the engine yet; call the model's "
                    f"own generate() for it (decoding.hf.install falls back to it automatically)")
            continue
        if hf_known is None:
            hf_known = _hf_config_defaults()
        if name in hf_known:  # an HF setting newer than these tables
            if unknown_only or value is None or value == hf_known[name]:
                continue
            raise NotImplementedError(f"{source}: the HF argument `{name}` is not implemented by the engine")
        hint = " (pass the prompt as input_ids)" if name == "inputs" else ""
        raise TypeError(f"generate() got an unexpected keyword argument `{name}`{hint}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def resolve(model, kwargs: dict) -> tuple[GenerationConfig, set[str]]:
    """The config of one call and the names the caller set (kwargs and generation_config=)."""
    kwargs = dict(kwargs)
    passed_cfg = kwargs.pop("generation_config", None)
    check_names(kwargs, unknown_only=True)
    from_obj = _config_items(passed_cfg)
    from_model = model_defaults(model)
    assistant = kwargs["assistant_model"] if "assistant_model" in kwargs else from_obj.get("assistant_model")
    from_assistant = {} if assistant is None else \
        {n: v for n, v in model_defaults(assistant, "assistant_model").items() if n in ASSISTANT_FIELDS}
    values = {}
    for name in FIELDS:
        if name in kwargs:
            values[name] = kwargs[name]
        elif name in from_obj:
            values[name] = from_obj[name]
        elif name in from_assistant:
            values[name] = from_assistant[name]
        elif name in from_model and name not in RUNTIME:
            values[name] = from_model[name]
        else:
            values[name] = HF_DEFAULTS.get(name)
    explicit = set(kwargs) | set(from_obj)
    cfg = GenerationConfig(**values)
    # HF's max_length counts the prompt; set anywhere, it replaces the default of 20 new tokens
    cfg.max_length_set = cfg.max_length is not None and (
        "max_length" in kwargs or "max_length" in from_obj or "max_length" in from_model)
    # what the engine does not run is decided before any value is checked, so that decoding.hf falls
    # back to HF's generate (which judges the values itself) instead of raising
    check_names(kwargs)
    check_names(from_obj, "generation_config", strict=False)
    check_names(from_model, "the model's generation_config", strict=False)
    normalise(cfg)
    check_supported(cfg)
    validate(cfg)
    warn_idle(cfg, explicit)
    compile_config = kwargs.get("compile_config", from_obj.get("compile_config"))
    # HF's auto-compile settings (a static cache compiles where these allow: decoding/hf_call.py), and
    # the static cache's size floor
    for name in ("compile_config", "disable_compile", "max_cache_len"):
        setattr(cfg, name, kwargs.get(name, from_obj.get(name, from_model.get(name))))
    if compile_config is not None and not hf_auto_compiles(cfg, model.device):
        warnings.warn("You have set `compile_config`, but we are unable to meet the criteria for compilation. "
                      "Compilation will be skipped.", UserWarning, stacklevel=3)
    return cfg, explicit


def hf_auto_compiles(cfg: GenerationConfig, device) -> bool:
    """Whether HF's generate compiles the decoding forward of this call: a static cache, on an
    accelerator or with compile_config._compile_all_devices, unless disable_compile."""
    if cfg.cache_implementation != "static" or cfg.disable_compile:
        return False
    all_devices = getattr(cfg.compile_config, "_compile_all_devices", False)
    return bool(all_devices) or getattr(device, "type", None) in ("cuda", "xpu", "neuron", "tpu")


def normalise(cfg: GenerationConfig) -> None:
    """Explicit Nones that mean 'off', eos as a list, pad from eos (HF)."""
    if cfg.do_sample is not None and not isinstance(cfg.do_sample, bool):
        raise ValueError(f"`do_sample` must be True or False, got {_short(cfg.do_sample)}")
    cfg.do_sample = cfg.do_sample is True
    cfg.num_return_sequences = 1 if cfg.num_return_sequences is None else cfg.num_return_sequences
    cfg.num_beams = 1 if cfg.num_beams is None else cfg.num_beams
    cfg.num_beam_groups = 1 if cfg.num_beam_groups is None else cfg.num_beam_groups
    cfg.diversity_penalty = 0.0 if cfg.diversity_penalty is None else cfg.diversity_penalty
    cfg.length_penalty = 1.0 if cfg.length_penalty is None else cfg.length_penalty
    cfg.early_stopping = False if cfg.early_stopping is None else cfg.early_stopping
    cfg.output_scores = bool(cfg.output_scores)
    eos = cfg.eos_token_id
    if isinstance(eos, torch.Tensor):
        eos = eos.tolist()
    if isinstance(eos, (list, tuple)):
        eos = list(eos) or None
    elif eos is not None:
        eos = [eos]
    if isinstance(cfg.pad_token_id, torch.Tensor):
        cfg.pad_token_id = int(cfg.pad_token_id)
    if cfg.pad_token_id is None and eos:
        cfg.pad_token_id = eos[0]  # HF takes it before looking at the values
    if eos and any(isinstance(t, int) and not isinstance(t, bool) and t < 0 for t in eos):
        # HF warns and keeps them; a negative id never matches a token, so they never stop a row
        warnings.warn(f"`eos_token_id` should consist of positive integers, but is {eos}. Your generation will not "
                      "stop until the maximum length is reached. Depending on other flags, it may even crash.",
                      UserWarning, stacklevel=4)
        eos = [t for t in eos if not (isinstance(t, int) and t < 0)] or None
    cfg.eos_token_id = eos
    if cfg.remove_invalid_values is None:
        cfg.remove_invalid_values = False
    if cfg.no_repeat_ngram_size is not None and not isinstance(cfg.no_repeat_ngram_size, bool) \
            and isinstance(cfg.no_repeat_ngram_size, int) and cfg.no_repeat_ngram_size <= 0:
        cfg.no_repeat_ngram_size = None  # HF builds no processor for 0 (or less)
    if isinstance(cfg.stop_strings, str):
        cfg.stop_strings = [cfg.stop_strings]


def _int(value, name: str, low: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {_short(value)}")


def _num(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {_short(value)}")
    return float(value)


def validate(cfg: GenerationConfig) -> None:
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
            raise ValueError(f"`{name}` must be True or False, got {_short(value)}")
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
                raise ValueError(f"`{name}` must be a non-negative token id or a list of them, got {_short(t)}")
    _int(cfg.bos_token_id, "bos_token_id", 0)
    if cfg.pad_token_id is not None and (isinstance(cfg.pad_token_id, bool) or not isinstance(cfg.pad_token_id, int)):
        raise ValueError(f"`pad_token_id` must be an integer token id, got {_short(cfg.pad_token_id)}")
    for name in ("output_logits", "output_hidden_states", "output_attentions", "remove_invalid_values"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {_short(value)}")
    _int(cfg.no_repeat_ngram_size, "no_repeat_ngram_size", 1)
    validate_word_lists(cfg)
    if cfg.stop_strings is not None:
        if not isinstance(cfg.stop_strings, (list, tuple)) or not cfg.stop_strings or \
                not all(isinstance(s, str) and s for s in cfg.stop_strings):
            raise ValueError("`stop_strings` must be a non-empty string or a list of them, "
                             f"got {_short(cfg.stop_strings)}")
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


def validate_word_lists(cfg: GenerationConfig) -> None:
    """bad_words_ids and sequence_bias as HF accepts them (ValueError otherwise, as HF)."""
    bad = cfg.bad_words_ids
    if bad is not None and (not isinstance(bad, list) or not bad or not all(_token_list(w) for w in bad)):
        raise ValueError(f"`bad_words_ids` has to be a non-empty list of lists of token ids (non-negative "
                         f"integers), but is {_short(bad)}")
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
                         f"{{tuple of token ids: float}}), but is {_short(bias)}")


# cache_implementation values the engine runs: its own cache is dynamic; "static" runs on Hugging Face
# models only, in HF's StaticCache (decoding/hf_call.py checks the rest)
CACHES = (None, "dynamic", "static")


def check_supported(cfg: GenerationConfig) -> None:
    """NotImplementedError naming the argument for HF settings the engine does not run yet."""
    if cfg.num_beams > 1 and cfg.do_sample is True and cfg.num_beam_groups > 1:
        return  # an invalid combination: validate_beams raises the ValueError
    if cfg.num_beams > 1 and cfg.stop_strings is not None:
        raise NotImplementedError("`stop_strings` with beam search is not implemented by the engine yet; call "
                                  "the model's own generate() for it")
    if cfg.cache_implementation not in CACHES:
        raise NotImplementedError(f"`cache_implementation={cfg.cache_implementation!r}` is not implemented by the "
                                  "engine (it runs a dynamic cache); call the model's own generate() for it")


def validate_beams(cfg: GenerationConfig) -> None:
    """Beam and diverse beam search settings (HF 5.x / 4.55 rules), then what does not run yet."""
    _int(cfg.num_beam_groups, "num_beam_groups", 1)
    _num(cfg.length_penalty, "length_penalty")
    if _num(cfg.diversity_penalty, "diversity_penalty") < 0:
        raise ValueError(f"`diversity_penalty` must be >= 0 (0 = off), got {cfg.diversity_penalty}")
    if not (isinstance(cfg.early_stopping, bool) or cfg.early_stopping == "never"):
        raise ValueError(f"`early_stopping` must be True, False or 'never', got {_short(cfg.early_stopping)}")
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


def validate_assisted(cfg: GenerationConfig) -> None:
    """Speculative decoding's arguments: a draft model or prompt lookup, k >= 1, no beams."""
    _int(cfg.num_assistant_tokens, "num_assistant_tokens", 1)
    _int(cfg.prompt_lookup_num_tokens, "prompt_lookup_num_tokens", 1)
    _int(cfg.max_matching_ngram_size, "max_matching_ngram_size", 1)
    if cfg.num_assistant_tokens_schedule is not None and cfg.num_assistant_tokens_schedule not in SCHEDULES:
        raise ValueError(f"`num_assistant_tokens_schedule` must be one of {SCHEDULES}, "
                         f"got {_short(cfg.num_assistant_tokens_schedule)}")
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


def validate_engine_args(cfg: GenerationConfig) -> None:
    if cfg.strategy is not None and cfg.strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES} (greedy, sampling, beam and speculative "
                         f"follow from the HF arguments), got {_short(cfg.strategy)}")
    _int(cfg.block_size, "block_size", 1)
    if cfg.jacobi_init is not None and cfg.jacobi_init not in JACOBI_INITS:
        raise ValueError(f"`jacobi_init` must be one of {JACOBI_INITS}, got {_short(cfg.jacobi_init)}")
    if cfg.acceptance is not None and cfg.acceptance not in ACCEPTANCES:
        raise ValueError(f"`acceptance` must be one of {ACCEPTANCES}, got {_short(cfg.acceptance)}")
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


def warn_idle(cfg: GenerationConfig, explicit: set[str]) -> None:
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
        warnings.warn(f"`{name}={_short(getattr(cfg, name))}` has no effect in this decoding mode "
                      f"(do_sample={cfg.do_sample}, num_beams={cfg.num_beams}"
                      f"{', no assistant_model' if cfg.assistant_model is None else ''}); it is ignored",
                      UserWarning, stacklevel=4)
