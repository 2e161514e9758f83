"""Drive any Hugging Face causal LM through the model protocol (docs/DESIGN.md 3.1-3.3).

The cache is HF's own (whatever the model creates: DynamicCache, with sliding-window layers where the
config says so) plus a key-validity mask over its slots. Left pads of a prompt and tokens rolled
back per row are holes (validity 0): HF's attention never sees them, and positions count only the
real tokens before each one. HF crops every row by the same count, so a per-row truncate makes
holes and crops only the trailing slots that are holes in every row.

Version differences are read from the forward signature, not the version string: the cache kwarg
is `cache=` in 5.24 and `past_key_values=` in 5.17 / 4.x; 4.x also needs `cache_position`.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from .protocol import bound_forward, cache_overflow, check_input_ids, special_tokens


def is_hf_model(model) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def _layers(hf_cache) -> list:
    """(keys, values, layer) per layer, for 5.x (`.layers`) and 4.x (`.key_cache`) caches."""
    if hf_cache is None:
        return []
    if hasattr(hf_cache, "layers"):
        return [(getattr(l, "keys", None), getattr(l, "values", None), l) for l in hf_cache.layers]
    return [(k, v, None) for k, v in zip(getattr(hf_cache, "key_cache", []), getattr(hf_cache, "value_cache", []))]


def call_setting(hf_model, call: dict, name: str, default=None):
    """A generation setting as HF's generate resolves it: the call's keyword, then its
    generation_config=, then the model's generation_config."""
    if name in call:
        return call[name]
    for config in (call.get("generation_config"), getattr(hf_model, "generation_config", None)):
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def caller_cache(cache):
    """HF's cache as the caller gets it: tensors made outside inference mode, so that it can be
    continued from (a later generate() updates it in place); 5.x layers or 4.x key/value lists."""
    if cache is None:
        return None
    for layer in getattr(cache, "layers", []):
        for name, t in list(vars(layer).items()):  # keys, values, a static layer's cumulative_length
            if isinstance(t, Tensor) and t.is_inference():
                setattr(layer, name, t.clone())
    for name in ("key_cache", "value_cache"):  # 4.x
        tensors = getattr(cache, name, None)
        if isinstance(tensors, list):
            tensors[:] = [t.clone() if isinstance(t, Tensor) and t.is_inference() else t for t in tensors]
    return cache


def sliding_window(config) -> int | None:
    """The window of a config whose sliding-window layers are on (their HF cache forgets keys
    past it), else None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or []
    if not window or getattr(config, "use_sliding_window", True) is False or \
            (types and not any("sliding" in t for t in types)):
        return None
    return window


def past_refusal(past, batch_size: int | None = None, width: int | None = None) -> str | None:
    """Why the adapter cannot continue a caller's past cache (HFModel._continue), or None if it can:
    HF's DynamicCache only; given the prompt (batch_size rows, width tokens), one row per prompt
    holding fewer tokens than the prompt."""
    if type(past).__name__ != "DynamicCache":
        return f"as a {type(past).__name__} is not continued by the engine (a DynamicCache is)"
    if batch_size is None or not past.layers:
        return None
    keys = past.layers[0].keys
    if past.get_seq_length() >= width or keys is None or keys.shape[0] != batch_size:
        return "must hold fewer tokens than input_ids, one row per prompt"
    return None


class HFCache:
    """Cache protocol over an HF cache. `valid` (B, slots) int64 marks real keys; `size` (host int)
    is HF's slot count; `lengths` int32 [B] counts real tokens per row."""
    max_rollback = None  # capability (models/protocol.py); a sliding window limits it (HFModel.rollback_window)

    def __init__(self, batch_size: int, max_len: int, device):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        self.hf = None  # created by the model on the first forward
        self.max_len = max_len
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.size = 0
        self.has_holes = False  # host flag: no holes -> no 2D mask, as HF's own generate
        # (B,) HF's position of a row's next token minus its real-token count: nonzero only where the
        # prompt's positions are not the real-token count (right pads, caller's position_ids)
        self.pos_shift: Tensor | None = None
        self.recorder = None  # models.hf_outputs.Recorder of the current call, if it asks for outputs
        self.history: dict[str, Tensor] = {}  # use_cache=False: every row's inputs so far (no HF cache)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.max_len

    def nbytes(self) -> int:
        total = 0
        for k, v, _ in _layers(self.hf):
            for t in (k, v):
                if isinstance(t, Tensor):
                    total += t.numel() * t.element_size()
        return total

    # -- used by HFModel.forward --------------------------------------------------------------
    def _claim(self, T: int, new_valid: Tensor | None) -> Tensor:
        """Record validity of T new slots (None = all real); returns the (B, size + T) mask of every slot."""
        if self.size + T > self.valid.shape[1]:  # holes use slots too: grow by doubling
            grow = max(self.size + T, 2 * self.valid.shape[1]) - self.valid.shape[1]
            self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch_size, grow)], 1)
        self.valid[:, self.size:self.size + T] = 1 if new_valid is None else new_valid
        return self.valid[:, :self.size + T]

    # -- operations of the cache protocol ----------------------------------------------------
    def truncate(self, n) -> None:
        """Drop each row's last n real tokens: they become holes, and trailing slots that are holes
        in every row are cropped from HF's cache."""
        n = torch.as_tensor(n, dtype=torch.int32, device=self.lengths.device).expand_as(self.lengths)
        if bool((n < 0).any()) or bool((n > self.lengths).any()):
            raise ValueError(f"truncate(n): n must lie in [0, length] per row; lengths "
                             f"{self.lengths.tolist()}, n {n.tolist()}")
        if not bool(n.any()):
            return
        valid = self.valid[:, :self.size]  # (B, S)
        after = valid.flip(1).cumsum(1).flip(1)  # real tokens at or after each slot
        drop = (valid == 1) & (after <= n.long()[:, None])
        kept = valid.masked_fill(drop, 0)
        used = kept.any(0).nonzero()
        new_size = int(used[-1]) + 1 if used.numel() else 0
        crop = self.size - new_size
        self._check_rollback(crop, new_holes=bool(drop[:, :new_size].any()))
        if crop:
            self.hf.crop(-crop)  # negative count: works in 5.x and 4.x
        self.valid[:, :self.size] = kept
        self.size = new_size
        self.lengths -= n
        self.has_holes = not bool(kept[:, :new_size].all())

    def _check_rollback(self, crop: int, new_holes: bool) -> None:
        if crop and getattr(self.hf, "is_croppable", True) is False:  # e.g. recurrent / linear-attention state
            raise RuntimeError(f"cannot roll back this HF cache ({type(self.hf).__name__}): it keeps state that "
                               "cannot be cropped; rollback (speculative/Jacobi decoding) needs attention-only layers")
        for _, _, layer in _layers(self.hf):
            window = getattr(layer, "sliding_window", None)
            if not getattr(layer, "is_sliding", False) or not window:
                continue
            if self.size >= window and not getattr(layer, "record_past", False):
                raise RuntimeError(
                    f"cannot roll back this HF cache: a sliding-window layer (window {window}) is full "
                    f"({self.size} tokens seen) and drops old keys; rollback (speculative/Jacobi decoding) "
                    "needs a model without a sliding window or prompts + generation shorter than the window")
            if new_holes:
                raise RuntimeError(
                    "per-row rollback is not supported on HF sliding-window caches (HF's window counts "
                    "slots, so holes would shift it); use batch size 1 or a model without a sliding window")

    def reorder(self, index: Tensor) -> None:
        index = self._index(index, "reorder")
        if index.numel() != self.batch_size:
            raise ValueError(f"reorder keeps the batch size {self.batch_size}; use select() to change it")
        if self.hf is not None and self.size:
            self.hf.reorder_cache(index)
        self._rows(index, fan_out=False)

    def _rows(self, index: Tensor, fan_out: bool) -> None:
        self.valid, self.lengths = self.valid[index], self.lengths[index]
        if self.pos_shift is not None:
            self.pos_shift = self.pos_shift[index]
        self.history = {name: t[index] for name, t in self.history.items()}
        if self.recorder is not None:
            self.recorder.rows(index, fan_out)

    def select(self, index: Tensor) -> None:
        index = self._index(index, "select")
        if self.hf is not None and self.size:
            self.hf.batch_select_indices(index)
        self._rows(index, fan_out=False)

    def repeat(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"repeat(k) needs k >= 1, got {k}")
        if self.hf is not None and self.size:
            self.hf.batch_repeat_interleave(k)
        self._rows(torch.arange(self.batch_size, device=self.lengths.device).repeat_interleave(k), fan_out=True)

    def _index(self, index, name: str) -> Tensor:
        index = torch.as_tensor(index, dtype=torch.long, device=self.lengths.device)
        if index.dim() != 1 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.batch_size)):
            raise IndexError(f"{name}: index must be 1-D with values in [0, {self.batch_size}), got {index.tolist()}")
        return index


class HFModel:
    """Model protocol over an HF causal LM: `new_cache`, `forward(input_ids, cache, ...) -> logits`."""
    max_rollback = None  # capabilities (models/protocol.py)
    returns_hidden = False  # no cheap final-norm hidden state (blockwise heads)

    def __init__(self, hf_model):
        if not is_hf_model(hf_model):
            raise TypeError(f"HFModel wraps a transformers PreTrainedModel, got {type(hf_model).__name__}")
        config = hf_model.config
        if getattr(config, "is_encoder_decoder", False):
            raise NotImplementedError(
                f"{type(hf_model).__name__} is an encoder-decoder model; the engine supports decoder-only "
                "causal LMs for now (use the model's own generate())")
        if hf_model.get_output_embeddings() is None:
            raise TypeError(f"{type(hf_model).__name__} has no language-modeling head; load it with "
                            "AutoModelForCausalLM")
        params = inspect.signature(hf_model.forward).parameters
        if "cache" in params:
            self.cache_kw = "cache"  # transformers >= 5.2x
        elif "past_key_values" in params:
            self.cache_kw = "past_key_values"  # 5.17 and 4.x
        else:
            raise TypeError(f"{type(hf_model).__name__}.forward takes no KV cache argument")
        self.needs_cache_position = "cache_position" in params  # 4.x
        self.takes_logits_to_keep = "logits_to_keep" in params
        self.hf = hf_model
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.config = text
        self.vocab_size = int(hf_model.get_output_embeddings().weight.shape[0])
        self.embed_size = int(hf_model.get_input_embeddings().weight.shape[0])  # ids must be below this
        self.max_positions = getattr(text, "max_position_embeddings", None)
        self.rollback_window = sliding_window(text)
        self.runs_past_max_positions = True  # as HF's generate: it warns, and the model decides
        self.hf_passthrough = True
        self.forwards = 0  # forwards run so far (decoding.hf: did a refusal come before any work?)
        self.call = None  # CallInputs of the generate() call running now (decoding.hf_call binds it)

    @property
    def device(self):
        return self.hf.device

    @property
    def dtype(self):
        return self.hf.dtype

    @property
    def runs_static_cache(self) -> bool:
        """cache_implementation="static": this transformers makes HF's StaticCache as its generate does."""
        return callable(getattr(self.hf, "_prepare_static_cache", None))

    @property
    def generation_config(self):
        return getattr(self.hf, "generation_config", None)

    @property
    def generation_defaults(self) -> dict:
        """The HF model's generation_config (its set fields) over its config's special tokens."""
        gc = self.generation_config
        items = {} if gc is None else gc.to_dict()
        return {**special_tokens(self.config), **{k: v for k, v in items.items() if v is not None and not k.startswith("_")}}

    def new_cache(self, batch_size: int, max_len: int, *, dtype=None, device=None) -> HFCache:
        """`max_len` = real tokens per row; HF's cache grows as needed (dtype follows the model)."""
        cache = HFCache(batch_size, max_len, device or self.device)
        if self.call is not None:
            cache.recorder = self.call.recorder
            self.call.cache = cache
            if self.call.static_len is not None:  # cache_implementation="static": HF's own, sized as HF sizes it
                cache.hf = self.hf._prepare_static_cache(cache_implementation="static", batch_size=batch_size,
                                                         max_cache_len=self.call.static_len,
                                                         prefill_chunk_size=None, model_kwargs={})
        return cache

    def forward_on(self, cache: HFCache):
        return bound_forward(self, cache)  # every step is HF's own forward: nothing to do once

    def forward(self, input_ids: Tensor, cache: HFCache, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0) -> Tensor:
        """Append T new tokens (real where attention_mask is 1) to `cache`; logits (B, T', V)."""
        check_input_ids(input_ids, self.embed_size)
        if not isinstance(cache, HFCache):
            raise TypeError(f"cache must come from model.new_cache(), got {type(cache).__name__}")
        call = self.call
        embeds = None
        if call is not None and cache.size == 0:
            if call.past is not None:
                input_ids, attention_mask, positions = self._continue(cache, call, input_ids, attention_mask)
            if call.inputs_embeds is not None:
                embeds = call.inputs_embeds[:, cache.size:]  # past a caller's cache: the rest of the prompt
        B, T = input_ids.shape
        if cache.batch_size != B or T == 0:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} does not fit a cache of {cache.batch_size} rows")
        if attention_mask is None:
            new_valid = None
        else:
            if tuple(attention_mask.shape) != (B, T):
                raise ValueError(f"attention_mask must have shape {(B, T)}, got {tuple(attention_mask.shape)}")
            new_valid = attention_mask.long()
            if not cache.has_holes and not bool(new_valid.all()):  # one sync, only when a mask is passed
                cache.has_holes = True
        n_new = T if new_valid is None else new_valid.sum(1)
        # lengths <= size (host), so the exact check (a sync) runs only near the capacity
        if cache.size + T > cache.capacity and int((cache.lengths + n_new).max()) > cache.capacity:
            raise cache_overflow(int(cache.lengths.max()), T, cache.capacity)
        if positions is None and cache.size == 0 and (new_valid is not None or call is not None and
                                                      call.position_ids is not None):
            positions = self._prompt_positions(input_ids, new_valid, call)  # HF's own rule
            cache.pos_shift = positions[:, -1] + 1 - (T if new_valid is None else new_valid.sum(1))
        if positions is None:  # real tokens before each one; pads get 1 (valid for learned positions)
            if new_valid is None:
                positions = cache.lengths.long()[:, None] + torch.arange(T, device=input_ids.device)
            else:
                positions = (cache.lengths.long()[:, None] + new_valid.cumsum(1) - 1).masked_fill(new_valid == 0, 1)
            if cache.pos_shift is not None:
                positions = positions + cache.pos_shift[:, None]
        mask = cache._claim(T, new_valid)
        kwargs = dict(position_ids=positions, use_cache=True, return_dict=True)
        if call is not None:
            kwargs.update(call.forward_kwargs(cache.size, B, T))
        if cache.has_holes:
            kwargs["attention_mask"] = mask
            if getattr(self.hf.config, "_attn_implementation", None) == "decoding_decode":
                from .hf_attention import kv_start_kwargs  # left pads as kv_start for the Triton kernel
                kwargs.update(kv_start_kwargs(mask))
        if cache.hf is not None:
            kwargs[self.cache_kw] = cache.hf
        if self.needs_cache_position:
            kwargs["cache_position"] = torch.arange(cache.size, cache.size + T, device=input_ids.device)
        if self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        model_ids = input_ids
        if call is not None and call.no_cache:
            model_ids = self._rerun_all(cache, input_ids, kwargs, T, logits_to_keep)
        self.forwards += 1
        if embeds is not None:
            out = self.hf(inputs_embeds=embeds.to(device=input_ids.device, dtype=self.hf.dtype), **kwargs)
        else:
            out = self.hf(input_ids=model_ids, **kwargs)
        hf_cache = out.get("cache", None)
        cache.hf = hf_cache if hf_cache is not None else out.get("past_key_values", None)
        cache.size += T
        cache.lengths += n_new if isinstance(n_new, int) else n_new.to(torch.int32)
        if cache.recorder is not None:
            cache.recorder.forward(out)
        logits = out.logits
        if logits_to_keep and not self.takes_logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        elif call is not None and call.no_cache:
            logits = logits[:, -(logits_to_keep or T):]
        return logits

    def _continue(self, cache: HFCache, call, input_ids: Tensor, attention_mask: Tensor | None):
        """Start from the caller's cache of the prompt's first S tokens: HF's own object (updated in
        place, as HF's generate does), validity from the prompt's mask; the rest of the prompt is fed,
        at the positions HF gives it (its rule over the whole prompt, cut after S)."""
        past = call.past
        S = past.get_seq_length()
        B, T = input_ids.shape
        full = torch.ones(B, T, dtype=torch.long, device=input_ids.device) if attention_mask is None \
            else attention_mask.long()
        positions = self._prompt_positions(input_ids, full, call)
        cache._claim(S, full[:, :S])
        cache.hf, cache.size = past, S
        cache.lengths += full[:, :S].sum(1).to(torch.int32)
        cache.has_holes = not bool(full[:, :S].all())
        cache.pos_shift = positions[:, -1] + 1 - full.sum(1)
        return input_ids[:, S:], None if attention_mask is None else attention_mask[:, S:], positions[:, S:]

    def _rerun_all(self, cache: HFCache, input_ids: Tensor, kwargs: dict, T: int, logits_to_keep: int) -> Tensor:
        """HF's use_cache=False: this forward reads the whole sequence so far (ids, positions, token
        types kept per row in `cache.history`) with no cache, as HF's generate reruns it each step."""
        step = {"input_ids": input_ids, "position_ids": kwargs["position_ids"]}
        if "token_type_ids" in kwargs:
            step["token_type_ids"] = kwargs["token_type_ids"]
        hist = cache.history
        for name, t in step.items():
            hist[name] = t if name not in hist else torch.cat([hist[name], t], 1)
        kwargs.update(position_ids=hist["position_ids"], use_cache=False)
        if "token_type_ids" in hist:
            kwargs["token_type_ids"] = hist["token_type_ids"]
        kwargs.pop(self.cache_kw, None)
        if self.needs_cache_position:
            kwargs["cache_position"] = torch.arange(cache.size + T, device=input_ids.device)
        if self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep or T
        return hist["input_ids"]

    __call__ = forward

    def _prompt_positions(self, input_ids: Tensor, valid: Tensor | None, call) -> Tensor:
        """Positions of the prompt as HF's generate gives them: the caller's position_ids, else from
        the attention mask by this transformers version's own rule (pads: 0 in 5.2x, 1 before)."""
        if call is not None and call.position_ids is not None:
            return call.position_ids.to(input_ids.device).long()
        prepare = getattr(self.hf, "_prepare_position_ids_for_generation", None)
        if prepare is not None:
            return prepare(input_ids, {"attention_mask": valid}).to(input_ids.device).long()
        return (valid.cumsum(1) - 1).masked_fill(valid == 0, 1)


class CallInputs:
    """Per-call model inputs HF's generate passes to every forward: token_type_ids (the prompt's,
    then each row's last value for new tokens, as HF extends them), position_ids of the prompt, and
    the output flags of the Recorder."""

    def __init__(self, token_type_ids: Tensor | None = None, position_ids: Tensor | None = None, recorder=None,
                 no_cache: bool = False, inputs_embeds: Tensor | None = None, past=None):
        self.token_type_ids, self.position_ids, self.recorder = token_type_ids, position_ids, recorder
        self.no_cache = no_cache  # HF's use_cache=False: each forward reruns the whole sequence
        self.inputs_embeds = inputs_embeds  # the prompt's embeddings: the prefill reads them, not its ids
        self.past = past  # the caller's DynamicCache holding the prompt's first tokens: continued in place
        # the cache new_cache() made last in this call (lockstep runs make one): HF's object comes from it
        self.cache = None
        self.static_len = None  # cache_implementation="static": the StaticCache's max_cache_len
        self.last_type = None if token_type_ids is None else token_type_ids[:, -1]

    def forward_kwargs(self, cached: int, B: int, T: int) -> dict:
        kw = {}
        if self.token_type_ids is not None:
            if cached == 0 and self.token_type_ids.shape[0] == B:
                kw["token_type_ids"] = self.token_type_ids
            else:  # rows r*k .. r*k+k-1 grew from prompt r
                last = self.last_type.repeat_interleave(B // self.last_type.shape[0])
                kw["token_type_ids"] = last[:, None].expand(B, T)
        if self.recorder is not None:
            if self.recorder.hidden:
                kw["output_hidden_states"] = True
            if self.recorder.attentions:
                kw["output_attentions"] = True
        return kw
