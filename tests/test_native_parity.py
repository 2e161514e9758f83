"""Native decoder vs Hugging Face on identical weights (the oracle is HF's own forward)."""
import pytest
import torch

from hf_tiny import hf_positions, left_pad, tiny
from models.hf_weights import from_hf, to_hf

ATOL = 1e-4
ROWS = [[5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7], [11, 4, 90, 2], [6, 55, 21, 19, 30, 44, 70]]


def hf_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits


def native_logits(model, ids, mask, chunks=(None,)):
    """Feed the padded batch in one forward, or split into prefill + several decode chunks."""
    cache = model.new_cache(ids.shape[0], 64)
    outs, start = [], 0
    with torch.no_grad():
        for end in list(chunks[:-1]) + [ids.shape[1]]:
            outs.append(model(ids[:, start:end], cache, attention_mask=mask[:, start:end]))
            start = end
    return torch.cat(outs, 1)


@pytest.mark.parametrize("family,overrides", [
    ("llama", {}), ("llama", {"num_key_value_heads": 4}), ("llama", {"num_key_value_heads": 1}),
    ("llama", {"tie_word_embeddings": True, "rope_theta": 500000.0}),
    ("qwen2", {}), ("mistral", {}), ("mistral", {"sliding_window": 4}),
])
def test_logits_match_hf_batched_left_padded(family, overrides):
    hf = tiny(family, **overrides)
    model = from_hf(hf).eval()
    ids, mask = left_pad(ROWS)
    ref = hf_logits(hf, ids, mask)
    out = native_logits(model, ids, mask)
    real = mask.bool()
    assert torch.allclose(out[real], ref[real], atol=ATOL), (out[real] - ref[real]).abs().max()


def test_qwen2_bias_is_used():
    hf = tiny("qwen2")
    with torch.no_grad():
        hf.model.layers[0].self_attn.q_proj.bias.normal_(0, 1.0)
    model = from_hf(hf)
    ids = torch.tensor([ROWS[0]])
    ref = hf(ids).logits
    assert torch.allclose(model(ids, model.new_cache(1, 32)), ref, atol=ATOL)


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("mistral", {"sliding_window": 3}), ("qwen2", {})])
def test_incremental_decode_equals_full_forward(family, overrides):
    hf = tiny(family, **overrides)
    model = from_hf(hf)
    ids, mask = left_pad(ROWS)
    full = native_logits(model, ids, mask)
    T = ids.shape[1]
    steps = native_logits(model, ids, mask, chunks=(T - 5, T - 4, T - 2, T - 1, None))
    real = mask.bool()
    assert torch.allclose(steps[real], full[real], atol=ATOL)
    assert torch.allclose(model.forward_train(ids[:1]), full[:1], atol=ATOL)  # row 0 has no pads


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_export_to_hf_llama_equals_native(kv_heads):
    model = from_hf(tiny("llama", num_key_value_heads=kv_heads, seed=3))
    hf = to_hf(model)
    ids, mask = left_pad(ROWS)
    ref = hf_logits(hf, ids, mask)
    out = native_logits(model, ids, mask)
    real = mask.bool()
    assert torch.allclose(out[real], ref[real], atol=ATOL)


def test_export_qwen2_bias_roundtrip():
    model = from_hf(tiny("qwen2"))
    ids = torch.tensor([ROWS[2]])
    assert torch.allclose(to_hf(model)(ids).logits, model(ids, model.new_cache(1, 16)), atol=ATOL)


def test_export_refuses_window():
    model = from_hf(tiny("mistral", sliding_window=4))
    with pytest.raises(ValueError, match="sliding window"):
        to_hf(model)


def test_import_refuses_unknown_family():
    with pytest.raises(ValueError, match="model_type"):
        from_hf(tiny("gpt2"))


def test_load_from_directory_and_native_checkpoint_roundtrip(tmp_path):
    from models import checkpoint
    hf = tiny("llama")
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model = checkpoint.load(tmp_path / "hf")
    ids = torch.tensor([ROWS[1]])
    ref = hf(ids).logits
    assert torch.allclose(model(ids, model.new_cache(1, 8)), ref, atol=ATOL)
    checkpoint.save(model, tmp_path / "native")
    again = checkpoint.load(tmp_path / "native")
    assert torch.allclose(again(ids, again.new_cache(1, 8)), ref, atol=ATOL)
    assert not list((tmp_path / "native").glob("*.bin")) and not list((tmp_path / "native").glob("*.pt"))
