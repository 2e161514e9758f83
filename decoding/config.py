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

from .validate import ASSISTANT_ONLY, check_supported, short as _short, validate, warn_idle

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

# HF reads these from the ASSISTANT's generation_config (docs/DESIGN.md 2); here a value passed to
# generate() still wins, then generation_config=, the assistant's config, the target's, HF's defaults.
ASSISTANT_FIELDS = tuple(ASSISTANT_ONLY)


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
