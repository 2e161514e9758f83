"""Training script: the loss falls, resume is exact, and checkpoints are safetensors + JSON only."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models import zoo
from models.training import corpus, train as T
from models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def data():
    """A few stdlib files, tokenized here: CI has no data/ directory."""
    tok = Tokenizer.load()
    root = corpus.stdlib_root()
    enc = lambda rel: corpus.encode_file(tok, (root / rel).read_text(encoding="utf-8"))  # noqa: E731
    train = np.asarray(enc("argparse.py") + enc("textwrap.py"), dtype=np.uint16)
    val = np.asarray(enc("shlex.py"), dtype=np.uint16)
    return {"train": train, "val": val, "val_slice": T.strided_windows(val, 32, 8), "meta": {"python": "test"}}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(zoo.ZOO, "tiny", zoo.Entry(
        "llama", dict(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=64, tie_embeddings=True, max_seq_len=64),
        zoo.Recipe(lr=1e-2, batch_gpu=4, batch_cpu=4, seq_len=32, warmup_steps=3)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same reduction order in every run
    yield "tiny"
    torch.set_num_threads(threads)


def run(tmp, name, data, **kw):
    return T.train(name, tmp / "out", tokens=24 * 4 * 32, data=data, state_dir=tmp / "state",
                   log_file=tmp / "log.txt", evals=0, val_windows=0, **kw)


def test_loss_falls(tmp_path, tiny, data):
    log = run(tmp_path, tiny, data)
    losses = [h[2] for h in log["history"]]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0
    assert log["val"]["loss"] < np.log(4096) - 0.3 and log["val"]["bpb"] > 0  # held-out file


def test_resume_matches_uninterrupted(tmp_path, tiny, data):
    whole = run(tmp_path / "a", tiny, data)
    paused = run(tmp_path / "b", tiny, data, stop_step=10)
    assert paused["step"] == 10 and not (tmp_path / "b" / "out" / tiny).exists()
    resumed = run(tmp_path / "b", tiny, data, resume=True)
    assert resumed["sessions"] == 2 and resumed["steps"] == whole["steps"] == 24
    assert [h[2] for h in resumed["history"]] == [h[2] for h in whole["history"]]
    wa, wb = (load_file(str(tmp_path / d / "state" / "state.safetensors")) for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["val"] == whole["val"]


def test_checkpoint_is_safetensors_and_json(tmp_path, tiny, data):
    log = run(tmp_path, tiny, data)
    ckpt = tmp_path / "out" / tiny
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "train_log.json"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["state.json", "state.safetensors"]
    assert all(v.dtype == torch.float16 for v in load_file(str(ckpt / "model.safetensors")).values())
    assert json.loads((ckpt / "train_log.json").read_text())["tokens_seen"] == log["tokens_seen"]
    model = zoo.ARCHS["llama"].load(ckpt, dtype=torch.float32)
    assert model.config.eos_token_id == 2 and model.config.pad_token_id == 3
    # the logged validation numbers are those of the shipped fp16 weights
    again = T.evaluate(model, data["val_slice"], Tokenizer.load().token_bytes())
    assert again["loss"] == pytest.approx(log["val"]["loss"], rel=1e-6)


def test_batches_are_a_function_of_the_step(data):
    tokens = torch.from_numpy(data["train"].astype(np.int32))
    b1, b2 = T.Batches(tokens, 4, 32, seed=0), T.Batches(tokens, 4, 32, seed=0)
    x5, y5 = b1(5)
    assert torch.equal(b2(5)[0], x5) and torch.equal(x5[:, 1:], y5[:, :-1])
    # one epoch visits every window once
    seen = np.concatenate([b1.starts(s) for s in range(b1.n // 4)])
    assert len(set(seen.tolist())) == len(seen)


def test_draft_within_compute_budget():
    tok = Tokenizer.load()
    target, draft = zoo.build("target", tok), zoo.build("draft", tok)
    assert sum(p.numel() for p in target.parameters()) <= 7_000_000
    assert target.config.n_kv_heads < target.config.n_heads  # GQA
    assert 8 * zoo.compute_per_token(draft) <= zoo.compute_per_token(target)
