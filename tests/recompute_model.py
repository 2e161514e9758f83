"""An oracle for cached models: the same weights behind the model protocol, but every forward
recomputes the whole sequence with the model's cache-free `forward_train`. Any strategy run on the
real (cached) model must give what it gives on this wrapper."""
from __future__ import annotations

import torch
from torch import Tensor


class HistoryCache:
    """Per-row token histories; the protocol's operations act on lists, nothing clever."""
    max_rollback = None  # any row back to any length

    def __init__(self, batch_size: int, capacity: int):
        self.rows: list[list[int]] = [[] for _ in range(batch_size)]
        self._capacity = capacity

    @property
    def lengths(self) -> Tensor:
        return torch.tensor([len(r) for r in self.rows], dtype=torch.int32)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> int:
        return self._capacity

    def truncate(self, n) -> None:
        n = torch.as_tensor(n).expand(self.batch_size).tolist()
        self.rows = [r[:len(r) - k] for r, k in zip(self.rows, n)]

    def reorder(self, index) -> None:
        self.rows = [list(self.rows[i]) for i in torch.as_tensor(index).tolist()]

    select = reorder

    def repeat(self, k: int) -> None:
        self.rows = [list(r) for r in self.rows for _ in range(k)]

    def nbytes(self) -> int:
        return 0


class RecomputeModel:
    def __init__(self, model):
        self.model = model
        self.vocab_size = model.vocab_size
        self.config = model.config
        self.device = model.device

    def new_cache(self, batch_size: int, max_len: int, *, dtype=None, device=None) -> HistoryCache:
        return HistoryCache(batch_size, max_len)

    @torch.no_grad()
    def forward(self, input_ids: Tensor, cache: HistoryCache, *, positions=None, attention_mask=None,
                logits_to_keep: int = 0) -> Tensor:
        return self._run(input_ids, cache, attention_mask, logits_to_keep, with_hidden=False)

    @torch.no_grad()
    def with_hidden(self, input_ids: Tensor, cache: HistoryCache) -> tuple[Tensor, Tensor]:
        """(logits, final-norm hidden states) of T real tokens per row: what return_hidden=True gives.
        Not a forward argument, so this wrapper still stands for a model without hidden states."""
        return self._run(input_ids, cache, None, 0, with_hidden=True)

    def _run(self, input_ids, cache, attention_mask, logits_to_keep: int, with_hidden: bool):
        B, T = input_ids.shape
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        out = torch.zeros(B, T, self.vocab_size)
        hidden = torch.zeros(B, T, self.config.dim) if with_hidden else None
        for b in range(B):
            new = input_ids[b][mask[b]].tolist()
            cache.rows[b].extend(new)
            if not cache.rows[b] or not new:
                continue
            rows = torch.tensor([cache.rows[b]])
            if with_hidden:  # the final-norm states proposal heads read, and the logits from them
                h = self.model.hidden_train(rows)[0, -len(new):]
                hidden[b, mask[b]] = h.float()
                logits = self.model.lm_head(h)
            else:
                logits = self.model.forward_train(rows)[0, -len(new):]
            out[b, mask[b]] = logits.float()  # real tokens' logits go where those tokens sit in the padded block
        keep = (lambda t: t[:, -logits_to_keep:]) if logits_to_keep else (lambda t: t)
        return (keep(out), keep(hidden)) if with_hidden else keep(out)

    __call__ = forward
