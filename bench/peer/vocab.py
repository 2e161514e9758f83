"""A token list for the exported models: llama.cpp needs one inside the GGUF and CTranslate2 in its
model directory, although the bench feeds both token ids directly.

The shipped tokenizer gives the real pieces; other vocabularies get special tokens, the 256 byte
pieces when they fit (llama.cpp's SPM vocabulary looks up the newline byte) and placeholders.
"""
from __future__ import annotations

from dataclasses import dataclass

# gguf.TokenType values, repeated here so this module needs no optional package
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
SPECIAL = {0: ("<unk>", UNKNOWN), 1: ("<s>", CONTROL), 2: ("</s>", CONTROL), 3: ("<pad>", CONTROL)}


@dataclass
class Vocab:
    pieces: list[str]
    scores: list[float]
    types: list[int]
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 3

    def __len__(self) -> int:
        return len(self.pieces)


def shipped(path=None) -> Vocab:
    """The pieces, scores and kinds of the shipped SentencePiece model."""
    import sentencepiece as spm
    from models.tokenizer import SHIPPED
    sp = spm.SentencePieceProcessor(model_file=str(path or SHIPPED))
    n = sp.get_piece_size()
    kinds = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i) else NORMAL
             for i in range(n)]
    return Vocab([sp.id_to_piece(i) for i in range(n)], [sp.get_score(i) for i in range(n)], kinds,
                 sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())


def placeholder(size: int) -> Vocab:
    """unk, bos, eos, pad at 0-3, then byte pieces while they fit, then '▁t<id>'."""
    if size < len(SPECIAL) + 1:
        raise ValueError(f"vocab size {size} is too small for a placeholder vocabulary (need > {len(SPECIAL)})")
    pieces, types = zip(*(SPECIAL[i] for i in range(len(SPECIAL))))
    pieces, types = list(pieces), list(types)
    n_bytes = 256 if size >= len(SPECIAL) + 256 + 1 else 0
    pieces += [f"<0x{b:02X}>" for b in range(n_bytes)]
    types += [BYTE] * n_bytes
    rest = range(len(pieces), size)
    pieces += [f"\u2581t{i}" for i in rest]
    types += [NORMAL] * len(rest)
    return Vocab(pieces, [0.0] * len(SPECIAL) + [0.0] * n_bytes + [-float(i) for i in rest], types)


def for_model(vocab_size: int, use_shipped: bool) -> Vocab:
    vocab = shipped() if use_shipped else placeholder(vocab_size)
    if len(vocab) != vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab)} pieces but the model's vocab_size is {vocab_size}")
    return vocab
