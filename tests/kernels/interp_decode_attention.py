"""Decode-attention Triton kernels in the interpreter against the float64 reference.

Not collected directly (the name does not start with test_): test_decode_attention.py runs this
file in a child pytest with TRITON_INTERPRET=1, which Triton reads when the kernels are defined,
so the rest of the suite keeps compiled-mode Triton. It also borrows the cases and checks below
for the PyTorch path.
"""
import os

import pytest
import torch

from kernels import decode_attention, decode_attention_reference

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=5e-3, rtol=1e-2)}
NAN = float("nan")


def make_case(B, T, Hq, Hkv, D, S, lengths, *, q_lens=None, kv_start=None, dtype=torch.float32,
              layout="bhsd", seed=0):
    """Random q and caches; every slot a query must not read (past the length, before kv_start,
    padded query rows) holds NaN, so a leak shows up in the output."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.int32)
    q_lens = torch.tensor(q_lens if q_lens is not None else [T] * B, dtype=torch.int32)
    kv_start = torch.tensor(kv_start if kv_start is not None else [0] * B, dtype=torch.int32)
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype).transpose(1, 2)  # (B, T, Hq, D), strided
    if layout == "bhsd":
        k = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
        v = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
    else:  # (B, S, H, D) storage seen as (B, H, S, D)
        k = torch.randn(B, S, Hkv, D, generator=g).to(dtype).permute(0, 2, 1, 3)
        v = torch.randn(B, S, Hkv, D, generator=g).to(dtype).permute(0, 2, 1, 3)
    for b in range(B):
        for cache in (k, v):
            cache[b, :, int(lengths[b]):] = NAN
            cache[b, :, :int(kv_start[b])] = NAN
        q[b, int(q_lens[b]):] = NAN
    return q, k, v, dict(lengths=lengths, q_lens=q_lens, kv_start=kv_start)


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through test_decode_attention.py"
    monkeypatch.setenv("DECODING_ATTN", "triton")


def run(case, window=0, **kw):
    q, k, v, lens = case
    return decode_attention(q, k, v, lens["lengths"], q_lens=lens["q_lens"], kv_start=lens["kv_start"],
                            window=window, **kw)


def reference(case, window=0):
    q, k, v, lens = case
    return decode_attention_reference(q, k, v, lens["lengths"], q_lens=lens["q_lens"],
                                      kv_start=lens["kv_start"], window=window)


def check(case, out, window=0):
    q, _, _, lens = case
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "NaN from an unread slot reached the output"
    for b, n in enumerate(lens["q_lens"].tolist()):
        assert (out[b, n:] == 0).all(), "padded query rows must be zeros"
    torch.testing.assert_close(out, reference(case, window), **TOL[q.dtype])


# (B, T, Hq, Hkv, D, S, lengths, q_lens, kv_start, window, dtype, layout, [(schedule, num_splits)])
# Lengths sit on and around the 64-key tile (and include 1); programs/splits go below and above
# the tile count; S_max stays under 300 so the interpreter is quick.
MATRIX = [
    (3, 1, 4, 4, 16, 160, [1, 64, 65], None, None, 0, torch.float32, "bhsd",
     [("split", 1), ("split", 3), ("lean", 2), ("lean", 40)]),
    (3, 3, 8, 2, 80, 200, [3, 130, 200], [3, 1, 2], [0, 5, 17], 0, torch.float16, "bshd",
     [("split", 8), ("split", None), ("lean", 5)]),
    (2, 4, 8, 1, 64, 300, [127, 300], [4, 2], [0, 64], 33, torch.float32, "bshd",
     [("split", 2), ("lean", 3), ("lean", None)]),
    (2, 4, 8, 2, 16, 129, [129, 63], [1, 4], [2, 0], 5, torch.float16, "bhsd",
     [("split", 4), ("lean", 64)]),
    # the last row is empty (nothing cached, no real query): all zeros, no partials
    (3, 1, 8, 1, 80, 256, [256, 2, 0], [1, 1, 0], [100, 1, 0], 64, torch.float16, "bhsd",
     [("split", 5), ("lean", 1)]),
    (2, 3, 4, 4, 64, 100, [66, 100], [2, 3], [30, 0], 0, torch.float32, "bhsd",
     [("split", 7), ("lean", 4)]),
    # 24 query heads x 3 tokens on one kv head: 72 rows, two m-blocks re-reading the same tiles
    (1, 3, 24, 1, 16, 150, [150], [3], [7], 0, torch.float32, "bshd",
     [("split", 3), ("lean", 2)]),
]


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: f"B{r[0]}T{r[1]}H{r[2]}/{r[3]}D{r[4]}w{r[9]}-{str(r[10])[6:]}-{r[11]}")
def test_matches_float64_reference(row):
    B, T, Hq, Hkv, D, S, lengths, q_lens, kv_start, window, dtype, layout, runs = row
    case = make_case(B, T, Hq, Hkv, D, S, lengths, q_lens=q_lens, kv_start=kv_start, dtype=dtype,
                     layout=layout, seed=len(lengths) * 31 + D)
    for schedule, num_splits in runs:
        check(case, run(case, window, schedule=schedule, num_splits=num_splits), window)


def test_output_independent_of_split_count_and_lean_grid():
    # 3 rows of 1, 5 and 4 tiles (20 tiles over 2 kv heads): 1..8 splits, 1..63 lean programs
    case = make_case(3, 2, 4, 2, 32, 300, [40, 300, 250], q_lens=[2, 2, 1], seed=3)
    base = run(case, schedule="split", num_splits=1)
    check(case, base)
    for schedule, n in [("split", 2), ("split", 5), ("split", 8), ("lean", 1), ("lean", 7), ("lean", 63)]:
        torch.testing.assert_close(run(case, schedule=schedule, num_splits=n), base, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["split", "lean"])
def test_rollback_equals_fresh_cache(schedule):
    """Verify 4 drafts, accept 1 (lengths drop by 3), append 2 more: same as a cache built fresh."""
    B, Hq, Hkv, D, S = 2, 4, 2, 32, 96
    q, k, v, lens = make_case(B, 4, Hq, Hkv, D, S, [70, 20], seed=5)
    run((q, k, v, lens), schedule=schedule, num_splits=3)
    lengths = lens["lengths"] - 3  # rollback is a change of lengths only
    g = torch.Generator().manual_seed(6)
    new_k, new_v = torch.randn(B, Hkv, 2, D, generator=g), torch.randn(B, Hkv, 2, D, generator=g)
    fresh_k, fresh_v = torch.zeros_like(k), torch.zeros_like(v)
    for b in range(B):
        n = int(lengths[b])
        fresh_k[b, :, :n], fresh_v[b, :, :n] = k[b, :, :n], v[b, :, :n]
        for cache, fresh, new in ((k, fresh_k, new_k), (v, fresh_v, new_v)):
            cache[b, :, n:n + 2] = new[b]  # overwrite the rejected slots; the third stays stale
            fresh[b, :, n:n + 2] = new[b]
    lengths = lengths + 2
    q2 = torch.randn(B, 2, Hq, D, generator=g)
    common = dict(q_lens=None, kv_start=None, schedule=schedule, num_splits=3)
    rolled = decode_attention(q2, k, v, lengths, **common)
    fresh = decode_attention(q2, fresh_k, fresh_v, lengths, **common)
    assert torch.equal(rolled, fresh)
    torch.testing.assert_close(rolled, decode_attention_reference(q2, fresh_k, fresh_v, lengths),
                               **TOL[torch.float32])
