"""Decode-phase attention over a static KV cache.

Kernel, launcher and dispatcher side by side, as in Triton's fused-attention tutorial; the PyTorch
float64 reference and the CPU path are in kernels/reference.py. One attention kernel serves both
schedules, which are two ways of cutting the same work line (row after row, each row's
(kv-head, m-block) tasks, each task's K/V tiles):

- split (flash-decoding split-K): programs (row, kv-head x m-block, split), flattened; each takes
  an equal share of its own task's tiles.
- lean (LeanAttention's stream-K): a persistent grid of a few programs per SM; each takes an equal
  contiguous share of the whole line, crossing task boundaries where it must, so one long row in a
  ragged batch does not leave SMs idle.

Every program loads a K/V tile once for all query heads of its group and all T query tokens (the
query block is group*T rows, padded to >= 16 for tl.dot), runs an online softmax in base 2 and
writes a partial (lse, o) per task it touched. `_merge_kernel` then combines the partials by
log-sum-exp in a separate pass: deterministic, and it runs in the interpreter (a lock-based
in-kernel merge would deadlock there).

Neither schedule syncs with the host: the split count and the lean grid come from the cache
capacity and the SM count (host ints); each program reads `lengths` on the device and derives its
own share, so a CUDA graph can capture a decode step.

Layout: q (B, T, Hq, D); k_cache, v_cache (B, Hkv, S_max, D), any strides; lengths int32 (B,) is
the cache length after the T new tokens were appended. Query t of row b sees key n iff
kv_start[b] <= n <= lengths[b] - q_lens[b] + t, and with window w > 0 also
n > lengths[b] - q_lens[b] + t - w. Query rows t >= q_lens[b] (right padding) are zeros.
"""
import math
import os
import sys
import types

import torch

from .reference import resolve_defaults, torch_decode_attention

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton on this platform: the PyTorch path still works
    triton = None
    tl = types.SimpleNamespace(constexpr=None)

LOG2E = 1.4426950408889634


def _jit(fn=None, **options):
    if fn is None:
        return lambda f: _jit(f, **options)
    return triton.jit(fn, **options) if triton is not None else fn


def _constexpr(x):
    return tl.constexpr(x) if triton is not None else x


ROWS = _constexpr(16)  # batch rows scanned per vector step when a lean program locates its work
SLOTS = _constexpr(16)  # partials combined per vector step in the merge


# ----------------------------------------------------------------------------------------------
# Triton kernels


@_jit
def _row_span(b, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N: tl.constexpr):
    """Row b's key span: end (exclusive), q_len, first valid key, first tile's key, tile count."""
    n_end = tl.load(lengths_ptr + b)
    q_len = tl.load(q_lens_ptr + b)
    kv_lo = tl.load(kv_start_ptr + b)
    # keys below the first real query's window are seen by no query: skip their tiles
    lo = tl.where(window > 0, tl.maximum(kv_lo, n_end - q_len - window + 1), kv_lo)
    lo = (tl.maximum(lo, 0) // BLOCK_N) * BLOCK_N
    n_tiles = (tl.maximum(n_end - lo, 0) + BLOCK_N - 1) // BLOCK_N
    return n_end, q_len, kv_lo, lo, n_tiles


@_jit
def _rows_tiles(offs_b, B, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N: tl.constexpr):
    """_row_span's tile count for a vector of rows (0 past the batch), as int64."""
    ok = offs_b < B
    n_end = tl.load(lengths_ptr + offs_b, mask=ok, other=0)
    q_len = tl.load(q_lens_ptr + offs_b, mask=ok, other=0)
    lo = tl.load(kv_start_ptr + offs_b, mask=ok, other=0)
    lo = tl.where(window > 0, tl.maximum(lo, n_end - q_len - window + 1), lo)
    lo = (tl.maximum(lo, 0) // BLOCK_N) * BLOCK_N
    n_tiles = (tl.maximum(n_end - lo, 0) + BLOCK_N - 1) // BLOCK_N
    return tl.where(ok, n_tiles, 0).to(tl.int64)


@_jit
def _work_line(x, b, B, HM, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N: tl.constexpr):
    """Scan the stream-K work line: rows in order, HM tasks (kv-head x m-block) of n_tiles each.

    Returns the total tile count W, the row holding tile x with the tile where it starts, and
    the tile where row b starts. Rows that end at or before x form a prefix: ends only grow.
    """
    total = tl.zeros([], tl.int64)
    row_x = tl.zeros([], tl.int64)
    start_x = tl.zeros([], tl.int64)
    start_b = tl.zeros([], tl.int64)
    for b0 in range(0, B, ROWS):
        offs_b = b0 + tl.arange(0, ROWS)
        work = _rows_tiles(offs_b, B, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N) * HM
        before_x = (total + tl.cumsum(work, 0) <= x) & (offs_b < B)
        row_x += tl.sum(before_x.to(tl.int64), 0)
        start_x += tl.sum(tl.where(before_x, work, 0), 0)
        start_b += tl.sum(tl.where(offs_b < b, work, 0), 0)
        total += tl.sum(work, 0)
    return total, row_x, start_x, start_b


@_jit
def _query_block(q_ptr, b, hkv, mb, n_end, q_len, window,
                 stride_qb, stride_qt, stride_qh, stride_qd, G, M, D,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (BLOCK_M, BLOCK_D) query block of one kv head: row r is token r // G, head r % G."""
    offs_r = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    t = offs_r // G
    hq = hkv * G + offs_r % G
    row_ok = (offs_r < M) & (t < q_len)
    ptrs = (q_ptr + b.to(tl.int64) * stride_qb + t[:, None] * stride_qt + hq[:, None] * stride_qh
            + offs_d[None, :] * stride_qd)
    q = tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    upper = n_end - q_len + t  # last key token t may see
    lower = tl.where(window > 0, upper - window, -1)  # keys <= lower fall out of the window
    return q, row_ok, upper, lower


@_jit
def _attend(q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            lo, tile_lo, tile_hi, kv_lo, n_end, upper, lower, row_ok, qk_scale, D,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            PRECISION: tl.constexpr):
    """Online softmax (base 2) of the query block over tiles [tile_lo, tile_hi) of a row."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    # finite start: a fully masked row keeps m = -1e30 and l = 0 instead of producing NaN
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for tile in range(tile_lo, tile_hi):
        offs_n = lo + tile * BLOCK_N + tl.arange(0, BLOCK_N)
        # never read left pads or slots past the length: they may hold anything, NaN included
        kv_ok = (offs_n >= kv_lo) & (offs_n < n_end)
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=kv_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
        s = tl.dot(q, k, input_precision=PRECISION) * qk_scale  # (M, N), log2 units
        seen = (row_ok[:, None] & kv_ok[None, :] & (offs_n[None, :] <= upper[:, None])
                & (offs_n[None, :] > lower[:, None]))
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=kv_ok[:, None] & d_ok[None, :], other=0.0)  # (N, D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc


@_jit
def _store_partial(lse_ptr, part_ptr, slot, m_i, l_i, acc, mb, M, D,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partial of one slot: lse = m + log2(l) per row (-inf if it saw nothing) and o = acc / l."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    lse = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
    row = slot.to(tl.int64) * BLOCK_M + offs_m
    live = mb * BLOCK_M + offs_m < M  # rows past group*T are never read: skip their bytes
    tl.store(lse_ptr + row, lse, mask=live)
    tl.store(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :], acc / l_safe[:, None],
             mask=live[:, None] & (offs_d[None, :] < D))


# Shape ints stay runtime values: Triton would otherwise compile a variant for each one equal to 1
# (MHA's G, one split, the lean flag), variants the AOT sweep would not see.
@_jit(do_not_specialize=("window", "B", "Hkv", "G", "M", "MB", "D", "num_parts", "lean"))
def _decode_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, q_lens_ptr, kv_start_ptr, lse_ptr, part_ptr, plan_ptr,
                   stride_qb, stride_qt, stride_qh, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   qk_scale, window, B, Hkv, G, M, MB, D, num_parts, lean,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Both schedules cut one work line: row after row, HM = Hkv * MB tasks (kv head, m-block)
    of that row's n_tiles K/V tiles each, W tiles in all.

    split (flash-decoding): program p = task * S + s takes share s of its own task's tiles.
    lean (stream-K): program p takes tiles [p W / P, (p+1) W / P), crossing tasks as it must.
    A program runs one segment per task it meets; each writes a partial (lse, o) to its slot.
    """
    p = tl.program_id(0)
    HM = Hkv * MB
    is_lean = lean != 0
    split_b = (p // num_parts // HM).to(tl.int64)  # split: the program's row; lean: unused
    if is_lean:
        W = _work_line(0, 0, B, HM, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N)[0]
        start = (p * W) // num_parts
        end = ((p + 1) * W) // num_parts
    else:  # coordinates within row split_b, which is all a split program sees
        W = tl.full([], 1, tl.int64)
        n_tiles = _row_span(split_b, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N)[4]
        per_split = (n_tiles + num_parts - 1) // num_parts
        task_start = ((p // num_parts) % HM) * n_tiles
        start = (task_start + tl.minimum((p % num_parts) * per_split, n_tiles)).to(tl.int64)
        end = (task_start + tl.minimum((p % num_parts + 1) * per_split, n_tiles)).to(tl.int64)
    cur = start
    while cur < end:
        if is_lean:
            located = _work_line(cur, 0, B, HM, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N)
            b = located[1]
            row_off = located[2]
        else:
            b = split_b
            row_off = tl.zeros([], tl.int64)
        n_end, q_len, kv_lo, lo, n_tiles = _row_span(b, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N)
        j = (cur - row_off) // n_tiles  # task of row b: kv head j // MB, m-block j % MB
        task_start = row_off + j * n_tiles
        tile_lo = cur - task_start
        tile_hi = tl.minimum(end - task_start, n_tiles)
        hkv = j // MB
        mb = j % MB
        q, row_ok, upper, lower = _query_block(q_ptr, b, hkv, mb, n_end, q_len, window,
                                               stride_qb, stride_qt, stride_qh, stride_qd, G, M, D,
                                               BLOCK_M, BLOCK_D)
        k_base = k_ptr + b * stride_kb + hkv * stride_kh
        v_base = v_ptr + b * stride_vb + hkv * stride_vh
        m_i, l_i, acc = _attend(q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                lo, tile_lo, tile_hi, kv_lo, n_end, upper, lower, row_ok, qk_scale, D,
                                BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        task = b * HM + j
        # split: slot p. lean: slot p + task, unique since along the line p and task never
        # decrease and one of them grows from one segment to the next
        _store_partial(lse_ptr, part_ptr, tl.where(is_lean, p + task, p), m_i, l_i, acc, mb, M, D,
                       BLOCK_M, BLOCK_D)
        # lean: the program that opens a task records which programs share it, for the merge;
        # tile x belongs to program ceil((x + 1) P / W) - 1
        opens = is_lean & (tile_lo == 0)
        last = ((task_start + n_tiles) * num_parts + W - 1) // W - 1
        tl.store(plan_ptr + 2 * task, p.to(tl.int64), mask=opens)
        tl.store(plan_ptr + 2 * task + 1, last - p + 1, mask=opens)
        cur = task_start + tile_hi
    tl.store(plan_ptr + 2 * B * HM, W, mask=is_lean & (p == 0))


@_jit(do_not_specialize=("window", "B", "Hq", "Hkv", "G", "MB", "D", "num_parts", "lean", "BLOCK_M"))
def _merge_kernel(out_ptr, lse_ptr, part_ptr, plan_ptr, lengths_ptr, q_lens_ptr, kv_start_ptr,
                  stride_ob, stride_ot, stride_oh, stride_od,
                  window, B, Hq, Hkv, G, MB, D, num_parts, lean, BLOCK_M,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One output row (b, t, hq): log-sum-exp combine of its partials, zeros for padded tokens."""
    t = tl.program_id(0) // Hq
    hq = tl.program_id(0) % Hq
    b = tl.program_id(1)
    r = t * G + hq % G  # row in the kv head's query block
    task = (b * Hkv + hq // G) * MB + r // BLOCK_M
    _, q_len, _, _, n_tiles = _row_span(b, lengths_ptr, q_lens_ptr, kv_start_ptr, window, BLOCK_N)
    # split: slots task * S + s for the shares s that got tiles (a prefix). lean: programs
    # first .. first + count - 1 share the task, in slots p + task; an empty program (W < P)
    # wrote nothing. A task without tiles has no partials: its rows see no key.
    is_lean = lean != 0
    in_plan = is_lean & (n_tiles > 0)
    per_split = tl.maximum((n_tiles + num_parts - 1) // num_parts, 1)
    first = tl.where(is_lean, tl.load(plan_ptr + 2 * task, mask=in_plan, other=0), task * num_parts)
    count = tl.where(is_lean, tl.load(plan_ptr + 2 * task + 1, mask=in_plan, other=0),
                     (n_tiles + per_split - 1) // per_split)
    W = tl.load(plan_ptr + 2 * B * Hkv * MB, mask=is_lean, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    m_run = tl.full([], -1.0e30, tl.float32)
    l_run = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, count, SLOTS):
        k = first + s0 + tl.arange(0, SLOTS)
        ok = s0 + tl.arange(0, SLOTS) < count
        # (tl.where, not scalar | vector: the interpreter turns that into ints)
        ok = ok & tl.where(is_lean, (k + 1) * W // num_parts > k * W // num_parts, True)
        row = tl.where(is_lean, k + task, k).to(tl.int64) * BLOCK_M + r % BLOCK_M
        lse = tl.load(lse_ptr + row, mask=ok, other=float("-inf"))
        o = tl.load(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :],
                    mask=ok[:, None] & (offs_d[None, :] < D), other=0.0)
        m_new = tl.maximum(m_run, tl.max(lse, 0))
        alpha = tl.exp2(m_run - m_new)
        w = tl.exp2(lse - m_new)
        l_run = l_run * alpha + tl.sum(w, 0)
        acc = acc * alpha + tl.sum(w[:, None] * o, 0)
        m_run = m_new
    out = tl.where((l_run > 0) & (t < q_len), acc / tl.where(l_run > 0, l_run, 1.0), 0.0)
    ptrs = (out_ptr + b.to(tl.int64) * stride_ob + t * stride_ot + hq * stride_oh
            + offs_d * stride_od)
    tl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < D)


# ----------------------------------------------------------------------------------------------
# Launchers

_TL_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _next_pow2(x):
    return 1 << max(0, (int(x) - 1).bit_length())


def block_config(D, rows, dtype):
    """Tile sizes for head dim D, group*T query rows and the cache dtype (the AOT sweep's space)."""
    # few distinct tiles keep the AOT sweep short; padding costs flops, not bytes (loads are masked)
    BLOCK_D = max(64, _next_pow2(D))  # compiled tl.dot needs M, N, K >= 16
    BLOCK_M = 16 if rows <= 16 else 64  # past 64 rows, extra m-blocks re-read K/V (from L2)
    BLOCK_N = 64 if BLOCK_D * dtype.itemsize <= 256 else 32  # K/V tiles of at most 16 KiB
    num_warps = 8 if BLOCK_M * BLOCK_D >= 64 * 256 else 4
    return dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D), dict(num_warps=num_warps, num_stages=2)


def merge_options(meta):
    return dict(num_warps=1 if meta["BLOCK_D"] <= 64 else 2)


def precision(dtype):
    # fp32 callers want fp32 answers (token-identical greedy): no TF32 in the dots
    return "ieee" if dtype == torch.float32 else "tf32"


_SM_COUNT = {}


def sm_count(device):
    """Streaming multiprocessors of the device; a small stand-in off CUDA (interpreter)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


PROGRAMS_PER_SM = 2  # two resident programs per SM hide each other's load latency (untuned guess)


def default_num_splits(B, Hkv, MB, S_max, BLOCK_N, device):
    """Splits for split-K from the capacity, not the lengths: no host sync, graph-capturable."""
    tasks = B * Hkv * MB
    want = math.ceil(PROGRAMS_PER_SM * sm_count(device) / tasks)
    cap = max(1, math.ceil(S_max / (4 * BLOCK_N)))  # a split of a full cache keeps >= 4 tiles
    return max(1, min(want, cap, 64))


def lean_num_programs(B, Hkv, MB, S_max, BLOCK_N, device):
    """Persistent grid for stream-K: a few programs per SM, never more than the tiles could need."""
    return max(1, min(PROGRAMS_PER_SM * sm_count(device), B * Hkv * MB * math.ceil(S_max / BLOCK_N)))


def _triton_decode_attention(q, k_cache, v_cache, lengths, q_lens, kv_start, window, sm_scale,
                             schedule, num_splits):
    B, T, Hq, D = q.shape
    Hkv, S_max = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    M = G * T
    meta, opts = block_config(D, M, q.dtype)
    BLOCK_M, BLOCK_N = meta["BLOCK_M"], meta["BLOCK_N"]
    MB = math.ceil(M / BLOCK_M)
    out = torch.empty((B, T, Hq, D), dtype=q.dtype, device=q.device)
    if schedule == "split":
        parts = num_splits or default_num_splits(B, Hkv, MB, S_max, BLOCK_N, q.device)
        n_slots = B * Hkv * MB * parts
    else:
        parts = num_splits or lean_num_programs(B, Hkv, MB, S_max, BLOCK_N, q.device)
        n_slots = parts + B * Hkv * MB
    # lean: (first program, program count) per task, then the total tile count W
    plan = torch.empty(2 * B * Hkv * MB + 1 if schedule == "lean" else 1, dtype=torch.int64, device=q.device)
    lse = torch.empty((n_slots, BLOCK_M), dtype=torch.float32, device=q.device)
    part = torch.empty((n_slots, BLOCK_M, meta["BLOCK_D"]), dtype=torch.float32, device=q.device)
    lean = int(schedule == "lean")
    grid = (parts,) if lean else (B * Hkv * MB * parts,)
    _decode_kernel[grid](q, k_cache, v_cache, lengths, q_lens, kv_start, lse, part, plan,
                         *q.stride(), *k_cache.stride(), *v_cache.stride(), sm_scale * LOG2E, window,
                         B, Hkv, G, M, MB, D, parts, lean, **meta, PRECISION=precision(q.dtype), **opts)
    _merge_kernel[(T * Hq, B)](out, lse, part, plan, lengths, q_lens, kv_start, *out.stride(),
                               window, B, Hq, Hkv, G, MB, D, parts, lean, BLOCK_M, BLOCK_N=BLOCK_N,
                               BLOCK_D=meta["BLOCK_D"], **merge_options(meta))
    return out


# ----------------------------------------------------------------------------------------------
# Dispatcher


def backend(x):
    """"triton" or "torch": the backend `decode_attention` picks for tensors on x's device, now.
    Callers that choose between the kernel and their own path (models/attention.py) ask this."""
    forced = os.environ.get("DECODING_ATTN", "").strip().lower()
    if forced in ("triton", "torch"):
        return forced
    if forced:
        raise ValueError(f"DECODING_ATTN must be 'triton' or 'torch', got {forced!r}")
    return "triton" if x.is_cuda and triton is not None else "torch"


def decode_attention(q, k_cache, v_cache, lengths, *, q_lens=None, kv_start=None, window=0,
                     sm_scale=None, schedule="split", num_splits=None):
    """Attention of T new queries per row over a static cache; returns a tensor like q.

    q (B, T, Hq, D); k_cache, v_cache (B, Hkv, S_max, D), any strides; lengths int32 (B,) after
    appending the T tokens; q_lens int32 (B,) real queries per row (right-padded, default T);
    kv_start int32 (B,) first valid key (left-padded caches, default 0); window > 0 is a sliding
    window; schedule "split" (flash-decoding) or "lean" (stream-K); num_splits overrides the
    split count (split) or the persistent grid size (lean).
    """
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError("expected q (B, T, Hq, D) and k_cache, v_cache (B, Hkv, S_max, D)")
    B, T, Hq, D = q.shape
    if k_cache.shape[0] != B or k_cache.shape[3] != D or Hq % k_cache.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    if D > 256:
        raise ValueError(f"head dim {D} > 256")
    if schedule not in ("split", "lean"):
        raise ValueError(f"schedule must be 'split' or 'lean', got {schedule!r}")
    lengths, q_lens, kv_start, sm_scale = resolve_defaults(q, lengths, q_lens, kv_start, sm_scale)
    window = int(window or 0)
    if backend(q) == "torch":
        return torch_decode_attention(q, k_cache, v_cache, lengths, q_lens, kv_start, window, sm_scale)
    if triton is None:
        raise RuntimeError("DECODING_ATTN=triton but Triton is not installed")
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("Triton on CPU tensors needs TRITON_INTERPRET=1 set before import")
    if q.dtype not in _TL_DTYPE or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"Triton path takes fp16/bf16/fp32 with matching caches, got {q.dtype}")
    return _triton_decode_attention(q, k_cache, v_cache, lengths, q_lens, kv_start, window,
                                    float(sm_scale), schedule, num_splits)


class _CallableModule(types.ModuleType):
    """The package re-exports `decode_attention` under this submodule's own name (docs/DESIGN.md 9's
    `kernels.decode_attention(...)`). Any import order that hands out the module instead (a package
    resolved as a namespace, a stale editable install) still calls the dispatcher."""

    def __call__(self, *args, **kwargs):
        return decode_attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
