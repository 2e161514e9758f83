"""What a run asks of its models, checked before any work from the capabilities the model protocol
declares (models/protocol.py; docs/DESIGN.md 3.1). One place for each check the strategies share;
nothing here looks at what kind of model it is.
"""
from __future__ import annotations

import warnings

from models.adapt import as_decoder  # the one door into the protocol (HF adapter, declared defaults)
from models.heads import compiled_guessing, default_heads, load_heads

__all__ = ["as_decoder", "cache_size", "check_positions", "check_rollback", "compiled_guessing", "finished_rows_unmasked",
           "proposal_heads", "rollback_bound"]


def rollback_bound(*models) -> int | None:
    """The most tokens one round may roll back on every one of these models' caches (None: any)."""
    bounds = [m.max_rollback for m in models if m is not None and m.max_rollback is not None]
    return min(bounds, default=None)


def finished_rows_unmasked(model) -> bool:
    """Whether a propose-verify round may run this model's finished rows unmasked on whatever tokens
    and roll back all they wrote: it keeps the round's step mask-free, so a native model's compiled
    step or CUDA graph still takes it once rows finish at different rounds (with a mask it runs
    eagerly). Needs a cache that rolls any row back any distance; the HF adapter gains nothing (it has
    no fixed-shape step) and keeps the mask."""
    return model.max_rollback is None and model.rollback_window is None and not model.hf_passthrough


def check_rollback(k: int, name: str, rows: int, longest: int, **models) -> None:
    """A propose-verify run that guesses up to k tokens a round (the `name=` argument), over `rows`
    rows of at most `longest` tokens, must be able to roll back every model's cache (models given
    by the argument that names them: model=target, assistant_model=draft)."""
    bound = rollback_bound(*models.values())
    if bound is not None and k > bound:
        raise ValueError(f"`{name}={k}` exceeds max_rollback={bound} of the model's cache (the tokens a round can "
                         f"roll back); lower {name} or build the model with a larger max_rollback")
    for arg, m in models.items():
        window = None if m is None else m.rollback_window
        if window is None:
            continue
        if rows > 1:
            raise ValueError(f"{arg} has a sliding-window attention cache (window {window}): per-row rollback at "
                             f"batch size {rows} cannot be done on it (HF's window counts slots); use batch size 1")
        if longest >= window:
            raise ValueError(f"{arg} has a sliding-window attention cache (window {window}) that this run would "
                             f"fill (prompt + max_new_tokens + guesses = {longest}); rolling back a full window is "
                             "impossible: lower max_new_tokens or use a model without a sliding window")


def check_positions(model, longest_prompt: int, max_new: int, name: str = "the model") -> None:
    """The longest prompt plus max_new_tokens must fit the model's position limit."""
    limit = model.max_positions
    if limit and longest_prompt + max_new > limit and model.runs_past_max_positions:
        warnings.warn("This is a friendly reminder - the current text generation call will exceed the model's "
                      f"predefined maximum length ({limit}). Depending on the model, you may observe exceptions, "
                      "performance degradation, or nothing at all.", UserWarning, stacklevel=4)  # HF's words
    elif limit and longest_prompt + max_new > limit:
        raise ValueError(f"the prompt ({longest_prompt} tokens) + max_new_tokens ({max_new}) exceeds {name}'s "
                         f"position limit of {limit} (max_position_embeddings / max_seq_len); lower max_new_tokens")


def cache_size(model, width: int, max_new: int, most: int) -> tuple[int, bool]:
    """Cache slots for a propose-verify run: prompt + new tokens + one round of guesses past them (a
    finished row's inputs, masked or rolled back, still take slots in the native cache), clamped to the
    model's position limit; True when clamped, so that rounds must cap k to the room left."""
    want = width + max_new + min(most, max_new) + 2
    limit = model.max_positions
    return (want, False) if not limit or want <= limit else (limit, True)


def proposal_heads(target, heads):
    """blockwise's heads= (a directory or a heads module; None: the shipped heads, which serve only
    the shipped target), loaded and checked against the target."""
    return load_heads(default_heads(target) if heads is None else heads, target)
