"""SentencePiece BPE tokenizer for Python source, lossless on any text.

Settings (why): identity normalizer, no dummy prefix, no whitespace collapsing (code is
whitespace-sensitive); byte fallback (any character survives); split_by_whitespace=False and
whitespace-only pieces allowed, so BPE learns indentation runs and pieces like '):\n' itself
(3.48 chars/token on validation, against 3.23 with '\n' or indent runs as user-defined pieces).
SentencePiece writes spaces as U+2581 '▁', so a literal '▁' in the input would decode as a space:
`encode` sends it as its three byte-fallback pieces instead, which decode back to '▁'.

Special ids: unk 0, bos 1, eos 2, pad 3 (pad is not 0, so HF's "pad 0 is falsy" beam quirk does not
apply); bytes <0x00>..<0xFF> are 4..259. Retrain with `python -m models.training.corpus --train-tokenizer`;
the trainer settings are also stored inside the .model file (its trainer_spec).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

try:
    import sentencepiece as spm
except ImportError:  # a GPU image may lack it: training then reads ids and byte lengths from data/meta.json
    spm = None

from . import artifacts

SHIPPED = artifacts.SHIPPED / "tokenizer.model"
META = "\u2581"
TRAINER = dict(
    model_type="bpe", vocab_size=4096, byte_fallback=True, normalization_rule_name="identity",
    add_dummy_prefix=False, remove_extra_whitespaces=False, split_by_whitespace=False,
    allow_whitespace_only_pieces=True, character_coverage=0.9999, max_sentence_length=16384,
    unk_id=0, bos_id=1, eos_id=2, pad_id=3, input_sentence_size=0, shuffle_input_sentence=False,
    num_threads=1,  # one thread: the merge order cannot depend on scheduling
    minloglevel=2,
)


def _chunks(text: str, size: int = 2000) -> list[str]:
    """Whole lines up to ~size chars: SentencePiece trains on bounded 'sentences'."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if cur:
        out.append("".join(cur))
    return out


def train_tokenizer(texts: Iterable[str], path: str | Path = SHIPPED, **overrides) -> Path:
    """Train on all of `texts` (in the given order; deterministic) and write the .model file."""
    sentences = [c for t in texts for c in _chunks(t)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, **{**TRAINER, **overrides})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


class Tokenizer:
    """encode/decode plus the few HF tokenizer methods that `stop_strings` handling calls."""

    def __init__(self, sp: spm.SentencePieceProcessor):
        self.sp = sp
        self.vocab_size = sp.get_piece_size()
        self.unk_id, self.bos_id, self.eos_id, self.pad_id = sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()
        self._meta_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in META.encode()]
        self._special = {self.unk_id, self.bos_id, self.eos_id, self.pad_id} - {-1}

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Tokenizer":
        path = Path(path) if path is not None else SHIPPED
        if spm is None:
            raise ImportError("the sentencepiece package is needed to load the tokenizer")
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}")
        return cls(spm.SentencePieceProcessor(model_file=str(path)))

    # ids

    def encode(self, text: str, bos: bool = False, eos: bool = False, *,
               add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of `text`. Empty text without bos is an error: it would be an empty prompt.
        add_special_tokens (HF's name) means bos."""
        if add_special_tokens is not None:
            bos = add_special_tokens
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if not text and not bos:
            raise ValueError("cannot encode empty text: a prompt needs at least one token (pass bos=True)")
        ids = [self.bos_id] if bos else []
        parts = text.split(META)
        for i, part in enumerate(parts):
            if i:
                ids += self._meta_bytes
            if part:
                ids += self.sp.encode(part)
        return ids + [self.eos_id] if eos else ids

    def decode(self, ids, skip_special_tokens: bool = True, **_) -> str:
        """Text of `ids` (list, tensor or array). Special tokens decode to '' (SentencePiece)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        ids = [ids] if isinstance(ids, int) else list(ids)  # one id, as HF (TextStreamer decodes one at a newline)
        if ids and isinstance(ids[0], list):
            raise TypeError("decode takes one sequence; use batch_decode for a batch")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        return self.sp.decode(ids)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kw) -> list[str]:
        seqs = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(s, skip_special_tokens, **kw) for s in seqs]

    # HF-tokenizer surface (pieces are SentencePiece's, with '▁' for a space)

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.sp.id_to_piece(ids)
        return [self.sp.id_to_piece(int(i)) for i in ids]

    _convert_id_to_token = convert_ids_to_tokens

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return self.sp.decode_pieces(list(tokens))

    def get_vocab(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}

    def __call__(self, text, add_special_tokens: bool = True, **_) -> dict:
        one = lambda t: self.encode(t, bos=add_special_tokens) if t or add_special_tokens else []  # noqa: E731
        return {"input_ids": one(text) if isinstance(text, str) else [one(t) for t in text]}

    def __len__(self) -> int:
        return self.vocab_size

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id stands for (specials 0): turns nats per token into bits per byte."""
        out = []
        for i in range(self.vocab_size):
            piece = self.sp.id_to_piece(i)
            if i in self._special or self.sp.is_control(i) or self.sp.is_unknown(i):
                out.append(0)
            elif self.sp.is_byte(i):
                out.append(1)
            else:
                out.append(len(piece.replace(META, " ").encode()))
        return out
