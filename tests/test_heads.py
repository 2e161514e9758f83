"""Blockwise proposal heads (independent and hydra): training lowers the loss, files round-trip, target
checks, one-forward hidden states, cached training features, and the shipped size budget."""
import json

import numpy as np
import pytest
import torch

from models import DecoderConfig, LlamaDecoder
from models.checkpoint import save as save_target
from models.heads import (BlockwiseHeads, HeadsConfig, HydraHeads, build_heads, load_heads, save_heads,
                          target_forward_with_hidden)
from models.training.train_heads import greedy_continue, heads_loss, main as train_main

torch.set_num_threads(1)
MB4 = 4_000_000  # the budget for the shipped heads, read as decimal megabytes (stricter)


def tiny_target(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    cfg.update(kw)
    return LlamaDecoder(DecoderConfig(**cfg)).eval()


def test_forward_with_hidden_matches_forward_and_hidden_train():
    model = tiny_target()
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        ref_logits = model(ids, model.new_cache(2, 32))
        ref_hidden = model.hidden_train(ids)
        # prefill then a 3-token verify block, as a decoder would call it
        cache = model.new_cache(2, 32)
        l1, h1 = target_forward_with_hidden(model, ids[:, :8], cache)
        l2, h2 = target_forward_with_hidden(model, ids[:, 8:], cache)
    assert torch.allclose(torch.cat([l1, l2], 1), ref_logits, atol=1e-5)
    assert torch.allclose(torch.cat([h1, h2], 1), ref_hidden, atol=1e-5)
    assert torch.allclose(model.lm_head(h2), l2)  # the hidden is what the lm_head saw
    assert cache.lengths.tolist() == [11, 11]


def test_forward_with_hidden_left_padded_rows():
    model = tiny_target()
    ids = torch.randint(0, 64, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits, hidden = target_forward_with_hidden(model, ids, model.new_cache(2, 16), mask)
        short = model.hidden_train(ids[:1, 2:])
    assert torch.allclose(hidden[0, 2:], short[0], atol=1e-5)
    assert torch.allclose(logits, model(ids, model.new_cache(2, 16), attention_mask=mask), atol=1e-6)


def test_heads_shapes_and_init_follow_the_target():
    model = tiny_target()
    heads = BlockwiseHeads(32, k=3)
    h = model.hidden_train(torch.randint(0, 64, (2, 5)))
    logits = heads(h, model.lm_head)
    assert logits.shape == (2, 5, 3, 64)
    # zero second layer + unit norm: every head starts with the target's next-token argmax
    assert torch.equal(logits.argmax(-1), model.lm_head(h).argmax(-1)[..., None].expand(-1, -1, 3))


def test_first_k_heads_are_the_leading_heads():
    model = tiny_target()
    heads = BlockwiseHeads(32, 4)
    with torch.no_grad():
        heads.w2.normal_()
    h = model.hidden_train(torch.randint(0, 64, (1, 5)))
    assert torch.equal(heads.first(2)(h, model.lm_head), heads(h, model.lm_head)[:, :, :2])
    with pytest.raises(ValueError, match="1 <= k <= 4"):
        heads.first(5)


def test_save_load_round_trip(tmp_path):
    model = tiny_target()
    heads = BlockwiseHeads(32, 4, config=HeadsConfig.for_target(model, 4, hidden=16))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_()
    save_heads(heads, tmp_path, dtype=torch.float32)
    back = load_heads(tmp_path, model)
    assert back.config == heads.config
    for (n, a), (_, b) in zip(heads.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    h = model.hidden_train(torch.randint(0, 64, (1, 4)))
    assert torch.equal(back(h, model.lm_head), heads(h, model.lm_head))
    assert load_heads(heads, model) is heads  # a module passes through after the check


@pytest.mark.parametrize("change", [{"vocab_size": 80}, {"dim": 48}, {"n_layers": 3}])
def test_incompatible_target_is_a_clear_error(tmp_path, change):
    heads = BlockwiseHeads(32, 2, config=HeadsConfig.for_target(tiny_target(), 2))
    save_heads(heads, tmp_path)
    other = tiny_target(**change)
    with pytest.raises(ValueError, match="trained for a target with vocab_size=64, dim=32, n_layers=2"):
        load_heads(tmp_path, other)
    with pytest.raises(ValueError, match="this target has"):
        load_heads(heads, other)


def test_missing_heads_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a heads directory"):
        load_heads(tmp_path, tiny_target())


@pytest.mark.parametrize("dim", [256, 320, 384])
def test_shipped_heads_fit_4mb_in_fp16(tmp_path, dim):
    """Default HeadsConfig for a 4096-token target with k = 4, measured on the written file."""
    cfg = HeadsConfig(k=4, dim=dim, target_vocab_size=4096, target_dim=dim, target_n_layers=8)
    heads = BlockwiseHeads(dim, 4, config=cfg)
    assert sum(p.numel() for p in heads.parameters()) == cfg.num_parameters()
    save_heads(heads, tmp_path)  # fp16 by default
    size = (tmp_path / "heads.safetensors").stat().st_size
    assert 2 * cfg.num_parameters() <= size <= MB4, size


def assert_resume_is_exact(tmp_path, model, common):
    """25 steps, stop, resume for the rest (40 in all): the same heads as the uninterrupted run in tmp_path/a."""
    args_b = common + ["--out", str(tmp_path / "b"), "--state", str(tmp_path / "sb")]
    assert train_main(args_b + ["--max-steps", "25"])["stopped_by"] == "max_steps"
    assert train_main(args_b + ["--resume"])["steps"] == 40
    a, b = load_heads(tmp_path / "a", model), load_heads(tmp_path / "b", model)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def _corpus_file(tmp_path, model, n=6000):
    """Tokens with structure a tiny model can pick up: the target's own greedy text from random prompts."""
    torch.manual_seed(1)
    seq = greedy_continue(model, torch.randint(0, 64, (50, 4)), 120)
    path = tmp_path / "tokens.npy"
    np.save(path, seq.flatten()[:n].numpy().astype(np.uint16))
    return path


@pytest.mark.parametrize("data", ["distill", "corpus"])
def test_training_lowers_loss_and_resume_is_exact(tmp_path, data):
    model = tiny_target()
    save_target(model, tmp_path / "target")
    tok = _corpus_file(tmp_path, model)
    common = ["--target", str(tmp_path / "target"), "--k", "3", "--data", data, "--tokens-file", str(tok),
              "--device", "cpu", "--batch", "8", "--seq", "24", "--prompt-len", "8", "--gen-len", "24",
              "--pool-rows", "16", "--eval-rows", "8", "--eval-gen-len", "16", "--tokens", str(40 * 8 * 24),
              "--lr", "1e-2", "--max-seconds", "0"]
    log = train_main(common + ["--out", str(tmp_path / "a"), "--state", str(tmp_path / "sa")])
    assert log["steps"] == 40 and log["stopped_by"] == "tokens"

    # the oracle: the same loss function on held-out rows, untrained heads (same seed) vs trained
    torch.manual_seed(0)
    fresh = BlockwiseHeads(32, 3, config=HeadsConfig.for_target(model, 3))
    trained = load_heads(tmp_path / "a", model)
    seq = greedy_continue(model, torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(5)), 24)
    with torch.no_grad():
        before, after = heads_loss(model, fresh, seq, 7), heads_loss(model, trained, seq, 7)
    assert after < 0.8 * before, (before, after)
    saved = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert len(saved["eval"]["head_top1"]) == 3 and saved["eval"]["target_self_agreement"] == 1.0

    assert_resume_is_exact(tmp_path, model, common)


# -- hydra heads ---------------------------------------------------------------------------------------
def random_hydra(model, k=3, seed=2):
    heads = build_heads(HeadsConfig.for_target(model, k, hidden=48, kind="hydra"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return heads


def test_hydra_sequential_guesses_equal_teacher_forcing_on_their_own_guesses():
    """What blockwise decoding runs (propose: each head reads the previous guess) and what training
    runs (train_logits on a token window) are the same function: feeding the guesses back as the
    window reproduces them, and each head's logits depend on the tokens before it."""
    model = tiny_target()
    heads = random_hydra(model, k=4)
    with torch.no_grad():
        hidden = model.hidden_train(torch.randint(0, 64, (3, 6)))[:, -1]  # (3, dim)
        first = torch.tensor([5, 17, 40])
        guess = heads.propose(hidden, first, model, lambda j, logits, g: logits.argmax(-1))
        window = torch.cat([first[:, None], guess[:, :-1]], 1)[:, None]  # (3, 1, k)
        logits = heads.train_logits(hidden[:, None], window, model)[:, 0]  # (3, k, V)
        assert torch.equal(logits.argmax(-1), guess)
        other = heads.train_logits(hidden[:, None], (window + 1) % 64, model)[:, 0]
    assert not torch.allclose(other, logits)  # hydra heads read their input tokens
    with pytest.raises(ValueError, match="kind='hydra'"):
        HydraHeads(HeadsConfig(k=2, dim=32))


def test_hydra_first_k_and_round_trip(tmp_path):
    model = tiny_target()
    heads = random_hydra(model, k=4)
    h = model.hidden_train(torch.randint(0, 64, (2, 5)))
    window = torch.randint(0, 64, (2, 5, 4))
    with torch.no_grad():
        full = heads.train_logits(h, window, model)
        assert torch.equal(heads.first(2).train_logits(h, window[..., :2], model), full[:, :, :2])
    cfg = heads.config
    assert sum(p.numel() for p in heads.parameters()) == cfg.num_parameters()
    save_heads(heads, tmp_path, dtype=torch.float32)
    back = load_heads(tmp_path, model)
    assert isinstance(back, HydraHeads) and back.config == cfg and cfg.kind == "hydra"
    with torch.no_grad():
        assert torch.equal(back.train_logits(h, window, model), full)


def test_hydra_fits_4mb_at_k6(tmp_path):
    """The shipped target's default hydra size (dim 256, hidden 768) with k = 6, on the written file."""
    cfg = HeadsConfig(k=6, dim=256, target_vocab_size=4096, target_dim=256, target_n_layers=8, kind="hydra")
    heads = build_heads(cfg)
    assert sum(p.numel() for p in heads.parameters()) == cfg.num_parameters()
    save_heads(heads, tmp_path)
    assert (tmp_path / "heads.safetensors").stat().st_size <= MB4


def _rows_dir(tmp_path, model, chunks=2, rows=8, prompt_len=6, gen_len=20):
    """What `python -m models.training.distill_draft generate` writes: chunks of prompt + greedy continuation."""
    d = tmp_path / "rows"
    d.mkdir()
    g = torch.Generator().manual_seed(3)
    for c in range(chunks):
        seq = greedy_continue(model, torch.randint(4, 64, (rows, prompt_len), generator=g), gen_len)
        np.save(d / f"chunk_{c:04d}.npy", seq.numpy().astype(np.uint16))
    (d / "meta.json").write_text(json.dumps({"prompt_len": prompt_len, "gen_len": gen_len, "seed": 0}))
    return d


def test_hydra_training_on_cached_rows_lowers_loss_and_resumes_exactly(tmp_path):
    model = tiny_target()
    save_target(model, tmp_path / "target")
    rows = _rows_dir(tmp_path, model)
    tok = _corpus_file(tmp_path, model)
    common = ["--target", str(tmp_path / "target"), "--k", "3", "--kind", "hydra", "--hidden", "48",
              "--data", "rows", "--rows-dir", str(rows), "--tokens-file", str(tok), "--device", "cpu",
              "--batch", "64", "--tokens", str(40 * 64), "--lr", "1e-2", "--max-seconds", "0",
              "--prompt-len", "8", "--eval-rows", "8", "--eval-gen-len", "16"]
    log = train_main(common + ["--out", str(tmp_path / "a"), "--state", str(tmp_path / "sa")])
    assert log["steps"] == 40 and log["heads"]["kind"] == "hydra"

    # the cached features are the frozen target's hidden states at the continuation positions
    seq = torch.from_numpy(np.load(rows / "chunk_0001.npy").astype(np.int64))
    feats = torch.from_numpy(np.load(rows / "features" / "f_0001.npy")).float()
    with torch.no_grad():
        ref = model.hidden_train(seq)[:, 5:-1]
    assert feats.shape == ref.shape and torch.allclose(feats, ref, atol=2e-3, rtol=2e-3)

    # the oracle: the loss on held-out greedy rows, untrained heads (same seed) vs trained
    torch.manual_seed(0)
    fresh = build_heads(HeadsConfig.for_target(model, 3, hidden=48, kind="hydra"))
    trained = load_heads(tmp_path / "a", model)
    held = greedy_continue(model, torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(5)), 24)
    with torch.no_grad():
        before, after = heads_loss(model, fresh, held, 7), heads_loss(model, trained, held, 7)
    assert after < 0.8 * before, (before, after)
    assert_resume_is_exact(tmp_path, model, common)
