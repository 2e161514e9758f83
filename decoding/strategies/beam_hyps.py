"""The finished hypotheses of one (batch row, group) of diverse beam search, kept as transformers
4.55's `BeamHypotheses` keeps them, so that ties and evictions resolve the same way.

At most `size` (score, tokens) pairs in insertion order. A newcomer enters while there is room or
when it beats the worst; past `size` the worst (the earliest among equals) is evicted. Scores are
Python floats (float64) computed from the float32 log-probability sums, as in 4.55.
"""
from __future__ import annotations


class Hypotheses:
    def __init__(self, size: int, length_penalty: float, early_stopping, max_new: int):
        self.size, self.length_penalty = size, length_penalty
        self.early_stopping, self.max_new = early_stopping, max_new
        self.items: list[tuple[float, list[int]]] = []  # (score, generated tokens without the eos)
        self.worst = 1e9

    def __len__(self) -> int:
        return len(self.items)

    def add(self, tokens: list[int], sum_logprobs: float, generated_len: int) -> None:
        """generated_len counts the eos that ended the hypothesis (tokens does not hold it)."""
        score = sum_logprobs / (generated_len ** self.length_penalty)
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, tokens))
            if len(self.items) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.items))
                del self.items[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        """Full, and (early_stopping False / "never") no running beam can beat the worst any more."""
        if len(self.items) < self.size:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best = best_sum_logprobs / self.max_new ** self.length_penalty  # longest is best
        else:
            best = best_sum_logprobs / generated_len ** self.length_penalty
        return self.worst >= best


def best_of(groups: list[Hypotheses], n: int) -> list[tuple[float, list[int]]]:
    """The n best hypotheses of one batch row over all its groups; among equal scores the later
    (group order, then insertion order) wins, as 4.55's stable sort and pop from the end."""
    ranked = sorted((h for g in groups for h in g.items), key=lambda h: h[0])
    return [ranked.pop() for _ in range(n)]
