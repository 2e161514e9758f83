"""Shipped checkpoints (models/shipped/). Skipped until the zoo driver has written MANIFEST.json;
from then on every model it lists must be present, load, and reproduce its logged validation loss."""
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from models import artifacts, zoo
from models.training import corpus
from models.training.evaluate import evaluate
from models.tokenizer import SHIPPED as TOKENIZER, Tokenizer

# ZOO_DIR: check a training run's output (e.g. $OUT) before copying it into models/shipped
SHIPPED = Path(os.environ.get("ZOO_DIR") or artifacts.SHIPPED)
MANIFEST = SHIPPED / "MANIFEST.json"
if not MANIFEST.exists():
    pytest.skip("models/shipped/MANIFEST.json not written yet (run models.training.train_zoo)", allow_module_level=True)
manifest = json.loads(MANIFEST.read_text())
NAMES = sorted(set(manifest["models"]) | {"target", "draft"})  # these two are always expected


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core CI machines: oversubscribed threads are slower
    yield
    torch.set_num_threads(threads)


def log_of(name):
    return json.loads((SHIPPED / name / "train_log.json").read_text())


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def val_slice(tok):
    return corpus.val_slice(tok)[0]  # rebuilt from this interpreter's stdlib, not from data/


def load(name):
    arch = zoo.ARCHS[manifest["models"][name]["arch"]]
    return arch.load(SHIPPED / name, dtype=torch.float32, device="cpu")


def test_manifest_matches_files():
    assert hashlib.sha256(TOKENIZER.read_bytes()).hexdigest() == manifest["tokenizer"]["sha256"]
    for name in NAMES:
        assert name in manifest["models"], f"MANIFEST.json does not list {name}"
        for fname, meta in manifest["models"][name]["files"].items():
            path = SHIPPED / name / fname
            assert path.exists(), f"{path} missing"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"], f"{path} changed"


@pytest.mark.parametrize("name", NAMES)
def test_loads_and_config_matches(name):
    model = load(name)  # load() itself rejects weights that do not match config.json
    log = log_of(name)
    assert model.config.to_dict() == log["config"]
    assert sum(p.numel() for p in model.parameters()) == log["params"]
    assert log["ship_dtype"] in ("float16", "bfloat16")
    assert model.config.max_seq_len >= corpus.SLICE_LEN


@pytest.mark.parametrize("name", NAMES)
def test_logged_val_loss_reproduced(name, tok, val_slice):
    val = log_of(name)["val"]
    assert corpus.slice_sha256(val_slice) == val["sha256"], (
        f"validation slice differs from the logged one (built on Python {val['slice_python']}, "
        f"this is {sys.version.split()[0]}): the stdlib sources changed")
    got = evaluate(load(name), val_slice, tok.token_bytes())
    assert got["loss"] == pytest.approx(val["loss"], rel=0.01)
    assert got["bpb"] == pytest.approx(val["bpb"], rel=0.01)


def test_default_model_generates_decodable_text(tok):
    from models.training.train_zoo import PROMPT, greedy

    model = load(manifest.get("default", "target"))
    prompt = tok.encode(PROMPT, bos=True)
    ids = greedy(model, torch.tensor([prompt]), 24, eos=tok.eos_id)[0].tolist()
    text = tok.decode(ids)
    assert len(ids) > len(prompt) and text.startswith(PROMPT)
    new = text[len(PROMPT):]
    assert new and "\ufffd" not in new and sum(c.isalpha() for c in new) >= 3, repr(new)


def test_target_clearly_beats_draft():
    assert log_of("target")["val"]["loss"] < log_of("draft")["val"]["loss"] - 0.1


def test_shipped_draft_speculation_equals_greedy_and_saves_forwards(tok):
    """The shipped pair as users run it: greedy speculation (k = 4) reproduces the target's greedy
    tokens at batch 2 with padding, and the distilled draft gets several tokens per target forward."""
    import decoding

    target, draft = load("target").float(), load("draft").float()
    rows = [tok.encode(t) for t in ("def fibonacci(n):\n    if n < 2:\n        return n\n",
                                    "import os\n\n\ndef walk(path):\n")]
    kw = dict(max_new_tokens=40, min_new_tokens=40)
    ref = decoding.generate(target, rows, **kw)
    out = decoding.generate(target, rows, assistant_model=draft, num_assistant_tokens=4,
                            assistant_confidence_threshold=0, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.tau > 1.5, out.stats
