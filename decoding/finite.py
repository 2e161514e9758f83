"""Non-finite logits (NaN, +inf: a broken checkpoint) stop the run with an error naming the step and
the row, unless `remove_invalid_values` asks for HF's repair. The check stays on the device: a flag
the strategy folds into its one stop-check sync per step, so it costs no extra host sync."""
from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLogitsError(RuntimeError):
    pass


class Guard:
    def __init__(self, rows: int, device):
        self.first = torch.full((rows,), -1, dtype=torch.long, device=device)  # first bad step per row

    @classmethod
    def of(cls, cfg, rows: int, device) -> "Guard | None":
        return None if cfg.remove_invalid_values else cls(rows, device)

    def check(self, logits: Tensor, step: int) -> Tensor:
        """logits (R, V) of this step; returns a 0-dim bool: some row has gone bad (no sync)."""
        bad = ~(logits < float("inf")).all(-1)  # NaN and +inf both fail `< inf`
        self.first = torch.where(bad & (self.first < 0), step, self.first)
        return (self.first >= 0).any()

    def raise_if_bad(self) -> None:
        if bool((self.first >= 0).any()):
            row = int((self.first >= 0).int().argmax())
            raise NonFiniteLogitsError(
                f"the model's logits hold NaN or inf at generation step {int(self.first[row])} (row {row}): a "
                "broken checkpoint or an overflow (try float32 / bfloat16); pass remove_invalid_values=True to "
                "replace them as Hugging Face does")
