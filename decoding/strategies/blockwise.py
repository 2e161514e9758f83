"""Blockwise parallel decoding (Stern et al., "Blockwise Parallel Decoding for Deep Autoregressive
Models") on the propose-verify skeleton (decoding/verify.py), at any batch size.

The combined predict-and-verify step: ONE target forward over [pending token, k proposals]
  - verifies the proposals: position i is the target's score of the token after proposals[:i];
    "exact" accepts while a proposal equals the target's argmax (token-identical to greedy),
    "topk" while it lies within the target's acceptance_top_k best tokens there (default 2; the
    paper's lossy mode);
  - predicts the next block: at the position after the last accepted proposal the target's argmax
    is the next token (always kept), and heads 1..k on the SAME hidden state guess the k tokens
    after it. So every round costs one target forward; round 1 is the prefill, which only predicts.

block_size = proposals per round = heads used (heads.first(block_size), default all); a round
emits up to block_size + 1 tokens, which is the paper's block size k (it counts the target's own
p_1). heads = a directory or a heads module (models.heads: the paper's independent BlockwiseHeads,
or HydraHeads, which also read the token before each guess); default the shipped heads, for the
shipped target only (models.heads.default_heads recognises it by config and weights). Rounds run in verify.speculate, so
whatever it records per round (verify.Round) covers blockwise too; one row on a CPU runs the same
rounds with host bookkeeping (strategies/speculative_row.py), as speculative decoding does.

Processors: the target's scores are processed per position exactly as greedy processes them
(repetition penalty, min_new_tokens, logits_processor), so exact acceptance stays identical to
greedy with them. The heads' guesses go through the same processors (as the draft's in speculative
decoding: earlier guesses count as seen), which only helps them agree with the processed target.

Native decoders only: the heads read the target's final-norm hidden state (`return_hidden=True`),
and rollback is the native cache's per-row truncate. HF models are refused: their adapter has no
cheap hidden-state path, and heads are trained per target anyway (models/training/train_heads.py).
"""
from __future__ import annotations

from os import PathLike

import torch
from torch import Tensor

from ..capabilities import check_rollback, proposal_heads
from ..output import GenerationOutput
from ..verify import Constant, Proposal, Proposer, Round, Setup, greedy_accept, process, speculate
from . import speculative_row

DEFAULT_TOP_K = 2  # acceptance="topk" without acceptance_top_k


class HeadsProposer(Proposer):
    """Proposals from the heads on the hidden state the target's own next-token prediction came from."""

    def __init__(self, target, heads):
        self.target, self.heads = target, heads

    def start(self, setup: Setup) -> None:
        self.setup = setup
        self.guess = None  # (B, k) next round's proposals; none before the prefill

    def target_forward(self, forward, ids: Tensor, mask: Tensor | None, keep: int) -> Tensor:
        logits, self.hidden = forward(ids, mask, keep, return_hidden=True)
        return logits  # hidden (B, keep, dim) waits for observe

    def propose(self, state, k: int) -> Proposal:
        if self.guess is None or k == 0:
            return Proposal(state.sequences.new_zeros(state.batch_size, 0))
        return Proposal(self.guess[:, :k])

    def observe(self, rnd: Round) -> None:
        B = rnd.accepted.shape[0]
        # position accepted[b] gave the round's own token (correction / bonus): its heads guess what follows
        at = torch.arange(B, device=rnd.accepted.device), rnd.accepted
        h, first = self.hidden[at], rnd.tokens[at]  # (B, dim), (B,) that token (hydra heads read it)
        self.guess = self.heads.propose(h, first, self.target, self.pick)

    def pick(self, j: int, logits: Tensor, guess: Tensor) -> Tensor:
        """Guess j: the argmax of head j's processed scores, which follow the kept tokens and guesses 0..j-1."""
        s = self.setup
        scores = logits[:, :s.vocab]
        if s.pipeline.active:
            scores = process(s.pipeline, s.state, scores.float(), guess, first=j)
        return scores.argmax(-1)


def topk_accept(top_k: int):
    """The paper's relaxed rule: accept while the proposal is within the target's top-k (ties with
    the k-th score count as inside, as the top_k processor keeps them); the next token is still the
    target's argmax. Lossy: the output is no longer greedy's."""
    def rule(proposal: Proposal, scores: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        draft = proposal.tokens  # (B, K)
        K = draft.shape[1]
        best = scores.argmax(-1)  # (B, K+1)
        s = scores[:, :K]
        kth = s.topk(min(top_k, s.shape[-1]), -1).values[..., -1]  # (B, K)
        mine = s.gather(-1, draft[..., None]).squeeze(-1)
        ok = (mine >= kth) & (mine > float("-inf"))  # a suppressed token is never accepted
        accepted = ok.long().cumprod(1).sum(1)
        return accepted, best.gather(1, accepted[:, None]).squeeze(1)
    return rule


# -- the heads and checks before any work --------------------------------------------------------------

def resolve_heads(target, heads, block_size):
    """The heads module (block_size of them), loaded and checked against the target."""
    module = proposal_heads(target, heads)
    k = block_size if block_size is not None else module.k
    if k > module.k:
        raise ValueError(f"block_size={k} exceeds the {module.k} proposal heads of heads={_name(heads)}: "
                         f"use block_size <= {module.k} (proposals per round) or heads trained with a larger k")
    return module if k == module.k else module.first(k)


def _name(heads) -> str:
    return str(heads) if isinstance(heads, (str, PathLike)) else type(heads).__name__


def check_target(model) -> None:
    if not model.returns_hidden:
        raise NotImplementedError(
            "strategy='blockwise' runs on native decoders only (models.LlamaDecoder, YOCODecoder): its heads read "
            "the target's final-norm hidden state (forward(..., return_hidden=True)), which this model does not "
            "declare (the Hugging Face adapter does not expose it cheaply); use greedy or speculative decoding")


def run(model, prompt, cfg, stop=None) -> GenerationOutput:
    check_target(model)
    heads = resolve_heads(model, cfg.heads, cfg.block_size)
    k = heads.k
    check_rollback(k, "block_size", prompt.batch_size, prompt.width + cfg.max_new_tokens + k, model=model)
    top_k = (cfg.acceptance_top_k or DEFAULT_TOP_K) if cfg.acceptance == "topk" else None
    if speculative_row.applies(model, None, prompt, cfg, stop, k):  # one row on a CPU: host bookkeeping
        return speculative_row.run(model, None, prompt, cfg, Constant(k), model.vocab_size, heads=heads, top_k=top_k)
    rule = greedy_accept if top_k is None else topk_accept(top_k)
    return speculate(model, prompt, cfg, stop, HeadsProposer(model, heads), rule, Constant(k))
