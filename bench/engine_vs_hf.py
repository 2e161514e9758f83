"""Engine vs Hugging Face generate(): tokens/s on the same weights, greedy, fixed output length.

    python -m bench.engine_vs_hf                        # CPU, about 5 minutes -> bench/results/cpu/
    python -m bench.engine_vs_hf --smoke --out /tmp/x   # tiny random models, 2 runs, seconds

Pairs, each timed in this one process with engine and HF runs alternating (machine noise hits
both alike), medians of --runs calls after one warm-up call each:
- native: `decoding.generate` on the native model (the shipped target, fp32) vs HF `generate` on
  its `to_hf` export (LlamaForCausalLM with identical weights);
- adapter-llama: `decoding.generate` on that HF export (the HF adapter) vs its own `generate`;
- adapter-gpt2: the same on a random-weight GPT-2 of about the target's size;
- dropin-llama: `model.generate(...)` after `decoding.hf.install(model)` on that HF export (the
  drop-in runs it on the native decoder built on the model's own weights) vs HF `generate` on an
  untouched copy (install re-lays the weights it shares, so HF's side keeps HF's own layout);
- dropin-gpt2: the same on the GPT-2 (the drop-in runs it on the native GPT-2 decoder built on the
  model's own weights).
Greedy, `max_new_tokens = min_new_tokens`, `eos_token_id=None`, so every call emits exactly
batch x new tokens; tokens/s = those tokens / wall time of the whole call (prefill included).
`match` says whether engine and HF returned the same tokens.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common import device_slug, machine, markdown_table, sync, write_results
from models.artifacts import SHIPPED

ROOT = Path(__file__).resolve().parent
SHIPPED_TARGET = SHIPPED / "target"
COLUMNS = ["pair", "engine", "params_m", "batch", "new_tokens", "engine_tok_s", "hf_tok_s", "speedup", "match"]


def native_pair(smoke: bool, device):
    """The native model and its HF export (same weights), fp32."""
    from models import DecoderConfig, LlamaDecoder, checkpoint
    from models.hf_weights import to_hf
    if smoke:
        torch.manual_seed(0)
        native = LlamaDecoder(DecoderConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                            hidden_dim=128, max_seq_len=256, eos_token_id=2, pad_token_id=3))
    else:
        native = checkpoint.load(SHIPPED_TARGET, dtype=torch.float32)
    native = native.to(device).eval()
    return native, to_hf(native).to(device)


def gpt2(smoke: bool, device):
    """A random-weight GPT-2 (the target's size unless smoke)."""
    import transformers
    torch.manual_seed(0)
    size = dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4) if smoke else \
        dict(vocab_size=4096, n_embd=256, n_layer=8, n_head=4)
    cfg = transformers.GPT2Config(n_positions=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3, **size)
    return transformers.GPT2LMHeadModel(cfg).to(device).eval()


def pairs(smoke: bool, device):
    """(pair, engine label, engine model, HF model); a drop-in pair's engine model is an installed
    HF model, called through its own generate()."""
    import copy

    import decoding.hf
    native, hf_llama = native_pair(smoke, device)
    hf_gpt2 = gpt2(smoke, device)
    yield "native", "native Llama (shipped target)" if not smoke else "native Llama (random)", native, hf_llama
    yield "adapter-llama", "HF adapter", hf_llama, hf_llama
    yield "adapter-gpt2", "HF adapter", hf_gpt2, hf_gpt2
    yield "dropin-llama", "drop-in (native decoder)", decoding.hf.install(copy.deepcopy(hf_llama)), hf_llama
    yield "dropin-gpt2", "drop-in (native GPT-2 decoder)", decoding.hf.install(copy.deepcopy(hf_gpt2)), hf_gpt2


def params_m(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def measure(engine_model, hf_model, batch: int, prompt_len: int, new: int, runs: int, bar) -> dict:
    import decoding
    import decoding.hf
    vocab = hf_model.config.vocab_size
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(4, vocab, (batch, prompt_len), generator=gen).to(hf_model.device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None)
    mask = torch.ones_like(ids)
    if decoding.hf.is_installed(engine_model):  # the drop-in: the user's own call, as HF's
        calls = {"engine": lambda: engine_model.generate(ids, attention_mask=mask, **kw)}
    else:
        calls = {"engine": lambda: decoding.generate(engine_model, ids, **kw).sequences}
    calls["hf"] = lambda: hf_model.generate(ids, attention_mask=mask, **kw)
    outputs = {name: fn() for name, fn in calls.items()}  # warm-up, and the tokens to compare
    times = {name: [] for name in calls}
    for _ in range(runs):  # alternate, so drifting machine load hits both alike
        for name, fn in calls.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            bar.update(1)
    tok_s = {name: batch * new / statistics.median(ts) for name, ts in times.items()}
    return dict(batch=batch, new_tokens=new, prompt_len=prompt_len, engine_tok_s=tok_s["engine"],
                hf_tok_s=tok_s["hf"], speedup=tok_s["engine"] / tok_s["hf"],
                match=bool(torch.equal(outputs["engine"].cpu(), outputs["hf"].cpu())),
                engine_s=[round(t, 4) for t in times["engine"]], hf_s=[round(t, 4) for t in times["hf"]])


def run(smoke: bool = False, out=None, runs=None, threads: int = 1, batches=(1, 8), new=None, prompt_len=None,
        device="cpu", only=None):
    from tqdm import tqdm
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    runs = runs or (2 if smoke else 7)
    new = new or (8 if smoke else 64)
    prompt_len = prompt_len or (8 if smoke else 32)
    info = machine()
    out = Path(out) if out is not None else ROOT / "results" / ("cpu" if device.type == "cpu" else device_slug(info))
    t0 = time.time()
    rows = []
    todo = [p for p in pairs(smoke, device) if not only or p[0] in only]
    with tqdm(total=len(todo) * len(batches) * runs * 2, desc="engine vs HF", unit="call", file=sys.stderr) as bar:
        for pair, label, model, hf_model in todo:
            for batch in batches:
                bar.set_postfix_str(f"{pair} batch {batch}")
                row = measure(model, hf_model, batch, prompt_len, new, runs, bar)
                rows.append(dict(pair=pair, engine=label, params_m=params_m(model), **row))
    results = dict(machine=info, smoke=smoke, runs=runs, threads=torch.get_num_threads(), device=str(device),
                   dtype="float32", seconds=round(time.time() - t0, 1), rows=rows)
    write_results(out, "engine_vs_hf", results, render(results))
    plot(results, out / "engine_vs_hf.png")
    return results, out


def render(results: dict) -> str:
    m = results["machine"]
    head = (f"Engine vs HF `generate`, greedy, fp32, {results['rows'][0]['new_tokens']} new tokens after a "
            f"{results['rows'][0]['prompt_len']}-token prompt, median of {results['runs']} runs: {m['device']}, "
            f"{results['threads']} thread(s), torch {m['torch']}, transformers {m.get('transformers')}, "
            f"Python {m['python']}" + (" (smoke run: tiny random models)" if results["smoke"] else ""))
    shown = [dict(r, engine_tok_s=f"{r['engine_tok_s']:.0f}", hf_tok_s=f"{r['hf_tok_s']:.0f}",
                  speedup=f"{r['speedup']:.2f}x") for r in results["rows"]]
    return head + "\n\n" + markdown_table(shown, COLUMNS)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = results["rows"]
    labels = [f"{r['pair']}\nbatch {r['batch']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.2))
    ax.bar([i - 0.2 for i in x], [r["hf_tok_s"] for r in rows], 0.4, label="HF generate()")
    ax.bar([i + 0.2 for i in x], [r["engine_tok_s"] for r in rows], 0.4, label="decoding.generate()")
    for i, r in zip(x, rows):
        ax.annotate(f"{r['speedup']:.2f}x", (i + 0.2, r["engine_tok_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"engine vs HF, greedy fp32, {results['threads']} thread(s): {results['machine']['device']}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.engine_vs_hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny random models, 2 runs, 8 new tokens")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/cpu/, or the GPU's name)")
    ap.add_argument("--runs", type=int, help="timed calls per side (default 7; smoke 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument("--new-tokens", type=int, help="tokens generated per row (default 64; smoke 8)")
    ap.add_argument("--prompt-len", type=int, help="prompt tokens per row (default 32; smoke 8)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--pairs", nargs="+", help="only these pairs (default: all)")
    args = ap.parse_args(argv)
    results, out = run(args.smoke, args.out, args.runs, args.threads, tuple(args.batches), args.new_tokens,
                       args.prompt_len, args.device, args.pairs)
    print(render(results))
    print(f"\nwrote {out}/engine_vs_hf.{{json,md,png}} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
