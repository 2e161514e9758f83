"""The shipped blockwise heads belong to the shipped target: models/shipped/heads (hydra heads, the
default for it and only for it) and models/shipped/heads_independent (the paper's independent heads).
Their configs name the target, and blockwise decoding with either is token-identical to greedy in
fp32 while it takes fewer target forwards."""
import json

import pytest
import torch

import decoding
from models.artifacts import SHIPPED
from models.checkpoint import load
from models.heads import is_shipped_target, load_heads
from models.tokenizer import Tokenizer

torch.set_num_threads(1)
CODE = ["def fibonacci(n):\n    if n < 2:\n        return n\n",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"]


@pytest.fixture(scope="module")
def target():
    return load(SHIPPED / "target", dtype=torch.float32)


@pytest.mark.parametrize("name, kind", [("heads", "hydra"), ("heads_independent", "independent")])
def test_shipped_heads_match_the_shipped_target(target, name, kind):
    cfg = json.loads((SHIPPED / name / "heads.json").read_text())
    c = target.config
    assert (cfg["target_vocab_size"], cfg["target_dim"], cfg["target_n_layers"]) == (c.vocab_size, c.dim, c.n_layers)
    heads = load_heads(SHIPPED / name, target)
    assert heads.config.kind == kind
    assert heads.k == cfg["k"] and heads.dim == c.dim and heads.w1.dtype == torch.float32
    assert is_shipped_target(target)
    assert is_shipped_target(load(SHIPPED / "target", dtype=torch.float16))  # as stored


def test_default_heads_are_exact_and_save_forwards(target):
    tok = Tokenizer.load()
    rows = [tok.encode(t) for t in CODE]
    kw = dict(max_new_tokens=40)  # the model's own eos (2) and pad (3)
    ref = decoding.generate(target, rows, **kw)
    out = decoding.generate(target, rows, strategy="blockwise", **kw)  # heads: the shipped ones
    assert torch.equal(out.sequences, ref.sequences)
    s = out.stats
    assert s.tau > 1.2 and s.target_forwards < ref.stats.target_forwards, s
    assert len(s.accept_rate_by_position) == 6
    paper = decoding.generate(target, rows, strategy="blockwise", heads=SHIPPED / "heads_independent", **kw)
    assert torch.equal(paper.sequences, ref.sequences)
    assert paper.stats.target_forwards < ref.stats.target_forwards


def test_other_weights_get_no_default_heads(target):
    other = load(SHIPPED / "target", dtype=torch.float32)
    with torch.no_grad():
        other.embed.weight.mul_(1.1)  # same config, different weights
    assert not is_shipped_target(other)
    with pytest.raises(ValueError, match="needs heads=PATH"):
        decoding.generate(other, [[5, 6, 7]], strategy="blockwise", max_new_tokens=2)
    out = decoding.generate(other, [[5, 6, 7]], strategy="blockwise", heads=SHIPPED / "heads", max_new_tokens=2)
    assert out.sequences.shape == (1, 5)  # explicit heads: the caller's choice
