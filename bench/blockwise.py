"""Blockwise parallel decoding (Stern et al.) on the shipped target with its heads: target forwards
per generated token and tokens/s vs the engine's greedy, for k in {2, 4, 6} proposals per round,
exact acceptance and the lossy top-k acceptance (whose match rate vs greedy is reported apart).

    python -m bench.blockwise                        # CPU, 1 thread -> bench/results/cpu/
    python -m bench.blockwise --heads DIR --name N   # other heads for the shipped target -> N.md/json/png
    python -m bench.blockwise --smoke --out /tmp/x   # a tiny random model and heads, a few seconds

Prompts are slices of validation-split stdlib files (models/training/corpus.py). Every call generates exactly
--new-tokens tokens per row (min_new_tokens = max_new_tokens, eos off). tokens/s = new tokens / wall
time of whole calls (prefill included) summed over the prompts; the median over --runs runs, and
within a run every method takes its turn on a prompt before the next prompt, so noise bursts hit
all methods alike. Target forwards per token count the prefill forward too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import decoding
from bench.common import code_prompts, machine, markdown_table, write_results
from models.artifacts import SHIPPED

KS = (1, 2, 4, 6)
TOP_KS = (2, 3)


# -- models and prompts ----------------------------------------------------------------------------

def shipped(dtype, heads_dir):
    from models.checkpoint import load
    from models.heads import load_heads
    target = load(SHIPPED / "target", dtype=dtype)
    return target, load_heads(heads_dir, target)


def tiny():
    from models import DecoderConfig, LlamaDecoder
    from models.heads import BlockwiseHeads, HeadsConfig
    torch.manual_seed(1)
    target = LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                        max_seq_len=256)).eval()
    with torch.no_grad():
        for p in target.parameters():
            p.normal_(0, 0.3)
        heads = BlockwiseHeads(32, max(KS), config=HeadsConfig.for_target(target, max(KS)))
        heads.w2.normal_(0, 0.05)
    return target, heads


def random_prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(4, vocab, (n, length), generator=g).tolist()


# -- methods ---------------------------------------------------------------------------------------

def methods(heads, ks, top_ks, batch: int) -> dict:
    """name -> (acceptance, k, top-k, generate kwargs). Top-k acceptance at batch 1 only."""
    out = {"greedy": ("greedy", None, None, {})}
    for k in ks:
        out[f"blockwise exact k={k}"] = ("exact", k, None, dict(strategy="blockwise", heads=heads, block_size=k))
    if batch == 1:
        for top in top_ks:
            for k in ks:
                out[f"blockwise top-{top} k={k}"] = ("topk", k, top, dict(
                    strategy="blockwise", heads=heads, block_size=k, acceptance="topk", acceptance_top_k=top))
    return out


def measure(target, calls: dict, prompts, batch: int, n: int, runs: int) -> list[dict]:
    groups = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
    fixed = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=None)
    for _, _, _, kw in calls.values():  # warm up every path once
        decoding.generate(target, [groups[0][0][:8]], max_new_tokens=4, eos_token_id=None, **kw)
    walls = {name: [] for name in calls}
    last = {}
    for _ in range(runs):
        total = dict.fromkeys(calls, 0.0)
        last = {name: [] for name in calls}
        for rows in groups:  # every method on this prompt, then the next
            for name, (_, _, _, kw) in calls.items():
                t0 = time.perf_counter()
                out = decoding.generate(target, rows, **fixed, **kw)
                total[name] += time.perf_counter() - t0
                last[name].append(out)
        for name in calls:
            walls[name].append(total[name])
    T = [len(g[0]) for g in groups]
    greedy = torch.cat([o.sequences[:, t:] for o, t in zip(last["greedy"], T)])
    rows = []
    tokens = n * len(prompts)
    for name, (acceptance, k, top, _) in calls.items():
        outs = last[name]
        seqs = torch.cat([o.sequences[:, t:] for o, t in zip(outs, T)])
        wall = statistics.median(walls[name])
        forwards = sum(o.stats.target_forwards for o in outs)  # per call, rows together
        row = dict(batch=batch, method=name, acceptance=acceptance, k=k, top_k=top, tokens_per_s=tokens / wall,
                   wall_s=wall, target_forwards_per_token=forwards * batch / tokens,
                   tau=statistics.mean(o.stats.tau for o in outs), runs=walls[name])
        rates = [o.stats.accept_rate_by_position for o in outs if o.stats.accept_rate_by_position]
        if rates:
            row["accept_rate_by_position"] = [round(statistics.mean(r[i] for r in rates), 3) for i in range(len(rates[0]))]
        same = seqs == greedy
        row["match_vs_greedy"] = float(same.float().mean())  # position by position
        row["prefix_match_vs_greedy"] = float(same.long().cumprod(1).sum(1).float().mean() / n)  # until the first change
        rows.append(row)
    base = next(r["tokens_per_s"] for r in rows if r["method"] == "greedy")
    for r in rows:
        r["x_greedy"] = r["tokens_per_s"] / base
    return rows


def plot(out: Path, rows: list[dict], device: str, stem: str = "blockwise") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5))
    sel = [r for r in rows if r["batch"] == 1]
    a.barh(range(len(sel)), [r["x_greedy"] for r in sel], color=["tab:gray" if r["acceptance"] == "greedy" else
                                                                  "tab:blue" if r["acceptance"] == "exact" else
                                                                  "tab:orange" for r in sel])
    a.set_yticks(range(len(sel)), [r["method"] for r in sel], fontsize=8)
    a.axvline(1.2, color="k", ls=":", label="goal 1.2x (exact)")
    a.set(xlabel="tokens/s over greedy (batch 1, whole calls)", title=f"blockwise decoding, {device}")
    a.invert_yaxis()
    a.legend()
    for name, pick in [("exact", lambda r: r["acceptance"] == "exact")] + \
            [(f"top-{t} (lossy)", lambda r, t=t: r["top_k"] == t) for t in sorted({r["top_k"] for r in sel if r["top_k"]})]:
        pts = [r for r in sel if pick(r)]
        b.plot([r["k"] for r in pts], [r["target_forwards_per_token"] for r in pts], marker="o", label=name)
    b.axhline(1.0, color="tab:gray", ls="--", label="greedy")
    b.axhline(0.5, color="k", ls=":", label="goal 0.5 (exact)")
    b.set(xlabel="k (proposals per round = heads used)", ylabel="target forwards per generated token (batch 1)",
          title="target forwards per token vs k", ylim=(0, 1.1))
    b.legend()
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=100)
    plt.close(fig)


def _train_eval(heads_dir: Path) -> dict | None:
    import json
    f = Path(heads_dir) / "train_log.json"
    return json.loads(f.read_text()).get("eval") if f.exists() else None


def goals(rows: list[dict]) -> str:
    exact = [r for r in rows if r["batch"] == 1 and r["acceptance"] == "exact"]
    if not exact:
        return ""
    best_f = min(exact, key=lambda r: r["target_forwards_per_token"])
    best_x = max(exact, key=lambda r: r["x_greedy"])
    return "\n".join([
        "## Goals (CPU, batch 1, exact acceptance)\n",
        f"- <= 0.5 target forwards per generated token: best measured {best_f['target_forwards_per_token']:.3f} "
        f"({best_f['method']}) - {'met' if best_f['target_forwards_per_token'] <= 0.5 else 'missed'}",
        f"- >= 1.2x greedy tokens/s (the CPU issue's goal): best measured {best_x['x_greedy']:.2f}x "
        f"({best_x['method']}) - {'met' if best_x['x_greedy'] >= 1.2 else 'missed'}"])


COLUMNS = ["batch", "method", "tokens_per_s", "x_greedy", "target_forwards_per_token", "tau",
           "accept_rate_by_position"]
TOPK_COLUMNS = ["method", "x_greedy", "target_forwards_per_token", "tau", "match_vs_greedy", "prefix_match_vs_greedy"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--name", default="blockwise", help="results file stem")
    ap.add_argument("--smoke", action="store_true", help="tiny random model and heads, a few seconds")
    ap.add_argument("--heads", type=Path, default=SHIPPED / "heads", help="heads directory for the shipped target")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8, help="prompts (acceptance varies a lot between them)")
    ap.add_argument("--batch", type=int, default=4, help="the batched run's batch size (besides batch 1)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="fp32: exact acceptance is token-identical to greedy (checked: match_vs_greedy)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.smoke:
        target, heads = tiny()
        prompts, n, runs, ks, top_ks = random_prompts(4, 12, target.vocab_size), 8, 1, (2, 4), (2,)
    else:
        target, heads = shipped(getattr(torch, args.dtype), args.heads)
        prompts, n, runs, ks, top_ks = code_prompts(args.prompts, args.prompt_len), args.new_tokens, args.runs, KS, TOP_KS
    rows = []
    for batch in (1, args.batch):
        rows += measure(target, methods(heads, ks, top_ks, batch), prompts, batch, n, runs)
        print(markdown_table([r for r in rows if r["batch"] == batch], COLUMNS), flush=True)

    info = machine()
    argv_used = sys.argv[1:] if argv is None else list(argv)
    heads_name = "random (smoke)" if args.smoke else os.path.relpath(args.heads, SHIPPED.parent.parent)
    payload = {"machine": info, "loadavg_after": os.getloadavg(), "argv": argv_used, "dtype": str(target.dtype),
               "heads": heads_name, "heads_k": heads.k, "heads_kind": heads.config.kind, "new_tokens": n,
               "prompts": len(prompts),
               "prompt_len": len(prompts[0]), "runs": runs, "rows": rows}
    log = None if args.smoke else _train_eval(args.heads)
    if log:
        payload["heads_train_eval"] = log
    exact_rows = [r for r in rows if r["acceptance"] != "topk"]
    topk_rows = [r for r in rows if r["acceptance"] == "topk"]
    md = ["# Blockwise parallel decoding: shipped target + heads\n",
          f"Machine: {info['device']}, {info.get('threads')} torch threads, torch {info['torch']}, python "
          f"{info['python']}; load average after the run {os.getloadavg()[0]:.1f} (a shared machine); "
          f"`python -m bench.blockwise {' '.join(argv_used)}`.\n",
          f"Heads: {heads_name} ({heads.k} {heads.config.kind} heads). {len(prompts)} prompts of {len(prompts[0])} "
          f"tokens, {n} new tokens "
          f"per row (min_new_tokens, eos off), {target.dtype}; median of {runs} runs. tokens/s counts whole calls "
          "(prefill included) over all prompts; batch 1 = the prompts one at a time. k = proposals per round "
          "(heads used); a round emits up to k + 1 tokens. target_forwards_per_token counts the prefill; in "
          f"batches of {args.batch} the slowest row sets it. tau = tokens per target forward per row.\n",
          "" if not log else f"The heads' own evaluation (train_log.json: {log.get('rows')} held-out prompts of "
          f"{log.get('prompt_len')} tokens, {log.get('gen_len')} greedy tokens) estimated "
          f"{log.get('est_tokens_per_forward')} tokens per forward; head top-1 vs greedy {log.get('head_top1')}.\n",
          "## Exact acceptance (token-identical to greedy)\n",
          markdown_table(exact_rows, COLUMNS + ["match_vs_greedy"]), "",
          "## Top-k acceptance (lossy, batch 1)\n",
          "match_vs_greedy: fraction of positions equal to greedy's token; prefix_match_vs_greedy: mean "
          "fraction of tokens before the first difference.\n",
          markdown_table(topk_rows, TOPK_COLUMNS), "", goals(rows)]
    write_results(args.out, args.name, payload, "\n".join(md))
    plot(args.out, rows, info["device"], args.name)
    return payload


if __name__ == "__main__":
    main()
