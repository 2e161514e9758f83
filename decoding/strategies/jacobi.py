"""Jacobi, Gauss-Seidel-Jacobi (Santilli et al.) and speculative Jacobi decoding (Teng et al.) on the
propose-verify skeleton (decoding/verify.py), no draft model: the guess is the previous iterate
(decoding/jacobi_proposers.py).

Greedy decoding is the fixed point y_i = argmax p(y_i | x, y_<i) for every i; Jacobi iteration
updates all guesses of a block in parallel, one target forward each. Here an iteration is one verify
round over [last kept token, n guesses]: the guesses that equal the target's argmax after a correct
prefix have reached their fixed point and are kept (greedy_accept), and the argmax after them is
correct too, so every iteration fixes at least one token. The paper's stopping test (the iterate
did not change) would spend one more forward to see what this prefix test sees at once; outputs are
the same, token for token, as greedy decoding (with its processors, e.g. repetition penalty).

- strategy="jacobi": a window of n guesses slides forward: the fixed prefix leaves, the rest is the
  next iterate, fresh guesses (jacobi_init) enter at its end. With n >= the output length this is
  the paper's parallel Jacobi (PJ) over the whole output.
- strategy="gs_jacobi": the paper's hybrid Gauss-Seidel-Jacobi (HGJ): the output is cut into blocks
  of n positions; a block is iterated (Jacobi) until all its tokens are fixed, then the next block
  starts from fresh guesses conditioned on it (Gauss-Seidel across blocks), and decoding stops at
  eos as autoregressive decoding does. The guess shrinks as a block converges, so forwards are
  narrower than Jacobi's but there are at least as many.
- strategy="sjd" (do_sample=True): Jacobi under sampling with SJD's probabilistic criterion: a guess x
  drawn from q (the previous iteration's distribution at its position; a one-hot for a fresh
  guess) is accepted with probability min(1, p(x) / q(x)), a rejection is resampled from
  norm(max(0, p - q)) (sample_accept), and the unaccepted tail is re-sampled from this iteration's
  distributions to form the next guess. The output is distributed as sampling from the target.
  With do_sample=False it decodes greedily (the criterion then is Jacobi's), with a warning.

stats: target_forwards = Jacobi iterations (prefill included: it is the first iteration), tau =
tokens per iteration, accept_rate_by_position = how often guess i was fixed.
"""
from __future__ import annotations

import warnings

from ..capabilities import check_rollback
from ..jacobi_proposers import JacobiProposer
from ..verify import Constant, greedy_accept, sample_accept, speculate

DEFAULT_BLOCK = 4  # tau barely grows past 4 on the shipped target, the forward does (bench/results/cpu/jacobi.md)
DEFAULT_INIT = "pad"  # the paper's initialisation


def run(model, prompt, cfg, stop=None):
    n = cfg.block_size or DEFAULT_BLOCK
    sample = cfg.do_sample
    if cfg.strategy == "sjd" and not sample:
        warnings.warn("strategy='sjd' with do_sample=False decodes greedily (the speculative Jacobi criterion "
                      "reduces to Jacobi's); pass do_sample=True to sample", UserWarning, stacklevel=3)
    rows = prompt.batch_size * cfg.num_return_sequences
    check_rollback(n, "block_size", rows, prompt.width + cfg.max_new_tokens + n, model=model)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    proposer = JacobiProposer(n, cfg.jacobi_init or DEFAULT_INIT, sample=sample,
                              blocks=cfg.strategy == "gs_jacobi", pad=pad)
    rule = sample_accept if sample else greedy_accept  # SJD's criterion / Jacobi's fixed-point test
    return speculate(model, prompt, cfg, stop, proposer, rule, Constant(n))
