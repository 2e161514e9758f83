"""Speculative decoding on the shipped target + draft (and target + prompt lookup): tokens/s and tau
vs the engine's own greedy and sampling, and vs HF assisted generation on the same weights.

    python -m bench.speculative                        # CPU, 1 thread -> bench/results/cpu/
    python -m bench.speculative --smoke --out /tmp/x   # tiny random models, a few seconds

Prompts are slices of validation-split stdlib files (models/training/corpus.py). Every call generates
exactly --new-tokens tokens per row (eos_token_id=None, so no processor runs: the one-row
speculative path applies, decoding/strategies/speculative_row.py). tokens/s = new tokens /
wall time of whole calls (prefill included), summed over the prompts; batch 1 runs the prompts one
at a time, so its tokens/s is that of "4 single-row runs", and batch 4 runs them together. Each
figure is the median over --runs runs; within a run every method takes its turn on a prompt
before the next prompt, so bursts of machine noise hit all methods alike. tau = new tokens per
target forward per row, counted by forward hooks for HF.

At batch 1 the draft runs in --draft-dtype, by default what the CLI's --assistant-dtype auto picks
for one row: the shipped checkpoint's float16 where its compiled step beats float32 (a CPU with
AVX-512: half the bytes a step reads), else float32 (models.compiled_cpu.half_draft_pays). A
draft's dtype never changes the output (greedy rows still report match_vs_greedy). At the middle k
the same calls with the draft in the other dtype (float32 beside a half draft, float16 beside a
float32 one) run beside it. Batch 4 drafts in float32, as the CLI does for a batch: the
half-precision library was slower at 4 rows on both CPUs measured. HF's draft is float32 (eager
half-precision matmuls are slow on a CPU).

HF assisted generation reads k from the assistant's generation_config (docs/DESIGN.md 2): the bench
sets num_assistant_tokens=k, schedule "constant" and assistant_confidence_threshold=0 there, and
passes assistant_confidence_threshold=0 to the engine, so both draft exactly k tokens a round.
HF assisted generation runs batch 1 only. Beside them, the engine at the middle k with HF's default
confidence threshold (0.4: the draft stops where its own probability of its guess falls below it),
the setting a call gets unless it passes one.
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

KS = (2, 4, 6)


# -- models and prompts ----------------------------------------------------------------------------

def shipped(dtype, draft_dtype):
    from models.checkpoint import load
    return load("models/shipped/target", dtype=dtype), load("models/shipped/draft", dtype=draft_dtype)


def tiny_pair():
    from models import DecoderConfig, LlamaDecoder
    torch.manual_seed(0)
    common = dict(vocab_size=64, max_seq_len=256, eos_token_id=2, pad_token_id=3, bos_token_id=1, tie_embeddings=True)
    target = LlamaDecoder(DecoderConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, **common)).eval()
    draft = LlamaDecoder(DecoderConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, **common)).eval()
    return target, draft


def random_prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(4, vocab, (n, length), generator=g).tolist()


def to_hf(model):
    from models.hf_weights import to_hf as export
    return export(model)


class Counter:
    """Counts forwards of an HF model (a pre-hook), for tau and draft forwards."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


# -- methods -----------------------------------------------------------------------------------------

THRESHOLD = 0.4  # HF's default assistant_confidence_threshold, and the engine's
SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

def methods(target, draft, hf_target, hf_draft, batch: int, ks, beside=None) -> dict:
    """name -> (label, k, call(rows) -> (sequences, stats dict)). HF assisted only at batch 1.
    beside: the draft in another dtype, timed at the middle k (batch 1)."""
    exact = dict(assistant_confidence_threshold=0)
    sample = dict(do_sample=True, seed=0)
    out = {"engine greedy": ("greedy", None, {}), "engine sample": ("sample", None, sample)}
    for k in ks:
        out[f"engine spec greedy k={k}"] = ("spec greedy", k, dict(assistant_model=draft, num_assistant_tokens=k,
                                                                   **exact))
        out[f"engine spec sample k={k}"] = ("spec sample", k, dict(assistant_model=draft, num_assistant_tokens=k,
                                                                   **exact, **sample))
        out[f"engine lookup greedy k={k}"] = ("lookup greedy", k, dict(prompt_lookup_num_tokens=k))
    k = ks[len(ks) // 2]
    default = dict(assistant_model=draft, num_assistant_tokens=k, assistant_confidence_threshold=THRESHOLD)
    out[f"engine spec greedy k={k}, threshold {THRESHOLD}"] = ("spec greedy (threshold)", k, default)
    out[f"engine spec sample k={k}, threshold {THRESHOLD}"] = ("spec sample (threshold)", k, {**default, **sample})
    if beside is not None and batch == 1:
        other, name = dict(assistant_model=beside, num_assistant_tokens=k, **exact), SHORT[beside.dtype]
        out[f"engine spec greedy k={k}, draft {name}"] = (f"spec greedy (draft {name})", k, other)
        out[f"engine spec sample k={k}, draft {name}"] = (f"spec sample (draft {name})", k, {**other, **sample})
    calls = {name: (label, k, _engine(target, kw)) for name, (label, k, kw) in out.items()}
    if hf_target is not None:
        calls["HF greedy"] = ("HF greedy", None, _hf(hf_target, None, None, {}))
        calls["HF sample"] = ("HF sample", None, _hf(hf_target, None, None, dict(do_sample=True)))
        if batch == 1:  # HF is slow here: its sampling and lookup at the middle k only
            for k in ks:
                calls[f"HF assisted greedy k={k}"] = ("HF assisted greedy", k, _hf(hf_target, hf_draft, k, {}))
            k = ks[len(ks) // 2]
            calls[f"HF assisted sample k={k}"] = ("HF assisted sample", k,
                                                  _hf(hf_target, hf_draft, k, dict(do_sample=True)))
            calls[f"HF lookup greedy k={k}"] = ("HF lookup greedy", k,
                                                _hf(hf_target, None, k, dict(prompt_lookup_num_tokens=k)))
    return calls


def _engine(target, kw):
    def call(ids, n):
        out = decoding.generate(target, ids, max_new_tokens=n, eos_token_id=None, **kw)
        s = out.stats
        return out.sequences, dict(target_forwards=s.target_forwards, draft_forwards=s.draft_forwards,
                                   accept=s.accept_rate_by_position, row_tau=s.tau)
    return call


def _hf(hf_target, hf_draft, k, kw):
    counters = getattr(hf_target, "_bench_counter", None) or Counter(hf_target)
    hf_target._bench_counter = counters
    if hf_draft is not None:
        hf_draft._bench_counter = getattr(hf_draft, "_bench_counter", None) or Counter(hf_draft)

    def call(ids, n):
        if hf_draft is not None:  # HF reads these from the assistant (docs/DESIGN.md 2)
            gc = hf_draft.generation_config
            gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = k, "constant"
            gc.assistant_confidence_threshold = 0.0
        extra = dict(kw)
        if hf_draft is not None:
            extra["assistant_model"] = hf_draft
        before_t = counters.n
        before_d = hf_draft._bench_counter.n if hf_draft is not None else 0
        with torch.inference_mode():
            seq = hf_target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, eos_token_id=None,
                                     **extra)
        forwards = counters.n - before_t
        drafts = hf_draft._bench_counter.n - before_d if hf_draft is not None else 0
        return seq, dict(target_forwards=forwards, draft_forwards=drafts, accept=None, row_tau=n / forwards)
    return call


# -- measuring ---------------------------------------------------------------------------------------

def measure(calls: dict, prompts: list[list[int]], batch: int, n: int, runs: int) -> list[dict]:
    groups = [torch.tensor(prompts[i:i + batch]) for i in range(0, len(prompts), batch)]
    for _, _, call in calls.values():  # warm up every path once
        call(groups[0][:, :8], 2)
    walls = {name: [] for name in calls}
    last = {}
    for _ in range(runs):
        total = dict.fromkeys(calls, 0.0)
        info = {name: [] for name in calls}
        for ids in groups:  # every method on this prompt, then the next: noise bursts hit all alike
            for name, (_, _, call) in calls.items():
                t0 = time.perf_counter()
                seq, stats = call(ids, n)
                total[name] += time.perf_counter() - t0
                info[name].append((seq[:, ids.shape[1]:], stats))
        for name in calls:
            walls[name].append(total[name])
        last = info
    greedy = torch.cat([s for s, _ in last["engine greedy"]])
    rows = []
    for name, (label, k, _) in calls.items():
        seqs = torch.cat([s for s, _ in last[name]])
        stats = [st for _, st in last[name]]
        tokens = n * len(prompts)
        wall = statistics.median(walls[name])
        forwards = sum(st["target_forwards"] for st in stats)  # per call, rows together
        row = dict(batch=batch, method=name, label=label, k=k, tokens_per_s=tokens / wall, wall_s=wall,
                   tau=statistics.mean(st["row_tau"] for st in stats),
                   target_forwards_per_token=forwards * batch / tokens,
                   draft_forwards=sum(st["draft_forwards"] for st in stats), runs=walls[name])
        accept = [st["accept"] for st in stats if st["accept"]]
        if accept:
            row["accept_rate_by_position"] = [round(statistics.mean(a[i] for a in accept if len(a) > i), 3)
                                              for i in range(max(map(len, accept)))]
        if "greedy" in label:  # deterministic: must equal the engine's greedy output token for token
            row["match_vs_greedy"] = float((seqs == greedy).float().mean())
        rows.append(row)
    base = {r["method"]: r["tokens_per_s"] for r in rows}
    for r in rows:
        r["x_engine_greedy"] = r["tokens_per_s"] / base["engine greedy"]
        if "sample" in r["label"]:
            r["x_engine_sample"] = r["tokens_per_s"] / base["engine sample"]
        hf = {"spec greedy": "HF assisted greedy", "spec sample": "HF assisted sample",
              "lookup greedy": "HF lookup greedy"}.get(r["label"])
        if hf and f"{hf} k={r['k']}" in base:
            r["x_HF_same"] = r["tokens_per_s"] / base[f"{hf} k={r['k']}"]
    return rows


def plot(out: Path, rows: list[dict], device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5))
    for batch, color in ((1, "tab:blue"), (4, "tab:orange")):
        sel = [r for r in rows if r["batch"] == batch]
        xs = [i + (0.2 if batch == 4 else -0.2) for i in range(len(sel))]
        a.barh(xs, [r["tokens_per_s"] for r in sel], height=0.4, color=color, label=f"batch {batch}")
        if batch == 1:
            a.set_yticks(range(len(sel)), [r["method"] for r in sel], fontsize=7)
    a.set(xlabel="tokens/s (all rows, whole calls)", title=f"speculative decoding, {device}")
    a.invert_yaxis()
    a.legend()
    for label in ("spec greedy", "spec sample", "lookup greedy", "HF assisted greedy", "HF lookup greedy"):
        sel = [r for r in rows if r["batch"] == 1 and r["label"] == label]
        if sel:  # HF dashed: its tau equals the engine's where both run the same rule
            b.plot([r["k"] for r in sel], [r["tau"] for r in sel], marker="o", label=label,
                   linestyle="--" if label.startswith("HF") else "-")
    b.set(xlabel="k (guessed tokens per round)", ylabel="tau (tokens per target forward, batch 1)",
          title="tau vs k")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "speculative.png", dpi=100)
    plt.close(fig)


def goals(rows: list[dict]) -> str:
    """The issue's goals (CPU, shipped pair, batch 1, greedy), as measured."""
    get = {(r["batch"], r["method"]): r for r in rows}
    k4 = get.get((1, "engine spec greedy k=4"))
    if k4 is None:
        return ""
    out = ["## Goals (batch 1, greedy, k = 4)\n",
           f"- tau >= 2.5: measured {k4['tau']:.2f}",
           f"- >= 1.3x engine greedy tokens/s: measured {k4['x_engine_greedy']:.2f}x"]
    if "x_HF_same" in k4:
        out.append(f"- >= 1.3x HF assisted generation: measured {k4['x_HF_same']:.2f}x")
    b4 = [r for r in rows if r["batch"] > 1 and r["method"] == "engine spec greedy k=4"]
    if b4:
        out.append(f"- batch 4 faster than 4 single-row runs: {b4[0]['x_single_rows']:.2f}x")
    s4, t4 = get.get((1, "engine spec sample k=4")), get.get((1, f"engine spec greedy k=4, threshold {THRESHOLD}"))
    ts4 = get.get((1, f"engine spec sample k=4, threshold {THRESHOLD}"))
    if s4 is not None and t4 is not None and ts4 is not None:
        out += ["\n## The CPU issue's goals (batch 1, k = 4)\n",
                f"- >= 1.5x engine greedy: {k4['x_engine_greedy']:.2f}x with exactly 4 guesses a round, "
                f"{t4['x_engine_greedy']:.2f}x with threshold {THRESHOLD}",
                f"- speculative sampling >= 1.1x engine sampling: {s4['x_engine_sample']:.2f}x with exactly 4 guesses "
                f"a round, {ts4['x_engine_sample']:.2f}x with threshold {THRESHOLD}"]
        for name in SHORT.values():
            g, s = get.get((1, f"engine spec greedy k=4, draft {name}")), get.get((1, f"engine spec sample k=4, draft {name}"))
            if g is not None and s is not None:
                out.append(f"- the same with the draft in {name} (exactly 4 guesses): {g['x_engine_greedy']:.2f}x greedy, "
                           f"{s['x_engine_sample']:.2f}x sampling")
    return "\n".join(out)


COLUMNS = ["batch", "method", "tokens_per_s", "x_engine_greedy", "x_engine_sample", "x_HF_same", "tau",
           "target_forwards_per_token", "accept_rate_by_position", "match_vs_greedy"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny random models, a few seconds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4, help="prompts (= the batch-4 batch)")
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--no-hf", action="store_true", help="skip HF generate")
    ap.add_argument("--draft-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="the draft's weights at batch 1 (auto: what the CLI's --assistant-dtype auto runs for one "
                         "row; a draft never changes the output). The other dtype (float32 beside a half draft, "
                         "float16 beside float32) is timed beside it at the middle k")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="weights and activations (fp32: greedy modes are token-identical; the shipped "
                         "checkpoints are stored in fp16)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()

    if args.smoke:
        target, draft = tiny_pair()
        draft = draft.half() if args.draft_dtype == "auto" else draft.to(getattr(torch, args.draft_dtype))
        prompts, n, runs, ks = random_prompts(4, 12, target.vocab_size), 6, 1, (2,)
    else:
        target, draft = shipped(getattr(torch, args.dtype), None if args.draft_dtype == "auto" else
                                getattr(torch, args.draft_dtype))
        prompts, n, runs, ks = code_prompts(args.prompts, args.prompt_len), args.new_tokens, args.runs, KS
    import copy
    from models.compiled_cpu import fastest_draft
    if args.draft_dtype == "auto":  # the checkpoint's dtype where it pays, else fp32
        draft = fastest_draft(draft, 1)
    draft32 = draft if draft.dtype == torch.float32 else copy.deepcopy(draft).float()
    beside = draft32 if draft is not draft32 else copy.deepcopy(draft).half()
    hf_target = hf_draft = None
    if not args.no_hf:  # HF's draft in float32: its eager half-precision matmuls are slow on a CPU
        hf_target, hf_draft = to_hf(target), to_hf(draft32)
    rows = []
    for batch in (1, len(prompts)):  # a batch drafts in float32: the half library is slower at 4 rows
        calls = methods(target, draft if batch == 1 else draft32, hf_target, hf_draft, batch, ks, beside)
        rows += measure(calls, prompts, batch, n, runs)
        print(markdown_table([r for r in rows if r["batch"] == batch], COLUMNS), flush=True)
    single = {r["method"]: r["tokens_per_s"] for r in rows if r["batch"] == 1}
    for r in rows:
        if r["batch"] > 1 and r["method"] in single:
            r["x_single_rows"] = r["tokens_per_s"] / single[r["method"]]

    info = machine()
    params = {"target": sum(p.numel() for p in target.parameters()),
              "draft": sum(p.numel() for p in draft.parameters())}
    argv_used = sys.argv[1:] if argv is None else list(argv)
    payload = {"machine": info, "loadavg_after": os.getloadavg(), "argv": argv_used, "dtype": str(target.dtype),
               "draft_dtype": str(draft.dtype),
               "new_tokens": n, "prompts": len(prompts), "prompt_len": len(prompts[0]), "runs": runs,
               "parameters": params, "rows": rows}
    md = ["# Speculative decoding: shipped target + draft, prompt lookup, HF assisted generation\n",
          f"Machine: {info['device']}, {info.get('threads')} torch threads, torch {info['torch']}, "
          f"transformers {info['transformers']}, python {info['python']}; load average after the run "
          f"{os.getloadavg()[0]:.1f} (a shared machine); `python -m bench.speculative "
          f"{' '.join(argv_used)}`.\n",
          f"{len(prompts)} prompts of {len(prompts[0])} tokens, {n} new tokens per row (eos off), "
          f"target {target.dtype}, draft {draft.dtype} at batch 1, float32 at batch {len(prompts)} (a draft never "
          "changes the output); "
          f"median of {runs} runs. Target {params['target']:,} parameters, draft {params['draft']:,}. "
          "tokens/s counts whole calls (prefill included) over all prompts; batch 1 = the prompts one at a "
          "time. x_single_rows: batch 4 over 4 single-row runs of the same method.\n",
          "Columns: x_engine_greedy / x_engine_sample = tokens/s over the engine's own greedy / sampling at "
          "the same batch; x_HF_same = over HF's run of the same method and k (HF assisted: batch 1 only); "
          "tau = tokens per target forward per row (accepted + bonus); target_forwards_per_token = per call "
          "(at batch 4 the slowest row sets it); match_vs_greedy = fraction of tokens equal to engine greedy.\n",
          markdown_table(rows, COLUMNS + ["x_single_rows"]), "", goals(rows)]
    write_results(args.out, "speculative", payload, "\n".join(md))
    plot(args.out, rows, info["device"])
    return payload


if __name__ == "__main__":
    main()
