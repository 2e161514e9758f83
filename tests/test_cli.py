"""`python -m decoding generate / bench`: end to end on tiny models, errors with clear messages."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decoding
from decoding import cli
from models import DecoderConfig, LlamaDecoder, checkpoint
from models.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()  # the CLI picks one thread for small models
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A native checkpoint with the shipped tokenizer's vocabulary and no tokenizer file."""
    torch.manual_seed(0)
    model = LlamaDecoder(DecoderConfig(vocab_size=4096, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                       hidden_dim=64, max_seq_len=128, eos_token_id=2, pad_token_id=3))
    return checkpoint.save(model, tmp_path_factory.mktemp("tiny"))


def test_generate_streams_text_then_stats(tiny_dir, capsys):
    rc = cli.main(["generate", "--model", str(tiny_dir), "--prompt", "x = ", "--max-new-tokens", "6",
                   "--ignore-eos"])
    out = capsys.readouterr().out
    assert rc == 0
    text, stats = out.rstrip("\n").rsplit("\n", 1)
    model, tok = checkpoint.load(tiny_dir), Tokenizer.load()
    ids = torch.tensor([tok.encode("x = ", bos=True)])
    ref = decoding.generate(model.float(), ids, max_new_tokens=6, eos_token_id=None).sequences[0]
    assert text == tok.decode(ref)  # streamed: prompt + completion
    assert stats.startswith("[6 new tokens in") and "tokens/s" in stats and "6 target forwards" in stats \
        and "tau 1.00" in stats


def test_hf_model_directory_runs_through_the_adapter(tiny_dir, tmp_path, capsys):
    from models.hf_weights import to_hf
    to_hf(checkpoint.load(tiny_dir)).save_pretrained(tmp_path)
    rc = cli.main(["generate", "--model", str(tmp_path), "--prompt", "x = ", "--max-new-tokens", "4",
                   "--no-stream", "--do-sample", "--seed", "1", "--top-k", "5"])
    assert rc == 0 and "[4 new tokens" in capsys.readouterr().out


def test_bad_path_exits_nonzero_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "decoding", "generate", "--model", "/no/such/dir", "--prompt", "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no such model directory: /no/such/dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_model_directory(tmp_path, capsys):
    assert cli.main(["generate", "--model", str(tmp_path), "--prompt", "x"]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_engine_not_implemented_exits_2(tiny_dir, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise NotImplementedError("generate(): `strategy='jacobi'` is not implemented by the engine yet")
    monkeypatch.setattr(decoding, "generate", refuse)
    rc = cli.main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--strategy", "jacobi"])
    assert rc == 2 and "strategy='jacobi'` is not implemented" in capsys.readouterr().err


def test_invalid_value_exits_2(tiny_dir, capsys):
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_help_explains_every_option():
    ap = cli.parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["generate"]._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_bench_front_lists_and_dispatches(capsys):
    assert cli.main(["bench"]) == 0
    listing = capsys.readouterr().out
    for name in ("engine_vs_hf", "kv_memory", "kernel_bench", "gpu_suite"):
        assert name in listing
    assert cli.main(["bench", "no_such_bench"]) == 2
    with pytest.raises(SystemExit) as e:  # the script's own argparse
        cli.main(["bench", "kernel", "--help"])
    assert e.value.code == 0 and "--smoke" in capsys.readouterr().out
