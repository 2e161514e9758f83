"""The decode kernel inside the models: native attention and the HF attention registration.

The model-level checks run the kernel in the interpreter, in a child pytest with TRITON_INTERPRET=1
(interp_model_kernel.py); the dispatch rules that need no kernel run here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.attention import AttentionBatch
from models.hf_attention import kv_start_kwargs

ROOT = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().with_name("interp_model_kernel.py")


def test_models_with_kernel_in_interpreter():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("DECODING_ATTN", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", str(INNER), "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning"]
    res = subprocess.run(cmd, cwd=ROOT, env={**env, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        pytest.fail(f"interpreter tests failed (rc={res.returncode}):\n{res.stdout[-12000:]}\n{res.stderr[-4000:]}")


def test_cpu_default_stays_on_sdpa(monkeypatch):
    monkeypatch.delenv("DECODING_ATTN", raising=False)
    slots = torch.tensor([[3, 4]])
    batch = AttentionBatch(slots, torch.tensor([5], dtype=torch.int32), torch.ones(1, 2, dtype=torch.bool))
    assert batch.kernel is None and batch.kv_len == 5


def test_kernel_layout_rule(monkeypatch):
    """Forced Triton: right-padded or unpadded blocks ending at the row's length take the kernel;
    a left-padded block does not (the check needs no kernel run)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("DECODING_ATTN", "triton")
    lengths = torch.tensor([7, 4], dtype=torch.int32)
    right = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    batch = AttentionBatch(torch.tensor([[4, 5, 6], [3, 4, 5]]), lengths, right)
    assert batch.kernel is not None and batch.q_lens.tolist() == [3, 1] and batch.kv_len == 7
    left = torch.tensor([[1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    assert AttentionBatch(torch.tensor([[4, 5, 6], [4, 5, 3]]), lengths, left).kernel is None
    long = torch.ones(1, 65, dtype=torch.bool)  # a prefill past KERNEL_MAX_TOKENS
    assert AttentionBatch(torch.arange(65)[None], torch.tensor([65], dtype=torch.int32), long).kernel is None


def test_kv_start_only_for_left_pad_holes():
    assert kv_start_kwargs(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))["kv_start"].tolist() == [2, 0]
    assert kv_start_kwargs(torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1]])) == {}  # a rolled-back hole: SDPA
    assert kv_start_kwargs(torch.tensor([[1, 1, 1, 0]])) == {}  # a right pad


def test_package_exports_the_function_whatever_the_import_order():
    import importlib

    import kernels
    module = importlib.import_module("kernels.decode_attention")
    assert kernels.decode_attention is module.decode_attention and callable(module)
