"""One script for the lent GPU: kernel checks and sweep, copy bandwidth, end-to-end decode speed.

    python -m bench.gpu_suite --out bench/results          # on the GPU (about 6 minutes)
    python -m bench.gpu_suite --smoke --out /tmp/suite     # CPU rehearsal of every code path

Each section runs on its own; a failing one is recorded in the results and the rest go on.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from bench.common import device_slug, machine, markdown_table, timed, write_results
from models import DecoderConfig, LlamaDecoder

# A TinyLlama-1.1B-shaped config (random weights): what "a ~1B Llama" means here.
CONFIG_1B = dict(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632,
                 max_seq_len=4096)
CONFIG_SMOKE = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=512)


def kernel_check(smoke: bool) -> dict:
    """Split-K and stream-K against the float64 reference in bf16 and fp16 on a small matrix."""
    from kernels import decode_attention, decode_attention_reference
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for B, T, Hq, Hkv, D, S, window in [(3, 1, 8, 2, 64, 300, 0), (2, 4, 8, 1, 128, 1000, 0),
                                            (4, 3, 4, 4, 80, 513, 64), (1, 1, 32, 8, 128, 4096, 0)]:
            if smoke and S > 600:
                continue
            q = torch.randn(B, T, Hq, D, generator=gen).to(dev, dtype)
            k = torch.randn(B, Hkv, S, D, generator=gen).to(dev, dtype)
            v = torch.randn(B, Hkv, S, D, generator=gen).to(dev, dtype)
            lengths = torch.randint(T, S + 1, (B,), generator=gen).to(dev, torch.int32)
            q_lens = torch.randint(1, T + 1, (B,), generator=gen).to(dev, torch.int32)
            ref = decode_attention_reference(q, k, v, lengths, q_lens=q_lens, window=window).float()
            for schedule in ("split", "lean"):
                out = decode_attention(q, k, v, lengths, q_lens=q_lens, window=window, schedule=schedule).float()
                err = float((out - ref).abs().max())
                tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
                rows.append({"dtype": str(dtype).split(".")[-1], "shape": f"B{B} T{T} H{Hq}/{Hkv} D{D} S{S} w{window}",
                             "schedule": schedule, "max_abs_err": err, "ok": err <= tol})
    return {"rows": rows, "all_ok": all(r["ok"] for r in rows)}


def kernel_sweep(smoke: bool, out: Path) -> dict:
    from bench import kernel_bench
    results, _ = kernel_bench.run(smoke=smoke, out=out)
    return results


def build(cfg: dict, dtype, seed: int = 0) -> LlamaDecoder:
    torch.manual_seed(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = LlamaDecoder(DecoderConfig(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dtype).eval()


def kv_bytes_read(cfg: DecoderConfig, batch: int, context: int, dtype) -> int:
    return 2 * cfg.n_layers * batch * cfg.n_kv_heads * context * cfg.head_dim * torch.finfo(dtype).bits // 8


def e2e_1b(smoke: bool, bw: float | None) -> dict:
    """Greedy tokens/s: engine eager, engine with CUDA graphs, HF eager, HF static cache + compile."""
    import decoding
    from models.hf_weights import to_hf
    dtype = torch.float32 if smoke else torch.bfloat16
    cfg_d = CONFIG_SMOKE if smoke else CONFIG_1B
    model = build(cfg_d, dtype)
    cfg = model.config
    hf = to_hf(model).to(model.device)
    prompt_len, new = (8, 8) if smoke else (128, 128)
    runs = 1 if smoke else 3
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows, outputs = [], {}
    for batch in (1, 8):
        ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=model.device)
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)

        def engine(graphs: bool):
            model.cuda_graph_max_tokens = 16 if graphs else 0
            outputs[(batch, graphs)] = decoding.generate(model, ids, **kw).sequences

        variants = [("engine eager", lambda: engine(False), batch), ("engine cuda graphs", lambda: engine(True), batch),
                    ("HF generate eager", lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), **kw), batch)]
        # HF's static cache auto-compiles on CUDA (about a minute): batch 1 only, after batch 8's rows
        if batch == 8 and not smoke and torch.cuda.is_available():
            ids1 = ids[:1]
            variants.append(("HF static cache + compile (B=1)",
                             lambda: hf.generate(ids1, attention_mask=torch.ones_like(ids1), cache_implementation="static", **kw), 1))
        for name, fn, b in variants:
            try:
                t, times = timed(fn, runs=runs, warmup=1)
            except Exception as e:  # record and go on: one baseline failing must not lose the rest
                rows.append({"batch": b, "variant": name, "error": repr(e)[:300]})
                continue
            tok_s = b * new / t
            ctx = prompt_len + new // 2
            step_bytes = weight_bytes + kv_bytes_read(cfg, b, ctx, dtype)
            util = step_bytes * (new / t) / (bw * 1e9) if bw else None
            rows.append({"batch": b, "variant": name, "seconds": t, "tokens_per_s": tok_s,
                         "bandwidth_util": util, "runs": [round(x, 4) for x in times]})
        for r in rows:
            base = next((x for x in rows if x["batch"] == r["batch"] and x["variant"] == "HF generate eager"
                         and "seconds" in x), None)
            if base and "tokens_per_s" in r:
                r["vs_hf_eager"] = r["tokens_per_s"] / base["tokens_per_s"]
        if (batch, True) in outputs and (batch, False) in outputs:
            a, b = outputs[(batch, True)], outputs[(batch, False)]
            rows.append({"batch": batch, "variant": "token match graphs vs eager",
                         "match_rate": float((a == b).float()[:, prompt_len:].mean())})
    return {"config": cfg_d, "dtype": str(dtype), "prompt_len": prompt_len, "new_tokens": new,
            "weight_bytes": weight_bytes, "rows": rows,
            "note": "bandwidth_util = (weight bytes + KV bytes read at mid context) x decode steps/s / copy GB/s; "
                    "steps/s over the whole call, prefill included, so a lower bound"}


def verify_cost(smoke: bool) -> dict:
    """Time of one (k+1)-token verify forward relative to a one-token step, eager, k = 1..15."""
    dtype = torch.float32 if smoke else torch.bfloat16
    model = build(CONFIG_SMOKE if smoke else CONFIG_1B, dtype)
    model.cuda_graph_max_tokens = 0
    context = 64 if smoke else 1024
    cache = model.new_cache(1, context + 32)
    with torch.no_grad():
        model(torch.randint(0, model.vocab_size, (1, context), device=model.device), cache)
        rows = []
        for T in range(1, 17):
            ids = torch.randint(0, model.vocab_size, (1, T), device=model.device)

            def step():
                model(ids, cache)
                cache.truncate(T)
            t, _ = timed(step, runs=3 if smoke else 20, warmup=2)
            rows.append({"k": T - 1, "tokens": T, "ms": t * 1e3})
    for r in rows:
        r["relative_to_1_token"] = r["ms"] / rows[0]["ms"]
    return {"context": context, "rows": rows[1:], "one_token_ms": rows[0]["ms"]}


SECTIONS = ["kernel_check", "kernel_sweep", "verify_cost", "e2e_1b"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="results root; a folder named after the device is made in it")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one run each: a CPU rehearsal")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    args = ap.parse_args(argv)
    info = machine()
    out = Path(args.out) / device_slug(info)
    results = {"machine": info, "smoke": args.smoke}
    bw = None
    for name in args.only or SECTIONS:
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            if name == "kernel_check":
                results[name] = kernel_check(args.smoke)
            elif name == "kernel_sweep":
                sweep = kernel_sweep(args.smoke, out)
                bw = sweep["copy"]["gb_per_s"]
                results[name] = {"copy": sweep["copy"], "seconds": sweep.get("seconds"),
                                 "see": "kernel_bench.json / .md / .png"}
            elif name == "e2e_1b":
                results[name] = e2e_1b(args.smoke, bw)
            elif name == "verify_cost":
                results[name] = verify_cost(args.smoke)
        except Exception:
            results[name] = {"error": traceback.format_exc()[-2000:]}
        results[name]["section_seconds"] = round(time.time() - t0, 1)
        print(json.dumps(results[name], default=str)[:1500], flush=True)
        write_results(out, "gpu_suite", results, render(results))
    plot(results, out)
    return results


def render(results: dict) -> str:
    m = results["machine"]
    md = [f"# GPU suite on {m['device']}", "", f"torch {m['torch']}, triton {m.get('triton')}, "
          f"transformers {m.get('transformers')}" + (" (smoke run)" if results.get("smoke") else ""), ""]
    if "copy" in results.get("kernel_sweep", {}):
        md += [f"Device-to-device copy: {results['kernel_sweep']['copy']['gb_per_s']:.0f} GB/s (read + written); "
               "the kernel sweep is in kernel_bench.md.", ""]
    if "rows" in results.get("kernel_check", {}):
        md += ["## Kernel correctness vs float64 reference", "",
               markdown_table(results["kernel_check"]["rows"], ["dtype", "shape", "schedule", "max_abs_err", "ok"]), ""]
    if "rows" in results.get("e2e_1b", {}):
        md += ["## End to end, greedy, ~1B Llama shape, random bf16 weights", "",
               markdown_table(results["e2e_1b"]["rows"], ["batch", "variant", "tokens_per_s", "vs_hf_eager",
                                                         "bandwidth_util", "match_rate", "error"]), ""]
    if "rows" in results.get("verify_cost", {}):
        md += ["## Verify cost: (k+1)-token forward / 1-token forward", "",
               markdown_table(results["verify_cost"]["rows"], ["k", "ms", "relative_to_1_token"]), ""]
    return "\n".join(md)


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in results.get("e2e_1b", {}).get("rows", []) if "tokens_per_s" in r]
    if rows:
        labels = [f"{r['variant']}\nB={r['batch']}" for r in rows]
        axes[0].barh(labels, [r["tokens_per_s"] for r in rows])
        axes[0].set_xlabel("tokens/s (greedy)")
        axes[0].set_title("~1B Llama, end to end")
    vc = results.get("verify_cost", {}).get("rows", [])
    if vc:
        axes[1].plot([r["k"] for r in vc], [r["relative_to_1_token"] for r in vc], marker="o")
        axes[1].set_xlabel("k (draft tokens verified)")
        axes[1].set_ylabel("time / one-token step")
        axes[1].set_title("cost of a (k+1)-token verify")
    fig.suptitle(results["machine"]["device"])
    fig.tight_layout()
    fig.savefig(out / "gpu_suite.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
