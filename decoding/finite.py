"""Non-finite logits (NaN, +inf: a broken checkpoint) stop the run with an error naming the step and
the row, unless `remove_invalid_values` asks for HF's repair. The check stays on the device: a flag
the strategy folds into its one stop-check sync per step, so it costs no extra host sync."""
from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLogitsError(RuntimeError):
    pass


class Guard:
    """Rows are HF's layout: prompt b's `per` sequences (or beams) at rows b*per .. b*per+per-1."""

    def __init__(self, rows: int, device, per: int = 1, what: str = "sequence"):
        self.first = torch.full((rows,), -1, dtype=torch.long, device=device)  # first bad step per row
        self.per, self.what = per, what

    @classmethod
    def of(cls, cfg, rows: int, device, per: int = 1, what: str = "sequence") -> "Guard | None":
        return None if cfg.remove_invalid_values else cls(rows, device, per, what)

    def check(self, logits: Tensor, step: int) -> Tensor:
        """logits (R, V) of this step; returns a 0-dim bool: some row has gone bad (no sync)."""
        bad = ~(logits < float("inf")).all(-1)  # NaN and +inf both fail `< inf`
        self.first = torch.where(bad & (self.first < 0), step, self.first)
        return (self.first >= 0).any()

    def raise_if_bad(self) -> None:
        if bool((self.first >= 0).any()):
            row = int((self.first >= 0).int().argmax())
            prompt, j = divmod(row, self.per)
            where = f"prompt {prompt}" + (f", {self.what} {j}" if self.per > 1 else "")
            raise NonFiniteLogitsError(
                f"the model's logits hold NaN or inf at generation step {int(self.first[row])} ({where}): a "
                "broken checkpoint or an overflow (try float32 / bfloat16); pass remove_invalid_values=True to "
                "replace them as Hugging Face does")
