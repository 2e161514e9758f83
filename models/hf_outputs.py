"""What HF's generate returns per step besides tokens: raw logits, hidden states, attentions.

The adapter reports every forward and every change of the cache's rows (repeat, reorder, select) to a
`Recorder`, which keeps HF's layout: a step's outputs are the forward's own, taken before beam
selection reorders the rows, with the prefill fanned out to every row it seeds (HF runs the prefill on
the expanded batch). With use_cache=False the adapter reruns the whole sequence each step as HF does,
so a step's outputs cover every position, as HF's.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Recorder:
    def __init__(self, logits: bool, hidden: bool, attentions: bool):
        self.want_logits, self.hidden, self.attentions = logits, hidden, attentions
        self.logits: list[Tensor] = []
        self.hidden_states: list[tuple] = []
        self.attention_maps: list[tuple] = []
        self._pending = None  # (outputs, rows) of the last forward until the rows change or the next forward

    def forward(self, out) -> None:
        self._flush()
        if self.hidden and out.hidden_states is None or self.attentions and out.attentions is None:
            raise NotImplementedError("`output_hidden_states` / `output_attentions`: the model's forward returned "
                                      "none (its attention implementation may not return weights)")
        self._pending = (out, torch.arange(out.logits.shape[0], device=out.logits.device))

    def rows(self, index: Tensor, fan_out: bool) -> None:
        """The cache's rows become rows[index]. A fan-out (repeat right after the prefill) applies to the
        pending step, whose outputs HF records on the expanded batch; a reorder comes after HF records."""
        if self._pending is not None and fan_out:
            self._pending = (self._pending[0], self._pending[1][index])
        else:
            self._flush()

    def finish(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        out, rows = self._pending
        self._pending = None
        if self.want_logits:
            self.logits.append(out.logits[:, -1].float()[rows])
        if self.hidden:
            self.hidden_states.append(tuple(h[rows] for h in out.hidden_states))
        if self.attentions:
            self.attention_maps.append(tuple(a[rows] for a in out.attentions))
