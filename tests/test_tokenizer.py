"""Shipped SentencePiece tokenizer: lossless round trip, special ids, errors, HF stop-string use."""
import pytest
from hypothesis import given, settings, strategies as st

from models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


code_chars = st.sampled_from(["\t", "\n", "\r\n", " ", "    ", "\u2581", "\u2581\u2581", "é", "漢", "😀", "\x00",
                              "def ", "):\n", "'''", "self.", "#", "\\"])


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text, bos=True)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(code_chars, min_size=1, max_size=40).map("".join))
def test_round_trip_whitespace_and_meta_symbol(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_source_file(tok):
    import textwrap
    src = open(textwrap.__file__, encoding="utf-8").read()
    ids = tok.encode(src)
    assert tok.decode(ids) == src
    assert len(src) / len(ids) > 2.5  # BPE learned code: well above one byte per token


def test_special_tokens(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.vocab_size == len(tok) == 4096
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
    ids = tok.encode("x = 1", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.bos_id not in ids[1:-1]
    assert tok.decode(ids) == "x = 1"  # specials decode to nothing
    assert tok.batch_decode([ids, ids[:-1]]) == ["x = 1", "x = 1"]
    assert tok.token_bytes()[tok.bos_id] == 0 and tok.token_bytes()[4] == 1  # <0x00> is one byte


def test_empty_and_bad_input(tok):
    with pytest.raises(ValueError, match="empty"):
        tok.encode("")
    assert tok.encode("", bos=True) == [tok.bos_id]
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    assert tok.decode([]) == ""


def test_hf_stop_strings_accept_it(tok):
    import torch
    from transformers.generation.stopping_criteria import StopStringCriteria

    crit = StopStringCriteria(tok, ["\n\n"])
    ids = tok.encode("def f():\n    return 1\n\n", bos=True)
    done = crit(torch.tensor([ids]), None)
    not_done = crit(torch.tensor([tok.encode("def f():\n    return 1", bos=True)]), None)
    assert done.tolist() == [True] and not_done.tolist() == [False]
