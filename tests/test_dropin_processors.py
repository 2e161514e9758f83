"""decoding.hf_processors against HF's processor of the same name (the oracle), on random ids/scores."""
import torch
from transformers.generation.logits_process import (InfNanRemoveLogitsProcessor, NoBadWordsLogitsProcessor,
                                                    NoRepeatNGramLogitsProcessor, SequenceBiasLogitsProcessor)

from decoding.config import GenerationConfig
from decoding.hf_processors import Rules, SequenceBias, _bias_table, no_repeat_ngram, remove_invalid
from decoding.processors import Context

V = 12


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5, (6, 9), generator=g), torch.randn(6, V, generator=g)  # few ids: many repeats


def test_no_repeat_ngram_equals_hf():
    for seed in range(5):
        ids, scores = batch(seed)
        for n in (1, 2, 3, 10):
            assert torch.equal(no_repeat_ngram(scores, ids, n), NoRepeatNGramLogitsProcessor(n)(ids, scores.clone()))


def test_sequence_bias_and_bad_words_equal_hf():
    bias = [[[3], -2.5], [[1, 2], 4.0], [[0, 4, 1], 1.5], [[2, 2], -1.0]]
    bad = [[3], [1, 2], [4, 0, 2], [2]]
    for seed in range(5):
        ids, scores = batch(seed)
        ctx = Context(n_new=0, ids=lambda i=ids: i)
        ours = SequenceBias(_bias_table(bias), V, "cpu", "sequence_bias")(scores, ctx)
        torch.testing.assert_close(ours, SequenceBiasLogitsProcessor(bias)(ids, scores.clone()))
        rules = Rules(GenerationConfig(bad_words_ids=bad, eos_token_id=[2]), V, "cpu")  # a lone eos is never banned
        ours = Rules.apply(rules.middle, scores, ctx)
        assert torch.equal(ours, NoBadWordsLogitsProcessor(bad, eos_token_id=2)(ids, scores.clone()))
        singles = [[[3], -2.5], [[7], 1.0]]  # one-token sequences only: the bias broadcasts
        ours = SequenceBias(_bias_table(singles), V, "cpu", "sequence_bias")(scores, ctx)
        torch.testing.assert_close(ours, SequenceBiasLogitsProcessor(singles)(ids, scores.clone()))
        rules = Rules(GenerationConfig(bad_words_ids=[[3], [7]]), V, "cpu")
        ours = Rules.apply(rules.middle, scores, ctx)
        assert torch.equal(ours, NoBadWordsLogitsProcessor([[3], [7]])(ids, scores.clone()))


def test_remove_invalid_equals_hf():
    scores = torch.tensor([[0.5, float("nan"), float("inf"), -float("inf"), -3.0]])
    assert torch.equal(remove_invalid(scores), InfNanRemoveLogitsProcessor()(None, scores.clone()))
