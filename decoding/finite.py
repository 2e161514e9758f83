"""Non-finite logits (NaN, +inf: a broken checkpoint) stop the run with an error naming the step and
the row, unless `remove_invalid_values` asks for HF's repair. The check stays on the device: a flag
the strategy folds into its one stop-check sync per step, so it costs no extra host sync."""
from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLogitsError(RuntimeError):
    pass


CHECK_EVERY = 8  # steps between two looks at the kept maxima (the flag a strategy stops on)


class Guard:
    """Rows are HF's layout: prompt b's `per` sequences (or beams) at rows b*per .. b*per+per-1.

    Each step keeps only its rows' maxima: NaN and +inf survive a max (-inf does not matter), so a
    row went bad at a step exactly when that maximum is not below +inf. One reduction per step
    (which also gives the rows' argmax, greedy's token); every CHECK_EVERY steps the maxima so far
    are tested, so a run stops at most CHECK_EVERY - 1 steps after its first bad one (a few ops per
    step less on a CPU decode). Where and when is worked out once, on error, from every step kept."""

    def __init__(self, rows: int, steps: int, device, per: int = 1, what: str = "sequence"):
        self.rows, self.steps, self.device = rows, steps, device
        self.maxima: Tensor | None = None  # (steps, rows), in the logits' dtype
        self.argmax: Tensor | None = None  # (rows,) the last step's first maximum per row
        self.ran = 0  # steps checked
        self.per, self.what = per, what

    @classmethod
    def of(cls, cfg, rows: int, device, per: int = 1, what: str = "sequence") -> "Guard | None":
        return None if cfg.remove_invalid_values else cls(rows, cfg.max_new_tokens, device, per, what)

    def check(self, logits: Tensor, step: int) -> Tensor | None:
        """logits (R, V) of this step, kept; every CHECK_EVERY steps a 0-dim bool, some row has gone
        bad (no sync), else None. Leaves the rows' argmax in `argmax`."""
        if self.maxima is None:
            self.maxima = torch.empty(self.steps, self.rows, dtype=logits.dtype, device=self.device)
            self.argmax = torch.empty(self.rows, dtype=torch.long, device=self.device)
        torch.max(logits, -1, out=(self.maxima[step], self.argmax))
        self.ran = step + 1
        if self.ran % CHECK_EVERY:
            return None
        return ~(self.maxima[self.ran - CHECK_EVERY:self.ran] < float("inf")).all()

    def raise_if_bad(self) -> None:
        if self.maxima is None:
            return
        bad = ~(self.maxima[:self.ran] < float("inf"))  # (steps, rows)
        if bool(bad.any()):
            row = int(bad.any(0).int().argmax())
            step = int(bad[:, row].int().argmax())
            prompt, j = divmod(row, self.per)
            where = f"prompt {prompt}" + (f", {self.what} {j}" if self.per > 1 else "")
            raise NonFiniteLogitsError(
                f"the model's logits hold NaN or inf at generation step {step} ({where}): a "
                "broken checkpoint or an overflow (try float32 / bfloat16); pass remove_invalid_values=True to "
                "replace them as Hugging Face does")
