"""Draft distillation (models/training/distill_draft.py) on tiny random models: the tau it reports is what
greedy speculative decoding really does (the oracle is decoding.generate's own count of target
forwards), generation resumes by chunks and reproduces them, and training lowers the draft's loss
on the target's greedy text."""
import numpy as np
import torch

import decoding
from models import DecoderConfig, LlamaDecoder
from models.checkpoint import load, save
from models.training.distill_draft import agreement, greedy_rows, loss_on, main
from models.training.train_heads import greedy_continue

torch.set_num_threads(1)


def tiny(seed, dim=32, layers=2):
    torch.manual_seed(seed)
    return LlamaDecoder(DecoderConfig(vocab_size=64, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                      max_seq_len=128)).eval()


def test_reported_tau_is_the_decoders():
    target = tiny(0)
    draft = tiny(0)
    with torch.no_grad():  # a perturbed copy: agrees often, not always
        for p in draft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    prompts = torch.randint(4, 64, (3, 6), generator=torch.Generator().manual_seed(1))
    n = 20
    rep = agreement(draft, target, prompts, n, ks=(2, 4))
    assert 0.2 < rep["agreement"] < 1.0, rep
    for k in (2, 4):
        new = forwards = 0
        for row in prompts:
            s = decoding.generate(target, row[None], assistant_model=draft, num_assistant_tokens=k,
                                  assistant_confidence_threshold=0, max_new_tokens=n, eos_token_id=None).stats
            new, forwards = new + s.new_tokens, forwards + s.target_forwards
        assert new == 3 * n
        assert rep[f"tau_k{k}"] == round(new / forwards, 4), (k, rep, new, forwards)


def test_generate_then_train_lowers_the_loss(tmp_path):
    target, draft = tiny(0), tiny(1, dim=16, layers=1)
    save(target, tmp_path / "target")
    save(draft, tmp_path / "draft")
    tokens = np.random.default_rng(0).integers(4, 64, 4000).astype(np.uint16)
    np.save(tmp_path / "tokens.npy", tokens)
    common = ["--target", str(tmp_path / "target"), "--data-dir", str(tmp_path / "data"), "--prompt-len", "8",
              "--gen-len", "24", "--chunk-rows", "16"]
    main(["generate", *common, "--rows", "32", "--tokens-file", str(tmp_path / "tokens.npy")])
    rows, start = greedy_rows(tmp_path / "data")
    assert rows.shape == (32, 32) and start == 8
    # the oracle for the rows: the target's own greedy continuation of their prompts
    assert torch.equal(greedy_continue(target, torch.from_numpy(rows[:, :8]), 24), torch.from_numpy(rows))
    # a chunk removed is regenerated identically (chunk c is seeded with (seed, c))
    (tmp_path / "data" / "chunk_0001.npy").unlink()
    main(["generate", *common, "--rows", "32", "--tokens-file", str(tmp_path / "tokens.npy")])
    assert np.array_equal(greedy_rows(tmp_path / "data")[0], rows)

    log = main(["train", *common, "--init", str(tmp_path / "draft"), "--out", str(tmp_path / "out"),
                "--val-tokens-file", str(tmp_path / "tokens.npy"), "--epochs", "30", "--batch", "8",
                "--lr", "1e-2", "--eval-rows", "4", "--eval-gen-len", "8"])
    assert log["steps"] == log["planned_steps"] == 30 * 32 // 8
    trained = load(tmp_path / "out", dtype=torch.float32)
    seq = torch.from_numpy(rows)
    with torch.no_grad():
        before, after = loss_on(draft, seq, 8), loss_on(trained, seq, 8)
    assert after < 0.7 * before, (before, after)
