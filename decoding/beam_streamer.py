"""Streaming beam search.

HF's streamers take tokens one at a time and never take one back, so HF refuses a streamer with
beam search. Beam search's best hypothesis changes as it goes, so the engine adds one method to
HF's streamer protocol:

    streamer.put_hypotheses(row: int, token_ids: list[int], first_changed: int)

After every step of beam (and diverse beam) search it is called once per batch row with the tokens
generated so far by the row's current best hypothesis (prompt excluded, eos included) and the first
index at which they differ from the previous call's for that row (0 on the first call;
len(token_ids) if nothing changed). A display keeps token_ids[:first_changed] and rewrites the rest.
"Current best" is the hypothesis that would be returned if the search stopped now: the best finished
one, unless the best running beam scores higher at its current length (length penalty applied).
A last call after the search carries the returned best sequence of each row.

Beside it the engine calls HF's own methods, so any HF streamer works: `put(prompt_ids)` before the
first step, `put(new_token_ids)` once with each row's returned best sequence ((B, n) LongTensor; for
one prompt just its tokens), then `end()`. A plain `transformers.TextStreamer` thus prints the
answer once, at the end; a streamer without `put_hypotheses` sees nothing in between.

`BeamTextStreamer` shows one row live, rewriting the changed tail in place. For a CLI:

    streamer = BeamTextStreamer(tokenizer) if num_beams > 1 else transformers.TextStreamer(tokenizer)
    decoding.generate(model, ids, num_beams=4, streamer=streamer)
"""
from __future__ import annotations

import os
import sys

from torch import Tensor


class HypothesisFeed:
    """The engine's side: turns each step's best hypotheses into put_hypotheses calls."""

    def __init__(self, streamer, prompt):
        self.streamer = streamer
        self.live = callable(getattr(streamer, "put_hypotheses", None))
        self.last: dict[int, list[int]] = {}
        streamer.put(prompt.given.cpu())

    @classmethod
    def of(cls, streamer, prompt) -> "HypothesisFeed | None":
        return None if streamer is None else cls(streamer, prompt)

    def step(self, best: list[list[int]]) -> None:
        """best[b]: row b's current best hypothesis (generated tokens)."""
        if not self.live:
            return
        for row, tokens in enumerate(best):
            old = self.last.get(row, [])
            first = 0
            while first < min(len(old), len(tokens)) and old[first] == tokens[first]:
                first += 1
            self.last[row] = tokens
            self.streamer.put_hypotheses(row, tokens, first)

    def finish(self, new: Tensor, lengths: Tensor, n: int) -> None:
        """new (B*n, W) returned tokens (padded), lengths (B*n,): each row's first (best) one wins."""
        best, best_len = new[::n].cpu(), lengths[::n].tolist()
        self.step([t[:k] for t, k in zip(best.tolist(), best_len)])
        self.streamer.put(best[0, :best_len[0]] if best.shape[0] == 1 else best)
        self.streamer.end()


class BeamTextStreamer:
    """Prints the best hypothesis of one batch row as it changes: new text is appended, changed
    text is rubbed out with backspaces first (a change reaching back past a line break reprints the
    hypothesis on a fresh line, since a terminal cannot back up across lines)."""

    def __init__(self, tokenizer, row: int = 0, stream=None, **decode_kwargs):
        self.tokenizer, self.row = tokenizer, row
        self.stream = stream if stream is not None else sys.stdout
        self.decode_kwargs = {"skip_special_tokens": True, **decode_kwargs}
        self.text = ""  # what is on screen

    def _decode(self, tokens: list[int]) -> str:
        try:
            return self.tokenizer.decode(tokens, **self.decode_kwargs)
        except TypeError:  # a tokenizer without HF's keyword arguments (e.g. SentencePiece)
            return self.tokenizer.decode(tokens)

    def put_hypotheses(self, row: int, token_ids: list[int], first_changed: int) -> None:
        if row != self.row:
            return
        text = self._decode(list(token_ids))
        keep = len(os.path.commonprefix([self.text, text]))
        gone = self.text[keep:]
        if "\n" in gone:
            out = "\n" + text
        else:
            out = "\b" * len(gone) + " " * len(gone) + "\b" * len(gone) + text[keep:]
        self.text = text
        self.stream.write(out)
        self.stream.flush()

    def put(self, value) -> None:
        """HF's protocol: the prompt, then the final answer, which put_hypotheses already showed."""

    def end(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
        self.text = ""
