"""Speculative sampling (Chen et al.) with a draft model, and prompt lookup: HF's assisted-generation
arguments on the propose-verify skeleton (decoding/verify.py), at any batch size.

- `assistant_model=draft`: the draft guesses k tokens with the target's processors; greedy
  accepts the longest prefix equal to the target's argmax (token-identical to target greedy);
  sampling accepts with min(1, p/q) and resamples a rejection from norm(max(0, p - q)).
- `prompt_lookup_num_tokens=k`: the guess is what followed the row's last n-gram earlier in its
  text (`max_matching_ngram_size`, default 2 as HF); q is a one-hot.

k resolves as HF's own settings do, except that a `num_assistant_tokens=` passed to generate() is
honoured (HF ignores it): the caller's value > generation_config= > the ASSISTANT's
generation_config > the target's > HF's defaults (20, "constant", confidence threshold 0.4). As in
HF, with the defaults the draft stops guessing early when its processed probability of its last
guess is below `assistant_confidence_threshold` (in every row); set it to 0 for exactly k guesses.
The "heuristic" schedule (+2 after a round in which every running row accepted everything, -1
otherwise) lives for one call: the assistant's config is not updated.

One row on a CPU with no logits processor but sampling's warpers (the usual call), draft or prompt
lookup, runs strategies/speculative_row.py: the same rounds with their bookkeeping on the host, the
same tokens and statistics; sampling with top-p or min-p the same draws, with temperature / top-k
only its own draws from the same distribution (strategies/row_sampling.py).

Batch > 1 (HF's assisted generation is batch 1 only): rows accept different numbers of tokens;
caches roll back per row; a round guesses at most one token fewer than the running row closest to
max_new_tokens may still take. stats.accept_rate_by_position counts every running row as guessing
K tokens in a round of K guesses (prompt lookup pads a shorter n-gram match with guesses that are
never accepted). The caller's logits processors see, per row and position, input_ids as HF would
show them (the prompt with its left pads, the kept tokens, the guesses before that position).
"""
from __future__ import annotations

import torch

from ..capabilities import as_decoder, check_positions, check_rollback, rollback_bound
from ..proposers import DraftProposer, NgramProposer
from ..verify import Constant, Round, greedy_accept, sample_accept, speculate
from . import speculative_row


class Heuristic:
    """HF's "heuristic" num_assistant_tokens_schedule."""

    def __init__(self, k: int, most: int):
        self.k, self.most = k, most

    def update(self, rnd: Round) -> None:
        K = rnd.draft.shape[1]
        if K:
            self.advance(bool(((rnd.accepted >= K) | ~rnd.ran).all()))

    def advance(self, full: bool) -> None:
        """After a round with guesses: `full` when every running row accepted all of them."""
        self.k = min(self.k + 2, self.most) if full else max(1, self.k - 1)


def run(model, prompt, cfg, stop=None):
    rows = prompt.batch_size * cfg.num_return_sequences
    draft = None
    if cfg.prompt_lookup_num_tokens is None:
        draft = assistant(cfg.assistant_model, model, prompt, cfg)
    if draft is None:
        k, name = cfg.prompt_lookup_num_tokens, "prompt_lookup_num_tokens"
        proposer, schedule, vocab = NgramProposer(cfg.max_matching_ngram_size or 2), Constant(k), model.vocab_size
    else:
        k, name = cfg.num_assistant_tokens, "num_assistant_tokens"
        # a cache that keeps a ring of recent keys (YOCO) rolls back at most max_rollback tokens
        most = min(cfg.max_new_tokens, rollback_bound(model, draft) or cfg.max_new_tokens)
        schedule = Constant(k) if cfg.num_assistant_tokens_schedule == "constant" else Heuristic(k, most)
        proposer = DraftProposer(draft, most=schedule.most, threshold=cfg.assistant_confidence_threshold or 0.0)
        vocab = min(model.vocab_size, draft.vocab_size)
    check_rollback(schedule.k, name, rows, prompt.width + cfg.max_new_tokens + schedule.most,
                   model=model, assistant_model=draft)
    if speculative_row.applies(model, draft, prompt, cfg, stop, schedule.most):
        if draft is None:
            return speculative_row.run(model, None, prompt, cfg, schedule, vocab, max_ngram=proposer.max_ngram)
        return speculative_row.run(model, draft, prompt, cfg, schedule, vocab, threshold=proposer.threshold)
    rule = sample_accept if cfg.do_sample else greedy_accept
    return speculate(model, prompt, cfg, stop, proposer, rule, schedule, vocab=vocab)


# -- checks before any work --------------------------------------------------------------------------

# Vocabularies padded for matmul speed differ by a few percent at most (Qwen2.5 151936 vs 152064,
# GPT-2 50257 vs 50304, Phi-2 50295 vs 51200); both models then score only the common id range.
PADDING = 0.95


def _eos(model) -> set[int]:
    eos = model.generation_defaults.get("eos_token_id")
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def assistant(assistant_model, target, prompt, cfg):
    """The draft behind the model protocol, checked against the target: same device, same tokenizer
    (vocabularies equal or one a padded superset of the other, same eos), room for the run."""
    try:
        draft = as_decoder(assistant_model)
    except (TypeError, NotImplementedError) as e:
        raise type(e)(f"assistant_model: {e}") from None
    device = torch.device(draft.device)
    if device != prompt.ids.device:
        raise ValueError(f"assistant_model is on {device}, the model on {prompt.ids.device}; "
                         "put both on one device")
    vt, vd = target.vocab_size, draft.vocab_size
    if vt != vd and min(vt, vd) < PADDING * max(vt, vd):
        raise ValueError(f"assistant_model has a vocabulary of {vd} tokens, the model {vt}: a draft must share "
                         "the model's tokenizer (vocabularies may differ only by padding, e.g. 151936 vs 152064)")
    tok = cfg.tokenizer
    if vt != vd and tok is not None and hasattr(tok, "__len__") and len(tok) > min(vt, vd):
        raise ValueError(f"assistant_model: the tokenizer has {len(tok)} tokens, more than the smaller vocabulary "
                         f"({min(vt, vd)}) of model and assistant_model")
    te, de = _eos(target), _eos(draft)
    if te and de and te != de:
        raise ValueError(f"assistant_model ends text with eos {sorted(de)}, the model with {sorted(te)}: a draft "
                         "must share the model's tokenizer")
    real = prompt.ids if prompt.mask is None else prompt.ids[prompt.mask]
    top = int(real.max())
    if top >= draft.embed_size:
        raise ValueError(f"input_ids holds token id {top}, outside assistant_model's vocabulary "
                         f"[0, {draft.embed_size})")
    check_positions(draft, prompt.max_len, cfg.max_new_tokens, "assistant_model")
    return draft
