"""YOCO decoder-decoder: cached decode against the cache-free forward of each row alone, prefill
early exit, exact rollback of the window state, row operations, KV bytes, errors, checkpoints."""
import pytest
import torch

from hf_tiny import left_pad
from models import DecoderConfig, LlamaDecoder, StaticCache, checkpoint
from models.yoco import YOCOConfig, YOCODecoder, yoco_zoo_config

# window 4 + rollback 3 = a 7-slot ring: the sequences below wrap it several times
CFG = YOCOConfig(vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, window=4, max_rollback=3,
                 max_seq_len=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = YOCODecoder(CFG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)  # larger than init so every layer moves the logits
    return m


def oracle(model, seq):
    """Logits (len, V) of one row alone through the cache-free training forward."""
    return model.forward_train(torch.tensor([seq]))[0]


def last_logits(model, rows):
    return torch.stack([oracle(model, r)[-1] for r in rows])


def step(model, cache, seqs, new_rows, **kw):
    """Feed each row its new tokens (left-padded when ragged); check every real logit against the oracle."""
    ids, mask = left_pad(new_rows)
    out = model(ids, cache, attention_mask=mask if not bool(mask.all()) else None, **kw)
    for b, new in enumerate(new_rows):
        seqs[b] += new
        got = out[b, mask[b, -out.shape[1]:].bool()]
        want = oracle(model, seqs[b])[-got.shape[0]:] if got.shape[0] else got
        assert torch.allclose(got, want, atol=1e-4), (b, (got - want).abs().max())
    return out


@pytest.mark.parametrize("chunk", [256, 3])
@torch.no_grad()
def test_incremental_decode_matches_training_forward(model, chunk):
    model.prefill_chunk = chunk  # 3: the windowed prefill runs in several query chunks
    try:
        g = torch.Generator().manual_seed(1)
        tok = lambda n: torch.randint(0, 64, (n,), generator=g).tolist()
        seqs = [[], [], []]
        cache = model.new_cache(3, 48)
        step(model, cache, seqs, [tok(11), tok(3), tok(8)])  # ragged prefill, left-padded
        for _ in range(3):
            step(model, cache, seqs, [tok(1), tok(1), tok(1)])
        step(model, cache, seqs, [tok(3), tok(3), tok(3)])  # multi-token step (verification)
        step(model, cache, seqs, [tok(2), tok(6), tok(1)])  # ragged multi-token step
        step(model, cache, seqs, [tok(1), tok(1), tok(1)], logits_to_keep=1)
        assert cache.lengths.tolist() == [len(s) for s in seqs]
    finally:
        model.prefill_chunk = 256


@torch.no_grad()
def test_early_exit_prefill_same_logits_and_greedy_continuation(model):
    rows = [[5, 9, 2, 7, 1, 3, 3, 8, 12, 40], [17, 4, 4, 60, 2]]
    ids, mask = left_pad(rows)
    seen = []
    hook = model.cross_layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    try:
        full, early = model.new_cache(2, 32), model.new_cache(2, 32)
        ref = model(ids, full, attention_mask=mask)[:, -1]
        out = model(ids, early, attention_mask=mask, logits_to_keep=1)[:, -1]
    finally:
        hook.remove()
    assert seen == [ids.shape[1], 1]  # the cross-decoder ran over 1 token, not the whole prompt
    assert torch.allclose(out, ref, atol=1e-5)

    def greedy(cache, logits, n=8):  # the protocol only: forward + argmax
        toks = []
        for _ in range(n):
            nxt = logits.argmax(-1, keepdim=True)
            toks.append(nxt)
            logits = model(nxt, cache, logits_to_keep=1)[:, -1]
        return torch.cat(toks, 1)

    assert torch.equal(greedy(early, out), greedy(full, ref))


@torch.no_grad()
def test_rollback_per_row_then_redecode_equals_never_decoded(model):
    rows = [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20, 21]]
    ids, mask = left_pad(rows)
    cache = model.new_cache(2, 32)
    model(ids, cache, attention_mask=mask)
    model(torch.tensor([[30, 31, 32], [40, 41, 42]]), cache)  # speculative junk
    cache.truncate(torch.tensor([3, 1], dtype=torch.int32))  # max_rollback for row 0, 1 for row 1
    out = model(torch.tensor([[50], [51]]), cache)[:, -1]
    kept = [rows[0] + [50], rows[1] + [40, 41, 51]]
    assert torch.allclose(out, last_logits(model, kept), atol=1e-4)

    # two rollbacks with a write between: the slack counts from the high-water length
    model(torch.tensor([[60, 61], [62, 63]]), cache)  # rows at 13, 14 (high 13, 14)
    cache.truncate(2)
    model(torch.tensor([[54], [55]]), cache)
    cache.truncate(torch.tensor([1, 2], dtype=torch.int32))  # row 1: 3 below its high water
    out = model(torch.tensor([[56], [57]]), cache)[:, -1]
    assert torch.allclose(out, last_logits(model, [kept[0] + [56], kept[1][:-1] + [57]]), atol=1e-4)

    before = cache.lengths.clone()
    with pytest.raises(ValueError, match="max_rollback=3"):
        cache.truncate(torch.tensor([0, 3], dtype=torch.int32))  # row 1: high 14, would go to 9
    with pytest.raises(ValueError, match="max_rollback"):
        cache.truncate(4)
    with pytest.raises(ValueError, match=r"must lie in \[0, length\]"):  # out of range: that error first
        cache.truncate(torch.tensor([0, 99], dtype=torch.int32))
    assert torch.equal(cache.lengths, before)  # refused before any change


@torch.no_grad()
def test_reorder_repeat_select_move_rows(model):
    rows = [[1, 2, 3, 4, 5, 6, 7, 8], [4, 5, 6, 7], [8, 9]]
    ids, mask = left_pad(rows)

    def prefilled():
        c = model.new_cache(3, 16)
        model(ids, c, attention_mask=mask)
        return c

    c = prefilled(); c.reorder(torch.tensor([2, 0, 1]))
    out = model(torch.tensor([[11], [12], [13]]), c)[:, -1]
    assert torch.allclose(out, last_logits(model, [rows[2] + [11], rows[0] + [12], rows[1] + [13]]), atol=1e-4)

    c = prefilled(); c.repeat(2)
    assert c.batch_size == 6 and c.lengths.tolist() == [8, 8, 4, 4, 2, 2]
    out = model(torch.arange(20, 26)[:, None], c)[:, -1]
    assert torch.allclose(out, last_logits(model, [rows[i // 2] + [20 + i] for i in range(6)]), atol=1e-4)

    c = prefilled(); c.select(torch.tensor([0]))
    out = model(torch.tensor([[15]]), c)[:, -1]
    assert torch.allclose(out, last_logits(model, [rows[0] + [15]]), atol=1e-4)
    with pytest.raises(IndexError, match="index"):
        c.reorder(torch.tensor([1]))


def test_kv_bytes_formula():
    B, n_self, ring = 2, CFG.n_layers // 2, CFG.window + CFG.max_rollback
    per_token = 2 * B * CFG.n_kv_heads * CFG.head_dim * 4  # one K and one V, fp32
    yoco = YOCODecoder(CFG)
    for n in (8, 16, 64):  # one K/V per token plus a constant window state
        assert yoco.new_cache(B, n).nbytes() == per_token * (n + n_self * ring)
    width = dict(vocab_size=64, dim=32, n_layers=CFG.n_layers, n_heads=4, max_seq_len=64)
    gqa = LlamaDecoder(DecoderConfig(**width, n_kv_heads=CFG.n_kv_heads)).new_cache(B, 64)
    assert gqa.nbytes() == CFG.n_layers * per_token * 64  # a decoder-only model stores L of them
    mha = LlamaDecoder(DecoderConfig(**width, n_kv_heads=4)).new_cache(B, 64)
    mqa = LlamaDecoder(DecoderConfig(**width, n_kv_heads=1)).new_cache(B, 64)
    assert isinstance(mqa, StaticCache) and mqa.nbytes() * 4 == mha.nbytes()


def test_bad_inputs_fail_before_any_work(model):
    cache = model.new_cache(1, 6)
    untouched = lambda: cache.lengths.sum() == 0 and cache.high.sum() == 0 and cache.ring_k[0].abs().sum() == 0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 64]]), cache)
    with pytest.raises(TypeError, match="torch.long"):
        model(torch.tensor([[1.0, 2.0]]), cache)
    with pytest.raises(ValueError, match="capacity"):
        model(torch.arange(7)[None], cache)
    with pytest.raises(TypeError, match="new_cache"):
        model(torch.tensor([[1]]), StaticCache(2, 1, 2, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        model(torch.tensor([[1]]), model.new_cache(1, 6, dtype=torch.float16))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(torch.tensor([[1, 2]]), cache, logits_to_keep=3)
    assert untouched()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, 65)
    with pytest.raises(ValueError, match="even"):
        YOCOConfig(vocab_size=8, dim=8, n_layers=3, n_heads=2)


@torch.no_grad()
def test_checkpoint_round_trip_and_zoo_size(model, tmp_path):
    checkpoint.save(model, tmp_path / "yoco")
    loaded = checkpoint.load(tmp_path / "yoco")  # dispatches on model_type "native_yoco"
    assert isinstance(loaded, YOCODecoder) and loaded.config == model.config
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    assert torch.equal(loaded.forward_train(ids), model.forward_train(ids))
    assert YOCODecoder(yoco_zoo_config(4096, 1, 2, 0)).num_parameters() <= 7_000_000
