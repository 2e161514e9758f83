"""`python -m decoding generate / bench`: end to end on tiny models, errors with clear messages."""
import argparse
import io
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


class Stdin(io.StringIO):
    def __init__(self, text="", tty=False):
        super().__init__(text)
        self.tty = tty

    def isatty(self):
        return self.tty


def blocks(out: str) -> tuple[list[str], str]:
    """The printed texts (split at '--- ... ---' headers) and the stats line."""
    body, stats = out.rstrip("\n").rsplit("\n", 1)
    parts = [p for p in body.split("--- ") if p]
    return [p.split(" ---\n", 1)[1].removesuffix("\n") for p in parts], stats


def test_several_prompts_decode_as_one_batch(tiny_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "p.txt").write_text("def f(x):\n")
    monkeypatch.setattr(sys, "stdin", Stdin("ignored: prompts were given"))
    rc = cli.main(["generate", "--model", str(tiny_dir), "--prompt", "x = ", "--prompt-file", str(tmp_path / "p.txt"),
                   "--prompt", "import os", "--max-new-tokens", "5", "--ignore-eos"])
    assert rc == 0
    texts, stats = blocks(capsys.readouterr().out)
    model, tok = checkpoint.load(tiny_dir).float(), Tokenizer.load()
    prompts = ["x = ", "def f(x):\n", "import os"]
    batch = [tok.encode(p, bos=True) for p in prompts]
    ref = decoding.generate(model, batch, max_new_tokens=5, eos_token_id=None).sequences  # one left-padded batch
    width = max(map(len, batch))
    assert texts == [tok.decode(ref[i, width - len(b):]) for i, b in enumerate(batch)]
    assert all(t.startswith(p) for t, p in zip(texts, prompts))  # in the order given, prompt included
    assert stats.startswith("[15 new tokens") and "5 target forwards" in stats


def test_prompts_from_stdin_one_per_line(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", Stdin("a = 1\n\nb = \n"))
    rc = cli.main(["generate", "--model", str(tiny_dir), "--prompt-per-line", "--max-new-tokens", "3", "--ignore-eos",
                   "--num-return-sequences", "2", "--do-sample", "--seed", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("--- ")]
    assert heads == ["--- prompt 1, sequence 1 ---", "--- prompt 1, sequence 2 ---",
                     "--- prompt 2, sequence 1 ---", "--- prompt 2, sequence 2 ---"]
    texts, _ = blocks(out)
    assert [t[:len(p)] for t, p in zip(texts, ["a = 1", "a = 1", "b = ", "b = "])] == ["a = 1", "a = 1", "b = ", "b = "]


def test_piped_stdin_is_one_prompt_and_a_terminal_is_no_prompt(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", Stdin("def g():\n    return"))
    assert cli.main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "2", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("def g():\n    return")
    monkeypatch.setattr(sys, "stdin", Stdin(tty=True))
    assert cli.main(["generate", "--model", str(tiny_dir)]) == 2
    assert "no prompt: pass --prompt TEXT, --prompt-file PATH, or pipe" in capsys.readouterr().err


def test_beam_search_into_a_pipe_prints_the_answer_once_as_plain_text(tiny_dir, capsys):
    rc = cli.main(["generate", "--model", str(tiny_dir), "--prompt", "def f(x):", "--num-beams", "3",
                   "--max-new-tokens", "8", "--ignore-eos"])
    out = capsys.readouterr().out  # captured: not a terminal
    assert rc == 0 and "\b" not in out and "\x1b" not in out and "\r" not in out
    text, stats = out.rstrip("\n").rsplit("\n", 1)
    model, tok = checkpoint.load(tiny_dir).float(), Tokenizer.load()
    ref = decoding.generate(model, [tok.encode("def f(x):", bos=True)], max_new_tokens=8, num_beams=3,
                            eos_token_id=None).sequences[0]
    assert text == tok.decode(ref) and stats.startswith("[8 new tokens")


def fail_if_loaded(*args, **kwargs):
    raise AssertionError("a model was loaded before the bad argument was reported")


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "blockwise", "--heads", "/no/such/dir"], "--heads: no such directory: /no/such/dir"),
    (["--strategy", "blockwise", "--heads", "."], "--heads: . is not a heads directory"),
    (["--assistant", "/no/such/draft"], "--assistant: no such model directory: /no/such/draft"),
    (["--tokenizer", "/no/such/tok.model"], "--tokenizer: no such file or directory"),
    (["--prompt-file", "/no/such/prompt.txt"], "--prompt-file: no such file: /no/such/prompt.txt"),
])
def test_bad_paths_fail_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_model", fail_if_loaded)
    argv = (["--prompt", "x"] if "--prompt-file" not in argv else []) + argv
    assert cli.main(["generate", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_path_exits_nonzero_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "decoding", "generate", "--model", "/no/such/dir", "--prompt", "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--model: no such model directory: /no/such/dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "decoding", "generate", "--prompt", "x", "--strategy", "blockwise",
                           "--heads", "/no/such/dir"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--heads: no such directory" in proc.stderr and "Traceback" not in proc.stderr


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


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda_exits_2_naming_device(tiny_dir, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    rc = cli.main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--device", device])
    assert rc == cli.EXIT_USAGE and f"--device {device}: no CUDA device here" in capsys.readouterr().err


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


def test_bench_verb_without_the_bench_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bench", None)  # as in an install without the repository's bench/
    monkeypatch.delitem(sys.modules, "bench.__main__", raising=False)
    assert cli.main(["bench"]) == 1
    assert "bench/ scripts, which cannot be imported here" in capsys.readouterr().err


def test_threads_one_for_small_eager_models_all_for_the_compiled_step(monkeypatch):
    """The CLI's default threads: a small model whose steps run eagerly gets one; a native model
    (fp32 or half) whose steps run the compiled step (the switch and rule of models/compiled_cpu.py) keeps
    torch's default; an HF model through the adapter runs eagerly."""
    from decoding.cli_common import use_threads
    from hf_tiny import tiny
    monkeypatch.delenv("DECODING_COMPILE", raising=False)
    def native(switch=None, dtype=torch.float32):
        model = LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2)).to(dtype)
        model.compile_step = switch
        return model
    cases = [(native(), False), (native(switch=False), True), (native(dtype=torch.float16), False),
             (native(switch=False, dtype=torch.bfloat16), True), (tiny("llama"), True)]
    for model, one in cases:
        torch.set_num_threads(2)
        use_threads(0, model, torch.device("cpu"))
        assert (torch.get_num_threads() == 1) == one, (type(model).__name__, model.dtype)


def test_assistant_dtype_auto_keeps_a_drafts_half_precision_where_it_pays(tmp_path, monkeypatch):
    """--assistant-dtype auto on CPU: a native draft stored in half precision stays in it for one row
    where its step runs compiled on a CPU where that was measured faster (half the bytes a draft step
    reads; a draft never changes the output), and runs in float32 for a batch, where it would run
    eagerly, or on another CPU; an explicit dtype is taken as given."""
    from models import compiled_cpu
    model = LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2)).half()
    draft = checkpoint.save(model, tmp_path / "draft")
    cpu = torch.device("cpu")

    def dtype(choice, env, rows=1, pays=True):
        monkeypatch.setenv("DECODING_COMPILE", env)
        monkeypatch.setattr(compiled_cpu, "HALF_PAYS", (torch.backends.cpu.get_cpu_capability(),) if pays else ())
        args = argparse.Namespace(assistant=str(draft), assistant_dtype=choice, native=False)
        return cli.load_assistant(args, cpu, torch.float32, rows).dtype
    assert dtype("auto", "1") == torch.float16
    assert dtype("auto", "1", pays=False) == torch.float32  # a CPU where the half step was slower (AVX2)
    assert dtype("auto", "1", rows=2) == torch.float32  # a batch: the half library is slower there
    assert dtype("auto", "0") == torch.float32  # eager half matmuls are slow on a CPU
    assert dtype("bfloat16", "0", rows=4) == torch.bfloat16 and dtype("float32", "1") == torch.float32
