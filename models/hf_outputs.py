"""What HF's generate returns per step besides tokens: raw logits, hidden states, attentions.

The adapter reports every forward and every change of the cache's rows (repeat, reorder, select) to a
`Recorder`; it keeps HF's layout:
- a step's outputs are the forward's own, taken before beam selection reorders the rows, with the
  prefill fanned out to every row it seeds (HF runs the prefill on the expanded batch);
- with `full=True` (HF's use_cache=False, which reruns the whole sequence each step) a step's hidden
  states and attentions cover every position so far: each row's history is gathered through the row
  changes since, and the attention rows are padded with the zero weights of the causal mask.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Recorder:
    def __init__(self, logits: bool, hidden: bool, attentions: bool, full: bool = False):
        self.want_logits, self.hidden, self.attentions, self.full = logits, hidden, attentions, full
        self.logits: list[Tensor] = []
        self.hidden_states: list[tuple] = []
        self.attention_maps: list[tuple] = []
        self._past: list[tuple] = []  # per forward: (hidden tuple, attention tuple) as it came
        self._rows: list[Tensor] = []  # per forward: current row -> that forward's row
        self._pending = None  # the last forward's outputs until the rows change or the next forward

    # -- events from the adapter ------------------------------------------------------------
    def forward(self, out) -> None:
        self._flush()
        hidden = out.hidden_states if self.hidden else None
        attn = out.attentions if self.attentions else None
        if self.hidden and hidden is None or self.attentions and attn is None:
            raise NotImplementedError("`output_hidden_states` / `output_attentions`: the model's forward returned "
                                      "none (its attention implementation may not return weights)")
        B = out.logits.shape[0]
        self._past.append((hidden, attn))
        self._rows.append(torch.arange(B, device=out.logits.device))
        self._pending = [out.logits[:, -1].float() if self.want_logits else None,
                         torch.arange(B, device=out.logits.device)]

    def rows(self, index: Tensor, fan_out: bool) -> None:
        """The cache's rows become rows[index]. A fan-out (repeat, select right after the prefill)
        also applies to the pending step, whose outputs HF records on the expanded batch."""
        if self._pending is not None:
            if fan_out:
                self._pending[1] = self._pending[1][index]
            else:
                self._flush()
        self._rows = [r[index] for r in self._rows]

    def finish(self) -> None:
        self._flush()

    # -- HF's step tuples ----------------------------------------------------------------------
    def _flush(self) -> None:
        if self._pending is None:
            return
        logits, rows = self._pending
        self._pending = None
        if logits is not None:
            self.logits.append(logits[rows])
        hidden, attn = self._past[-1]
        if not self.full:
            if hidden is not None:
                self.hidden_states.append(tuple(h[rows] for h in hidden))
            if attn is not None:
                self.attention_maps.append(tuple(a[rows] for a in attn))
            return
        # every position so far: earlier forwards' outputs gathered along each row's history (the rows
        # reported now are the cache's current rows: a flush comes before any other row change)
        history = self._rows
        if hidden is not None:
            self.hidden_states.append(tuple(
                torch.cat([self._past[j][0][layer][history[j]] for j in range(len(self._past))], 1)
                for layer in range(len(hidden))))
        if attn is not None:
            self.attention_maps.append(tuple(self._full_attention(layer, history) for layer in range(len(attn))))

    def _full_attention(self, layer: int, history: list[Tensor]) -> Tensor:
        parts = [self._past[j][1][layer][history[j]] for j in range(len(self._past))]  # (R, H, t_j, s_j)
        S = parts[-1].shape[-1]
        rows = [torch.nn.functional.pad(p, (0, S - p.shape[-1])) for p in parts]  # future keys: weight 0
        return torch.cat(rows, 2)
