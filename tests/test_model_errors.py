"""Bad input to the model and cache fails with a clear error before any work is done."""
import pytest
import torch

from models import DecoderConfig, LlamaDecoder

CFG = DecoderConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=1, max_seq_len=32)


@pytest.fixture
def model():
    return LlamaDecoder(CFG).eval()


def untouched(cache):
    return cache.lengths.sum().item() == 0


def test_token_id_outside_vocab(model):
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 50]]), cache)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 3]]), cache)
    assert untouched(cache)


def test_wrong_dtype_and_shape(model):
    cache = model.new_cache(1, 8)
    with pytest.raises(TypeError, match="torch.long"):
        model(torch.tensor([[1.0, 2.0]]), cache)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.tensor([1, 2]), cache)
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="rows"):
        model(torch.tensor([[1], [2]]), cache)
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[1, 2]]), cache, attention_mask=torch.ones(1, 3))
    assert untouched(cache)


def test_lengths_past_capacity(model):
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="capacity"):
        model(torch.tensor([[1, 2, 3, 4, 5]]), cache)
    assert untouched(cache)
    model(torch.tensor([[1, 2, 3]]), cache)
    with pytest.raises(ValueError, match="capacity"):
        model(torch.tensor([[1, 2]]), cache)
    assert cache.lengths.tolist() == [3]
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, 33)


def test_bad_cache_indices(model):
    cache = model.new_cache(2, 4)
    with pytest.raises(IndexError, match="index"):
        cache.reorder(torch.tensor([0, 2]))
    with pytest.raises(IndexError, match="index"):  # the low bound, read back with the high one
        cache.reorder(torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="select"):
        cache.reorder(torch.tensor([0]))
    with pytest.raises(ValueError, match="repeat"):
        cache.repeat(0)


def test_bad_config():
    with pytest.raises(ValueError, match="n_kv_heads"):
        DecoderConfig(vocab_size=10, dim=32, n_layers=1, n_heads=4, n_kv_heads=3)
