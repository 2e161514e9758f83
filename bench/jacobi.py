"""Jacobi, Gauss-Seidel-Jacobi and speculative Jacobi decoding on the shipped target: target forwards
per generated token and tokens/s vs greedy (SJD vs sampling), on code prompts.

    python -m bench.jacobi                        # CPU, 1 thread -> bench/results/cpu/
    python -m bench.jacobi --smoke --out /tmp/x   # a tiny random model, a few seconds

Prompts are the middle --prompt-len tokens of validation-split stdlib files (models/training/corpus.py), run
one at a time (batch 1). Every call generates exactly --new-tokens tokens (min_new_tokens =
max_new_tokens). tokens/s = new tokens / wall time of whole calls (prefill included), summed over
the prompts, median of --runs runs; within a run every method takes its turn on a prompt before
the next prompt, so bursts of machine noise hit all methods alike. forwards/token = target forwards
(Jacobi iterations, prefill included) / new tokens: the hardware-independent figure.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import decoding
from bench.common import code_prompts, machine, markdown_table, write_results

INITS = ("pad", "repeat", "ngram")


def tiny_target():
    from models import DecoderConfig, LlamaDecoder
    torch.manual_seed(0)
    return LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
                                      eos_token_id=2, pad_token_id=3, tie_embeddings=True)).eval()


def methods(blocks, inits, temperatures) -> dict:
    """name -> (family, generate kwargs)."""
    out = {"greedy": ("greedy", {})}
    for strategy in ("jacobi", "gs_jacobi"):
        for n in blocks:
            for init in inits:
                out[f"{strategy} n={n} {init}"] = (strategy, dict(strategy=strategy, block_size=n, jacobi_init=init))
    for t in temperatures:
        sample = dict(do_sample=True, seed=0, temperature=t)
        out[f"sample T={t}"] = ("sample", sample)
        for n in blocks[:2]:
            for init in ("pad", "ngram"):
                out[f"sjd n={n} {init} T={t}"] = ("sjd", dict(sample, strategy="sjd", block_size=n, jacobi_init=init))
    return out


def measure(model, calls: dict, prompts, n: int, runs: int) -> list[dict]:
    for _, kw in calls.values():  # warm up every path once
        decoding.generate(model, [prompts[0][:8]], max_new_tokens=4, min_new_tokens=4, **kw)
    walls = {name: [] for name in calls}
    outs, forwards = {}, {}
    for _ in range(runs):
        total = dict.fromkeys(calls, 0.0)
        for i, ids in enumerate(prompts):  # every method on this prompt, then the next
            for name, (_, kw) in calls.items():
                t0 = time.perf_counter()
                out = decoding.generate(model, [ids], max_new_tokens=n, min_new_tokens=n, **kw)
                total[name] += time.perf_counter() - t0
                outs[name, i] = out.sequences[0, len(ids):]
                forwards[name, i] = out.stats.target_forwards
        for name in calls:
            walls[name].append(total[name])
    tokens = n * len(prompts)
    rows = []
    for name, (family, kw) in calls.items():
        wall = statistics.median(walls[name])
        row = dict(method=name, family=family, block_size=kw.get("block_size"), init=kw.get("jacobi_init"),
                   temperature=kw.get("temperature"), tokens_per_s=tokens / wall, wall_s=wall,
                   forwards_per_token=sum(forwards[name, i] for i in range(len(prompts))) / tokens, runs=walls[name])
        if family in ("greedy", "jacobi", "gs_jacobi"):  # deterministic: greedy's tokens, one for one
            same = [(outs[name, i] == outs["greedy", i]).float().mean() for i in range(len(prompts))]
            row["match_vs_greedy"] = float(sum(same) / len(same))
        rows.append(row)
    base = {r["method"]: r["tokens_per_s"] for r in rows}
    for r in rows:
        ref = "greedy" if r["temperature"] is None else f"sample T={r['temperature']}"
        r["speedup"] = r["tokens_per_s"] / base[ref]
        r["baseline"] = ref
    return rows


def plot(out: Path, rows: list[dict], device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"greedy": "tab:gray", "jacobi": "tab:blue", "gs_jacobi": "tab:orange", "sample": "tab:gray",
              "sjd": "tab:green"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.9 + 0.24 * len(rows)), sharey=True)
    ys = range(len(rows))
    c = [colors[r["family"]] for r in rows]
    a.barh(ys, [r["forwards_per_token"] for r in rows], color=c)
    a.axvline(1.0, color="black", linewidth=0.8)
    a.set_yticks(ys, [r["method"] for r in rows], fontsize=7)
    a.invert_yaxis()
    a.set(xlabel="target forwards per generated token (greedy = 1)", title="forwards per token (lower is better)")
    b.barh(ys, [r["speedup"] for r in rows], color=c)
    b.axvline(1.0, color="black", linewidth=0.8)
    b.set(xlabel="tokens/s over greedy (SJD: over sampling at the same temperature)",
          title=f"wall-clock speedup, {device}")
    fig.tight_layout()
    fig.savefig(out / "jacobi.png", dpi=100)
    plt.close(fig)


def summary(rows: list[dict]) -> str:
    get = {r["method"]: r for r in rows}
    lines = ["## Reading\n"]
    for n in sorted({r["block_size"] for r in rows if r["block_size"]}):
        for s in ("jacobi", "gs_jacobi"):
            pad, ngram = get.get(f"{s} n={n} pad"), get.get(f"{s} n={n} ngram")
            if pad and ngram:
                lines.append(f"- {s} n={n}: forwards/token pad {pad['forwards_per_token']:.3f}, ngram "
                             f"{ngram['forwards_per_token']:.3f}; tokens/s vs greedy pad {pad['speedup']:.2f}x, "
                             f"ngram {ngram['speedup']:.2f}x")
    best = min((r for r in rows if r["family"] != "greedy"), key=lambda r: r["forwards_per_token"], default=None)
    if best:
        lines.append(f"- fewest forwards per token: {best['method']} ({best['forwards_per_token']:.3f}, "
                     f"{1 / best['forwards_per_token']:.2f} tokens per forward)")
    fastest = max((r for r in rows if r["family"] not in ("greedy", "sample")), key=lambda r: r["speedup"], default=None)
    if fastest:
        lines.append(f"- fastest wall clock: {fastest['method']} ({fastest['speedup']:.2f}x its baseline)")
    return "\n".join(lines)


COLUMNS = ["method", "forwards_per_token", "tokens_per_s", "speedup", "baseline", "match_vs_greedy"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--smoke", action="store_true", help="a tiny random model, a few seconds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    if args.smoke:
        model = tiny_target()
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(4, 64, (2, 12), generator=g).tolist()
        n, runs, calls = 8, 1, methods((3,), ("pad", "ngram"), (1.0,))
    else:
        from models.checkpoint import load
        model = load("models/shipped/target", dtype=torch.float32)
        prompts, n, runs = code_prompts(args.prompts, args.prompt_len), args.new_tokens, args.runs
        calls = methods((4, 8, 16), INITS, (1.0, 0.5))
    rows = measure(model, calls, prompts, n, runs)
    print(markdown_table(rows, COLUMNS), flush=True)

    info = machine()
    argv_used = sys.argv[1:] if argv is None else list(argv)
    payload = {"machine": info, "loadavg_after": os.getloadavg(), "argv": argv_used, "dtype": str(model.dtype),
               "new_tokens": n, "prompts": len(prompts), "prompt_len": len(prompts[0]), "runs": runs,
               "parameters": sum(p.numel() for p in model.parameters()), "rows": rows}
    md = ["# Jacobi, Gauss-Seidel-Jacobi and speculative Jacobi decoding on the shipped target\n",
          f"Machine: {info['device']}, {info.get('threads')} torch threads, torch {info['torch']}, python "
          f"{info['python']}; load average after the run {os.getloadavg()[0]:.1f} (a shared machine); "
          f"`python -m bench.jacobi {' '.join(argv_used)}`.\n",
          f"{len(prompts)} code prompts of {len(prompts[0])} tokens, one at a time, {n} new tokens each "
          f"(min_new_tokens), {model.dtype}, median of {runs} runs. forwards_per_token = target forwards "
          "(prefill included) per new token; speedup = tokens/s over `baseline` (greedy, or sampling at the "
          "same temperature with HF's default top_k=50, for SJD); match_vs_greedy = fraction of tokens equal "
          "to greedy's.\n",
          markdown_table(rows, COLUMNS), "", summary(rows)]
    write_results(args.out, "jacobi", payload, "\n".join(md))
    plot(args.out, rows, info["device"])
    return payload


if __name__ == "__main__":
    main()
