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

`BeamTextStreamer` shows one row: on a terminal a single line revised in place, then the answer;
elsewhere the answer alone, as plain text. For a CLI:

    streamer = BeamTextStreamer(tokenizer) if num_beams > 1 else transformers.TextStreamer(tokenizer)
    decoding.generate(model, ids, num_beams=4, streamer=streamer)
"""
from __future__ import annotations

import shutil
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
    """Shows the best hypothesis of one batch row (prompt, then completion).

    On a terminal (live): one status line, rewritten in place ('\\r' + erase line) after every step
    with the tail of the current best text that fits the terminal's width (newlines shown as '↵'),
    so an abandoned hypothesis never stays on screen; at the end that line gives way to the answer,
    printed once in full. Elsewhere (a pipe, a file): the answer alone, once, as plain text: no
    control characters. `live` overrides the terminal check."""

    LINE_BREAK = "\u21b5"  # ↵

    def __init__(self, tokenizer, row: int = 0, stream=None, *, live: bool | None = None,
                 skip_prompt: bool = False, **decode_kwargs):
        self.tokenizer, self.row, self.skip_prompt = tokenizer, row, skip_prompt
        self.stream = stream if stream is not None else sys.stdout
        if live is None:
            isatty = getattr(self.stream, "isatty", None)
            live = bool(isatty()) if callable(isatty) else False
        self.live = live
        self.decode_kwargs = {"skip_special_tokens": True, **decode_kwargs}
        self.prompt = None  # the prompt's text, from HF's first put()
        self.text = ""  # the current best completion
        self.shown = False  # a live line is on screen

    def _decode(self, tokens: list[int]) -> str:
        try:
            return self.tokenizer.decode(tokens, **self.decode_kwargs)
        except TypeError:  # a tokenizer without HF's keyword arguments
            return self.tokenizer.decode(tokens)

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)  # the last column would wrap

    def _line(self) -> str:
        """The tail of prompt + best completion as one line of printable characters."""
        text = ("" if self.skip_prompt else self.prompt or "") + self.text
        text = text.replace("\r\n", "\n").replace("\n", self.LINE_BREAK).replace("\t", " ")
        text = "".join(c if c.isprintable() else "?" for c in text)
        width = self._width()
        return text if len(text) <= width else "\u2026" + text[-(width - 1):]  # …tail

    def put_hypotheses(self, row: int, token_ids: list[int], first_changed: int) -> None:
        if row != self.row:
            return
        self.text = self._decode(list(token_ids))
        if self.live:
            self.stream.write("\r\x1b[K" + self._line())  # back to column 0, erase the line, redraw
            self.stream.flush()
            self.shown = True

    def put(self, value) -> None:
        """HF's protocol: first the prompt ((B, T) or (T,) ids), then the final answer, which the last
        put_hypotheses call already carried."""
        if self.prompt is None:
            ids = value[self.row] if value.dim() == 2 else value
            self.prompt = self._decode(ids.tolist())

    def end(self) -> None:
        clear = "\r\x1b[K" if self.shown else ""
        prompt = "" if self.skip_prompt else self.prompt or ""
        self.stream.write(clear + prompt + self.text + "\n")
        self.stream.flush()
        self.prompt, self.text, self.shown = None, "", False
