"""Decode-attention kernel sweep: split-K and stream-K against torch SDPA (and flash-attn).

    python -m bench.kernel_bench                           # GPU: bench/results/<device>/ (~1-2 min)
    python -m bench.kernel_bench --smoke --out /tmp/kb     # CPU rehearsal: tiny shapes, torch path

For each shape: microseconds (triton.testing.do_bench: median, L2 flushed between runs), achieved
GB/s = (K/V bytes of the rows' real lengths + q + out) / time, and that as a fraction of a measured
device-to-device copy (bytes read + written). Before timing, each shape's split and lean outputs
are checked against the float64 reference (contexts up to 4k) or against each other (longer).
SDPA sees every row at full length with no mask (the bytes it reads are the same): a bandwidth
baseline, not a drop-in (it cannot do per-row lengths). flash-attn runs with its own cache layout
(B, S, H, D), per-row cache_seqlens and causal verify blocks.
"""
from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import device_slug, machine, markdown_table, timed, write_results
from kernels import decode_attention, decode_attention_reference

CONTEXTS = (4096, 32768, 131072)
BATCHES = (1, 8)
HEADS = ((32, 8), (32, 1))  # (Hq, Hkv): GQA and MQA
TOKENS = (1, 4)  # plain decode and a 4-token verify block
HEAD_DIM = 128
SMOKE = dict(contexts=(64, 200), batches=(1, 2), heads=((4, 2), (4, 1)), tokens=(1, 2), head_dim=16)
BUDGET_S = 170  # the whole sweep stays inside 3 minutes of GPU time


def _timer(smoke):
    if smoke:
        return lambda fn: timed(fn, runs=3, warmup=1)[0] * 1e6
    import triton.testing
    return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3


def copy_bandwidth(device, smoke):
    """Device-to-device copy in GB/s, counting bytes read + bytes written."""
    n = (1 << 22) if smoke else (1 << 30)
    x = torch.empty(n, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    us = _timer(smoke)(lambda: y.copy_(x))
    return {"bytes_copied": n, "us": us, "gb_per_s": 2 * n / (us * 1e-6) / 1e9, "counted": "read + written"}


def _flash_attn():
    try:
        from flash_attn import flash_attn_with_kvcache
        return flash_attn_with_kvcache
    except Exception:
        return None


def make_shape(B, T, Hq, Hkv, D, lengths, dtype, device, flash):
    """q (B, T, Hq, D), caches (B, Hkv, S, D) filled to `lengths`, plus (B, S, H, D) copies for flash-attn."""
    S = max(lengths)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, T, Hq, D, generator=g, device=device, dtype=dtype)
    k = torch.randn(B, Hkv, S, D, generator=g, device=device, dtype=dtype)
    v = torch.randn(B, Hkv, S, D, generator=g, device=device, dtype=dtype)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    kv_bshd = (k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()) if flash else None
    return q, k, v, lens, kv_bshd


def bytes_moved(q, k, lengths):
    """K and V bytes of every row's real keys, plus q read and out written."""
    Hkv, D = k.shape[1], k.shape[3]
    return 2 * sum(lengths) * Hkv * D * k.element_size() + 2 * q.numel() * q.element_size()


def check(q, k, v, lens, lengths, tol):
    """Split and lean agree with each other and, for short contexts, with the float64 reference."""
    split = decode_attention(q, k, v, lens, schedule="split")
    lean = decode_attention(q, k, v, lens, schedule="lean")
    err = {"split_vs_lean": (split.float() - lean.float()).abs().max().item()}
    if max(lengths) <= 4096:
        ref = decode_attention_reference(q, k, v, lens).float()
        err["split_vs_ref"] = (split.float() - ref).abs().max().item()
        err["lean_vs_ref"] = (lean.float() - ref).abs().max().item()
    err["ok"] = all(e <= tol for key, e in err.items() if key != "ok")
    return err


def cuda_graph_check(device, dtype):
    """Capture one decode step in a CUDA graph, change lengths in place, replay: no host sync inside."""
    q, k, v, lens, _ = make_shape(2, 1, 8, 2, 64, [300, 1000], dtype, device, False)
    out = {}
    for schedule in ("split", "lean"):
        decode_attention(q, k, v, lens, schedule=schedule)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            res = decode_attention(q, k, v, lens, schedule=schedule)
        lens.copy_(torch.tensor([700, 20], dtype=torch.int32, device=device))
        graph.replay()
        ref = decode_attention_reference(q, k, v, lens).float()
        out[schedule] = (res.float() - ref).abs().max().item()
        lens.copy_(torch.tensor([300, 1000], dtype=torch.int32, device=device))
    return out


def sweep(smoke, device, dtype, copy_gbs, deadline):
    grid = SMOKE if smoke else dict(contexts=CONTEXTS, batches=BATCHES, heads=HEADS, tokens=TOKENS, head_dim=HEAD_DIM)
    shapes = [(B, T, Hq, Hkv, [ctx] * B, f"{ctx // 1024}k" if ctx >= 1024 else str(ctx))
              for ctx in grid["contexts"] for B in grid["batches"] for Hq, Hkv in grid["heads"] for T in grid["tokens"]]
    long, short = grid["contexts"][-1], grid["contexts"][0]
    shapes.append((8, 1, 32 if not smoke else 4, 8 if not smoke else 2, [long] + [short] * 7, "ragged"))
    flash = None if smoke else _flash_attn()
    time_us = _timer(smoke)
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    rows = []
    for B, T, Hq, Hkv, lengths, ctx_label in shapes:
        base = dict(context=ctx_label, batch=B, heads=f"{Hq}/{Hkv}", T=T, max_len=max(lengths))
        if time.time() > deadline:
            rows.append(dict(base, impl="-", error="skipped: time budget"))
            continue
        try:
            q, k, v, lens, kv_bshd = make_shape(B, T, Hq, Hkv, grid["head_dim"], lengths, dtype, device, flash)
            nbytes = bytes_moved(q, k, lengths)
            err = check(q, k, v, lens, lengths, tol)
            impls = {"split": lambda: decode_attention(q, k, v, lens, schedule="split"),
                     "lean": lambda: decode_attention(q, k, v, lens, schedule="lean"),
                     "sdpa (no mask)": lambda: F.scaled_dot_product_attention(
                         q.transpose(1, 2), k, v, enable_gqa=Hq != Hkv)}
            if flash is not None:
                seqlens = lens.clone()
                impls["flash-attn"] = lambda: flash(q, kv_bshd[0], kv_bshd[1], cache_seqlens=seqlens, causal=True)
            for name, fn in impls.items():
                row = dict(base, impl=name)
                try:
                    us = time_us(fn)
                    gbs = nbytes / (us * 1e-6) / 1e9
                    row.update(us=us, gb_per_s=gbs, frac_of_copy=gbs / copy_gbs)
                    if name in ("split", "lean"):
                        row.update(max_err=max(e for key, e in err.items() if key != "ok"), checked=err["ok"])
                except Exception as e:  # one failing baseline must not sink the sweep
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
            del q, k, v, kv_bshd
        except Exception:
            rows.append(dict(base, impl="-", error=traceback.format_exc()[-600:]))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def render(results):
    m = results["machine"]
    md = [f"# Decode-attention kernels on {m['device']}", "",
          f"torch {m['torch']}, triton {m.get('triton')}, {results['dtype']}, head dim {results['head_dim']}"
          + (" (smoke run: CPU, torch path, tiny shapes)" if results["smoke"] else ""), "",
          f"Device copy: {results['copy']['gb_per_s']:.0f} GB/s (bytes read + written). GB/s below counts "
          "K/V bytes of each row's real length + q + out; frac = GB/s / copy GB/s.", ""]
    if "cuda_graph" in results:
        md += [f"CUDA graph capture, lengths changed before replay, max |err| vs reference: {results['cuda_graph']}", ""]
    md.append(markdown_table(results["rows"], ["context", "batch", "heads", "T", "impl", "us", "gb_per_s",
                                               "frac_of_copy", "max_err", "checked", "error"]))
    return "\n".join(md)


def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["rows"] if "frac_of_copy" in r and r["context"] != "ragged"]
    panels = sorted({(r["batch"], r["heads"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, (B, heads) in zip(axes[0], panels):
        for impl in sorted({r["impl"] for r in rows}):
            for T in sorted({r["T"] for r in rows}):
                pts = sorted((r["max_len"], r["frac_of_copy"]) for r in rows
                             if (r["batch"], r["heads"], r["impl"], r["T"]) == (B, heads, impl, T))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{impl}, T={T}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (keys per row)")
        ax.set_title(f"B={B}, Hq/Hkv={heads}")
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("fraction of copy bandwidth")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"decode attention, {results['machine']['device']}")
    fig.tight_layout()
    fig.savefig(out / "kernel_bench.png", dpi=110)
    plt.close(fig)


def run(smoke=False, out=None):
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if device.type != "cuda" and not smoke:
        raise SystemExit("no GPU: use --smoke for the CPU rehearsal")
    t0 = time.time()
    info = machine()
    out = Path(out) if out is not None else Path(__file__).resolve().parent / "results" / device_slug(info)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if smoke else torch.float16
    results = {"machine": info, "smoke": smoke, "dtype": str(dtype), "head_dim": SMOKE["head_dim"] if smoke else HEAD_DIM}
    results["copy"] = copy_bandwidth(device, smoke)
    if device.type == "cuda":
        results["cuda_graph"] = cuda_graph_check(device, dtype)
    results["rows"] = sweep(smoke, device, dtype, results["copy"]["gb_per_s"], t0 + BUDGET_S)
    results["seconds"] = round(time.time() - t0, 1)
    write_results(out, "kernel_bench", results, render(results))
    plot(results, out)
    return results, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU rehearsal: tiny shapes through the torch path")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<device>/)")
    args = ap.parse_args(argv)
    results, out = run(args.smoke, args.out)
    print(render(results))
    print(f"\nwrote {out}/kernel_bench.{{json,md,png}} in {results['seconds']} s")


if __name__ == "__main__":
    main()
