"""Stop strings, as HF's StopStringCriteria decides them: a row stops at the token inside which
a stop string ends, the string possibly starting in earlier tokens (the prompt's included).

Each token's text is what it adds when decoded after a fixed prefix (so SentencePiece's leading
"▁" and byte-level "Ġ" become spaces), cached per id. Checking runs on the host, over the last
few tokens of the rows that are still running; it costs nothing when no stop strings are given.
"""
from __future__ import annotations

_PREFIX = "abcdef"


class StopStrings:
    def __init__(self, stop_strings, tokenizer):
        self.strings = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
        self.tokenizer = tokenizer
        # every token adds >= 1 character (as HF assumes), so this many tokens cover any match
        self.window = max(map(len, self.strings))
        self._base = self._encode(_PREFIX)
        self._base_text = self._decode(self._base)
        self._text: dict[int, str] = {}

    def _encode(self, text: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return list(self.tokenizer.encode(text))

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        except TypeError:
            return self.tokenizer.decode(ids)

    def token_text(self, token: int) -> str:
        text = self._text.get(token)
        if text is None:
            full = self._decode(self._base + [token])
            text = full[len(self._base_text):] if full.startswith(self._base_text) else self._decode([token])
            self._text[token] = text
        return text

    def first_stop(self, context: list[int], new: int) -> int | None:
        """Index among the last `new` ids of `context` of the first token inside which a stop
        string ends, or None. `context` holds the row's real tokens, oldest first."""
        n = len(context)
        for j in range(n - new, n):
            last = self.token_text(context[j])
            if not last:
                continue
            text = "".join(self.token_text(t) for t in context[max(0, j + 1 - self.window):j + 1])
            for s in self.strings:
                # an occurrence whose last character lies in the last token starts at or after this
                if text.find(s, max(0, len(text) - len(last) - len(s) + 1)) >= 0:
                    return j - (n - new)
        return None
