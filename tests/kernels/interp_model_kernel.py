"""Models with the decode kernel in the interpreter against the PyTorch path.

Not collected directly: test_model_kernel.py runs this file in a child pytest with
TRITON_INTERPRET=1 (read when the kernels are defined). Each test counts the kernel's calls, so a
silent fall-back to SDPA fails it.
"""
import inspect
import os

import pytest
import torch

import kernels
from hf_tiny import hf_positions, left_pad, tiny
from models import DecoderConfig, LlamaDecoder, hf_attention
from models.compiled import static_forward

ATOL = 1e-4


@pytest.fixture
def kernel_calls(monkeypatch):
    """T of each kernel call (models look the function up on the package once per forward)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through test_model_kernel.py"
    calls, real = [], kernels.decode_attention

    def counted(q, *args, **kw):
        calls.append(q.shape[1])
        return real(q, *args, **kw)

    monkeypatch.setattr(kernels, "decode_attention", counted)
    return calls


def tiny_native(window: int) -> LlamaDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, sliding_window=window,
                        max_seq_len=64)
    model = LlamaDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # decisive argmaxes, as test_compiled_step
    return model


def native_run(model, backend: str, monkeypatch):
    """Left-padded prefill, greedy steps, a verify block with per-row q_lens, a per-row truncate,
    static (CUDA-graph) steps, greedy again. Returns (logits of real queries, greedy tokens)."""
    monkeypatch.setenv("DECODING_ATTN", backend)
    g = torch.Generator().manual_seed(1)
    B, V = 3, model.vocab_size
    ids, mask = left_pad([[5, 17, 23, 8, 41, 9, 7], [11, 4, 60, 2], [6, 55, 21, 19, 30, 44]])
    cache = model.new_cache(B, 48)
    outs, tokens = [], []

    def greedy(steps, logits):
        for _ in range(steps):
            tok = logits[:, -1].argmax(-1)
            tokens.append(tok)
            logits = model(tok[:, None], cache)
            outs.append(logits[:, -1])
        return logits

    with torch.no_grad():
        logits = model(ids, cache, attention_mask=mask)  # left-padded: SDPA on both backends
        outs.append(logits[mask.bool()])
        greedy(2, logits)
        drafts = torch.randint(0, V, (B, 4), generator=g)
        q_lens = torch.tensor([4, 2, 3])
        vmask = (torch.arange(4) < q_lens[:, None]).long()  # right-padded verify block
        outs.append(model(drafts, cache, attention_mask=vmask)[vmask.bool()])
        cache.truncate(torch.tensor([1, 2, 0], dtype=torch.int32))  # per-row rejections
        for T in (2, 1):
            logits = static_forward(model, torch.randint(0, V, (B, T), generator=g), cache)
            outs.append(logits.reshape(-1, V))
        greedy(2, logits)
    return outs, torch.stack(tokens, 1)


@pytest.mark.parametrize("window", [0, 5])
def test_native_model_kernel_equals_torch_path(window, kernel_calls, monkeypatch):
    model = tiny_native(window)
    ref, ref_tokens = native_run(model, "torch", monkeypatch)
    assert not kernel_calls
    out, tokens = native_run(model, "triton", monkeypatch)
    # every decode, verify and static step took the kernel (2 layers each); the prefill did not
    assert sorted(set(kernel_calls)) == [1, 2, 4] and len(kernel_calls) == 2 * (2 + 1 + 2 + 2)
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _hf_step(model, ids, mask, cache, **kw):
    """One HF forward with explicit positions; (logits, cache). The cache kwarg differs by version."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    T = ids.shape[1]
    args = dict(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)[:, -T:], use_cache=True, **kw)
    if cache is not None:
        args[name] = cache
    out = model(**args)
    new = out.get("cache", None)
    return out.logits, new if new is not None else out.past_key_values


def test_hf_registered_kernel_equals_sdpa_with_left_padding(kernel_calls, monkeypatch):
    monkeypatch.setenv("DECODING_ATTN", "triton")
    sdpa, ours = tiny("llama"), hf_attention.enable(tiny("llama"))  # same seed: same weights
    assert ours.config._attn_implementation == hf_attention.NAME
    ids, mask = left_pad([[5, 17, 23, 8, 41, 9], [11, 4, 90]])
    ref_cache = cache = None
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for step, T in enumerate([ids.shape[1], 1, 3, 1]):  # prefill, decode, verify block, decode
            if step:
                ids = ref[:, -1:].argmax(-1) if T == 1 else torch.randint(0, 96, (2, T), generator=g)
                mask = torch.cat([mask, mask.new_ones(2, T)], 1)
            kv = hf_attention.kv_start_kwargs(mask)
            assert kv["kv_start"].tolist() == [0, 3]
            ref, ref_cache = _hf_step(sdpa, ids, mask, ref_cache)
            out, cache = _hf_step(ours, ids, mask, cache, **kv)
            real = mask[:, -T:].bool()
            torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=0)
    assert sorted(set(kernel_calls)) == [1, 3, 6]  # every step, prefill included, took the kernel
