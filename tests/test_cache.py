"""Cache operations against a reference built by re-running full forwards."""
import pytest
import torch

from models import DecoderConfig, LlamaDecoder, StaticCache

CFG = DecoderConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = LlamaDecoder(CFG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def full_last_logits(model, rows):
    """Logits of each row's last token from a fresh full forward of that row alone."""
    out = []
    for r in rows:
        cache = model.new_cache(1, 64)
        out.append(model(torch.tensor([r]), cache)[0, -1])
    return torch.stack(out)


@torch.no_grad()
def test_truncate_per_row_then_redecode_equals_never_decoded(model):
    rows = [[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    cache = model.new_cache(2, 32)
    model(torch.tensor(rows), cache)
    model(torch.tensor([[20, 21, 22], [30, 31, 32]]), cache)  # speculative junk
    cache.truncate(torch.tensor([3, 1], dtype=torch.int32))  # row 0 keeps none of it, row 1 keeps 2
    assert cache.lengths.tolist() == [6, 8]
    # next real tokens: row 0 gets 40, row 1 gets 41 (after its kept 30, 31)
    out = model(torch.tensor([[40], [41]]), cache)[:, -1]
    ref = full_last_logits(model, [rows[0] + [40], rows[1] + [30, 31, 41]])
    assert torch.allclose(out, ref, atol=1e-5)


@torch.no_grad()
def test_truncate_int_and_bad_counts(model):
    cache = model.new_cache(2, 16)
    model(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache)
    cache.truncate(2)
    assert cache.lengths.tolist() == [1, 1]
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(2)


@torch.no_grad()
def test_reorder_repeat_select_move_rows(model):
    rows = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    from hf_tiny import left_pad
    ids, mask = left_pad(rows)
    cache = model.new_cache(3, 16)
    model(ids, cache, attention_mask=mask)
    nxt = torch.tensor([[11], [12], [13]])

    c = _clone(cache); c.reorder(torch.tensor([2, 0, 1]))
    out = model(nxt, c)[:, -1]
    perm = [rows[2], rows[0], rows[1]]
    assert torch.allclose(out, full_last_logits(model, [r + [t] for r, t in zip(perm, [11, 12, 13])]), atol=1e-5)

    c = _clone(cache); c.repeat(2)
    assert c.batch_size == 6 and c.lengths.tolist() == [3, 3, 4, 4, 2, 2]
    nxt6 = torch.arange(20, 26)[:, None]
    out = model(nxt6, c)[:, -1]
    rep = [rows[i // 2] + [20 + i] for i in range(6)]
    assert torch.allclose(out, full_last_logits(model, rep), atol=1e-5)

    c = _clone(cache); c.select(torch.tensor([1]))
    out = model(torch.tensor([[15]]), c)[:, -1]
    assert torch.allclose(out, full_last_logits(model, [rows[1] + [15]]), atol=1e-5)


def _clone(cache: StaticCache) -> StaticCache:
    c = StaticCache(0, cache.batch_size, 1, 1, 1)
    c.k, c.v, c.lengths = [t.clone() for t in cache.k], [t.clone() for t in cache.v], cache.lengths.clone()
    return c


@pytest.mark.parametrize("kv_heads,dtype", [(4, torch.float32), (2, torch.float16), (1, torch.bfloat16)])
def test_nbytes_formula(kv_heads, dtype):
    cfg = DecoderConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=kv_heads, max_seq_len=128)
    cache = LlamaDecoder(cfg).new_cache(5, 100, dtype=dtype)
    bytes_per = torch.tensor([], dtype=dtype).element_size()
    assert cache.nbytes() == 2 * 3 * 5 * kv_heads * 100 * cfg.head_dim * bytes_per


def test_nan_past_length_does_not_leak(model):
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache)
        for buf in cache.k + cache.v:
            buf[:, :, 3:] = float("nan")
        out = model(torch.tensor([[4]]), cache)[:, -1]
    assert torch.isfinite(out).all()
    assert torch.allclose(out, full_last_logits(model, [[1, 2, 3, 4]]), atol=1e-5)
