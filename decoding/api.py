"""decoding.generate(): HF's argument resolution, every check before the first forward, dispatch
to a strategy (docs/DESIGN.md 2)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from . import hf_call, strategies
from .capabilities import as_decoder, check_positions
from .config import resolve
from .output import GenerationOutput
from .stopping import StopStrings


@dataclass
class Prompt:
    """A validated, left-padded prompt batch on the model's device."""
    given: Tensor  # (B, T) ids as the caller gave them (pads included): the head of `sequences`
    ids: Tensor  # (B, T) the same with pads replaced by a valid id: what the model reads
    mask: Tensor | None  # (B, T) bool, 1 = real token; None when there are no pads
    lengths: Tensor  # (B,) real tokens per row
    max_len: int  # longest real prompt
    embed_size: int  # ids must lie below this

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def rows(self, n: int) -> Tensor:
        """The given ids with each row repeated n times (HF's layout for num_return_sequences)."""
        return self.given if n == 1 else self.given.repeat_interleave(n, 0)

    def mask_rows(self, n: int) -> Tensor | None:
        """The mask of rows(n); None also for an inputs_embeds-only prompt, whose head is empty."""
        if self.mask is None or self.given.shape[1] != self.mask.shape[1]:
            return None
        return self.mask if n == 1 else self.mask.repeat_interleave(n, 0)


def _from_lists(rows, pad: int) -> tuple[Tensor, Tensor]:
    if not rows:
        raise ValueError("input_ids is an empty list: pass at least one prompt")
    for i, row in enumerate(rows):
        if isinstance(row, Tensor):
            row = row.tolist()
        if not isinstance(row, (list, tuple)):
            raise TypeError("input_ids as a list must hold lists of token ids (one list per prompt), "
                            f"got a {type(row).__name__} at position {i}; wrap a single prompt as [ids]")
        if len(row) == 0:
            raise ValueError(f"input_ids row {i} is empty: every prompt needs at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            raise TypeError(f"input_ids row {i} must hold Python ints (token ids)")
    rows = [list(r.tolist() if isinstance(r, Tensor) else r) for r in rows]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, T - len(r):] = True
    return ids, mask


def prepare_prompt(input_ids, attention_mask, model, cfg, embeds_only: bool = False) -> Prompt:
    """embeds_only: input_ids are placeholders for an inputs_embeds prompt given without ids; as in
    HF's generate, the output's head (`given`) is then empty: sequences hold the new tokens only."""
    device = torch.device(model.device)
    embed_size = model.embed_size
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    if isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask is built by the engine when input_ids is a list of lists; drop it")
        ids, mask = _from_lists(input_ids, pad)
    elif isinstance(input_ids, Tensor):
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}")
        if input_ids.dim() != 2:
            hint = " (use input_ids[None] for one prompt)" if input_ids.dim() == 1 else ""
            raise ValueError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}{hint}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty {tuple(input_ids.shape)}: every prompt needs at least one token")
        ids = input_ids.long()
        mask = None
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor):
                raise TypeError(f"attention_mask must be a tensor like input_ids, got {type(attention_mask).__name__}")
            if tuple(attention_mask.shape) != tuple(ids.shape):
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            if attention_mask.is_floating_point() or bool(((attention_mask != 0) & (attention_mask != 1)).any()):
                raise ValueError("attention_mask must hold 0 (pad) and 1 (token) integers or bools")
            mask = attention_mask.to(ids.device).bool()
            empty = (~mask.any(1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"input_ids row {empty[0]} is empty (attention_mask all 0): every prompt "
                                 "needs at least one token")
            if ids.shape[0] > 1 and not embeds_only and not bool(mask[:, -1].all()):  # HF warns and runs (the mask keeps it exact)
                warnings.warn("A decoder-only architecture is being used, but right-padding was detected! For correct "
                              "generation results, please set `padding_side='left'` when initializing the tokenizer.",
                              UserWarning, stacklevel=3)
    else:
        raise TypeError(f"input_ids must be a LongTensor [batch, length] or a list of token-id lists, "
                        f"got {type(input_ids).__name__}")
    real = ids if mask is None else ids[mask]
    lo, hi = int(real.min()), int(real.max())
    if lo < 0:
        raise ValueError(f"input_ids holds a negative token id ({lo}); token ids start at 0")
    if hi >= embed_size:
        raise ValueError(f"input_ids holds token id {hi}, outside the model's vocabulary [0, {embed_size}); "
                         "check that the tokenizer matches the model")
    if mask is not None and bool(mask.all()):
        mask = None
    lengths = mask.sum(1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1])
    safe = pad if 0 <= pad < embed_size else 0
    # the model reads pads as given (HF does; a right pad's logits are the next token's), unless not an id
    model_ids = ids if mask is None else ids.masked_fill(~mask & ((ids < 0) | (ids >= embed_size)), safe)
    given = ids[:, :0] if embeds_only else ids
    return Prompt(given=given.to(device), ids=model_ids.to(device), mask=None if mask is None else mask.to(device),
                  lengths=lengths.to(device), max_len=int(lengths.max()), embed_size=embed_size)


def plan_lengths(cfg, prompt: Prompt, model) -> None:
    """max_new_tokens / min_new_tokens of this call from HF's length arguments (which count the
    padded prompt), then the position limit."""
    T = prompt.width
    head = prompt.given.shape[1]  # HF's input_ids length: 0 for an inputs_embeds-only prompt
    limit = model.max_positions
    if prompt.max_len > (limit or prompt.max_len) and not model.runs_past_max_positions:
        raise ValueError(f"input_ids has a prompt of {prompt.max_len} tokens, longer than the model's position "
                         f"limit of {limit} (max_position_embeddings / max_seq_len); shorten the prompt")
    if cfg.max_new_tokens is not None:
        max_new = cfg.max_new_tokens
    elif cfg.max_length_set:
        max_new = cfg.max_length - T
        if max_new < 1:
            raise ValueError(f"input_ids has length {T} but max_length is {cfg.max_length}: nothing to generate; "
                             "raise max_length or, better, set max_new_tokens")
    else:  # HF: 20 new tokens, capped by the position limit
        max_new = min(cfg.max_length, limit - head) if limit else cfg.max_length
        if max_new < 1:
            raise ValueError(f"input_ids has length {head}, which leaves no room under the model's {limit} "
                             "positions; shorten the prompt")
    check_positions(model, prompt.max_len, max_new)
    cfg.max_new_tokens = max_new
    if cfg.min_new_tokens is None:
        cfg.min_new_tokens = max(0, (cfg.min_length or 0) - T)


def _stop_strings(cfg):
    if cfg.stop_strings is None:
        return None
    tok = cfg.tokenizer
    if not (callable(getattr(tok, "encode", None)) and callable(getattr(tok, "decode", None))):
        raise TypeError(f"tokenizer must have encode() and decode() (for stop_strings), got {type(tok).__name__}")
    return StopStrings(cfg.stop_strings, tok)


def generate(model, input_ids=None, attention_mask=None, **kwargs) -> GenerationOutput:
    """Generate from `model` (an HF causal LM or a native decoder) with Hugging Face's arguments.

    Exactly HF's answer, faster: greedy and beam search are token-identical to HF `generate` in
    fp32, sampling modes sample HF's distribution. Every argument is checked before the first
    forward; bad values raise ValueError / TypeError naming the argument, an HF argument the engine
    does not implement raises NotImplementedError naming it (decoding.hf.install falls back to HF).

    Arguments resolve as HF's own `generate` resolves them: what you pass, then `generation_config=`,
    then the model's generation config (a native model: its config's special tokens), then HF's
    defaults (shown in brackets).

    Input:
        model: an HF causal LM (run through an adapter) or a native decoder (models.LlamaDecoder,
            models.yoco.YOCODecoder; anything with vocab_size, new_cache() and forward()).
        input_ids (or inputs=, as HF names it): a (B, T) LongTensor, or a list of B token-id lists
            of any lengths (left-padded for you; then leave attention_mask out); None starts from
            [[bos_token_id]] as HF does.
        attention_mask: (B, T) 0/1 for a padded tensor batch; left padding is the norm, right
            padding and holes run as HF runs them (with HF's warning).
        HF models only, with greedy, sampling and beam search (beam sampling included):
            token_type_ids, position_ids (B, T); inputs_embeds (B, T, dim) alongside input_ids;
            past_key_values= / cache= (a DynamicCache of the prompt's first tokens, continued in
            place; greedy or sampling, one sequence per prompt).

    Length and stopping:
        max_new_tokens [max_length=20 counting the prompt], min_new_tokens, max_length, min_length;
        eos_token_id (an id or a list; pass None to never stop at eos), pad_token_id (fills rows
        that stopped), bos_token_id; stop_strings (str or list) with tokenizer= (encode/decode).

    Modes (chosen from the arguments, as in HF):
        greedy: the default (do_sample=False [False], num_beams=1 [1]).
        sampling: do_sample=True with temperature [1.0], top_k [50; 0 = off], top_p [1.0], min_p,
            in HF's processing order; seed= (an int) or generator= (a torch.Generator) reproduces
            a sample.
        any mode: repetition_penalty [1.0], no_repeat_ngram_size, bad_words_ids, sequence_bias,
            remove_invalid_values [False; greedy, sampling and beam search then raise
            decoding.finite.NonFiniteLogitsError on NaN / inf logits],
            logits_processor= (HF LogitsProcessors or callables (input_ids, scores) -> scores).
        beam search: num_beams > 1, length_penalty [1.0], early_stopping [False; True or "never"],
            num_return_sequences [1]; beam sampling: do_sample=True with num_beams > 1; diverse
            beam search: num_beam_groups > 1 with diversity_penalty > 0.
        speculative decoding: assistant_model= (a draft sharing the tokenizer) with
            num_assistant_tokens [20] (draft tokens per target forward),
            num_assistant_tokens_schedule ["constant"; "heuristic" adapts it],
            assistant_confidence_threshold [0.4]; or prompt_lookup_num_tokens= (drafts copied from
            n-grams of the prompt, max_matching_ngram_size). Greedy: token-identical to greedy;
            sampling: exactly the target's distribution.
        the engine's own parallel modes, strategy=:
            "jacobi" / "gs_jacobi" (Gauss-Seidel-Jacobi): greedy, token-identical to greedy;
            "sjd" (speculative Jacobi decoding): do_sample=True, the target's distribution;
                block_size [4] guesses per forward, jacobi_init ["pad"; "repeat", "ngram"].
            "blockwise" (blockwise parallel decoding): heads= (a directory from
                models.training.train_heads or a models.heads module; default the shipped heads,
                for the shipped target only), block_size [all heads],
                acceptance ["exact": token-identical to greedy; "topk": lossy, acceptance_top_k [2]].

    Output and streaming:
        output_scores (per-step processed scores, HF layout). The engine always returns a
        GenerationOutput; return_dict_in_generate=True also fills beam_indices (beam search and
        beam sampling) and, for HF models, output_logits / output_hidden_states /
        output_attentions. HF models with greedy, sampling and beam search return HF's cache
        object, and use_cache=False reruns the whole sequence each step as HF does (elsewhere
        the engine always caches).
        streamer=: HF's put/end protocol (transformers.TextStreamer, TextIteratorStreamer); steps
        that accept several tokens push them together. Beam search also calls
        streamer.put_hypotheses(row, token_ids, first_changed) when the streamer has it
        (decoding.beam_streamer.BeamTextStreamer shows the best beam live).

    Returns a GenerationOutput:
        sequences: (B * num_return_sequences, T + new) ids, prompt included, HF's layout;
        scores: per-step (B * n, V) scores when output_scores=True; sequences_scores: beam modes;
        beam_indices, logits, hidden_states, attentions, cache: as above (else None);
        stats: new_tokens, prefill_tokens, target_forwards, draft_forwards, tau (tokens emitted
            per target forward a row took part in: 1.0 for greedy, the speedup's upper bound for
            speculative / parallel modes), accept_rate_by_position, wall_s and tokens_per_s (the
            whole call, prefill included), kv_cache_bytes (peak).
    """
    start = time.perf_counter()
    if "inputs" in kwargs:
        inputs = kwargs.pop("inputs")
        if input_ids is not None and inputs is not None:
            raise ValueError("the prompt was passed twice (`inputs` and `input_ids`); pass one of them")
        input_ids = inputs if inputs is not None else input_ids
    target = as_decoder(model)
    extra = {k: kwargs.pop(k) for k in hf_call.MODEL_INPUTS if k in kwargs}  # HF's model kwargs
    cfg, _ = resolve(target, kwargs)
    hf_call.check(target, extra, cfg)
    embeds_only = input_ids is None and extra.get("inputs_embeds") is not None
    if embeds_only:  # HF starts from empty input_ids; the prefill reads the embeddings
        input_ids = hf_call.embeds_placeholder(extra["inputs_embeds"], cfg)
    if input_ids is None:
        raise ValueError("input_ids is required: pass the prompt's token ids [batch, length]")
    prompt = prepare_prompt(input_ids, attention_mask, target, cfg, embeds_only=embeds_only)
    hf_call.check_shapes(extra, prompt)
    plan_lengths(cfg, prompt, target)
    stop = _stop_strings(cfg)
    if cfg.generator is not None and cfg.generator.device.type != prompt.ids.device.type:
        raise ValueError(f"generator is on {cfg.generator.device}, the model on {prompt.ids.device}; "
                         "create the generator on the model's device")
    run = strategies.select(cfg)
    with torch.inference_mode(), hf_call.bound(target, extra, cfg, prompt) as call:
        out = run(target, prompt, cfg, stop)
    hf_call.attach(out, call, cfg)
    stats = out.stats
    stats.prefill_tokens = int(prompt.lengths.sum())
    stats.wall_s = time.perf_counter() - start
    stats.tokens_per_s = stats.new_tokens / stats.wall_s if stats.wall_s > 0 else 0.0
    return out
