"""Beam search tokens/s: the engine on the native model vs HF beam search on the same weights.

    python -m bench.beam                         # shipped target, fp32, 1 thread -> bench/results/cpu/
    python -m bench.beam --smoke --out /tmp/x    # a tiny random model, a few seconds

The shipped target (models.checkpoint.load, stored fp16, run in fp32: the CPU's fast dtype and the
one where the engine promises identical tokens) and its HF export (models.hf_weights.to_hf) decode
the same left-padded batch of Python-stdlib prompts (128 tokens, a function's worth of code; --prompt)
with num_beams 4 and 8, batch 1 and 4.
min_new_tokens = max_new_tokens fixes the output length. tokens/s = generated tokens of the returned
sequences / wall time of the whole call (prefill included); median of runs that alternate engine and
HF, so machine noise hits both alike; on a shared machine the ratio of CPU seconds per call (one
thread) is the steadier figure, reported beside it. The engine's sequences are checked against HF's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common import machine, markdown_table, timed, write_results

STDLIB_FILES = ["textwrap.py", "json/decoder.py", "heapq.py", "bisect.py"]


def prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
    """The first `length - 3 * row` tokens of stdlib files: rows of different lengths (left padding)."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for i in range(batch):
        text = (root / STDLIB_FILES[i % len(STDLIB_FILES)]).read_text()
        rows.append(tokenizer.encode(text[:2000])[:length - 3 * i])
    return rows


def models(smoke: bool):
    from models import DecoderConfig, LlamaDecoder
    from models.checkpoint import load
    from models.hf_weights import to_hf
    if smoke:
        torch.manual_seed(0)
        native = LlamaDecoder(DecoderConfig(vocab_size=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                            max_seq_len=256, eos_token_id=2, pad_token_id=0)).eval()
        with torch.no_grad():  # decisive logits, so engine and HF agree on every argmax
            for p in native.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.15)
        return native, to_hf(native), None
    from models.tokenizer import Tokenizer
    native = load("models/shipped/target", dtype=torch.float32).eval()
    return native, to_hf(native), Tokenizer.load()


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = torch.tensor(r), 1
    return ids, mask


def measure(native, hf, ids, mask, beams: int, new: int, runs: int) -> dict:
    import decoding
    kw = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beams, do_sample=False)

    def engine():
        return decoding.generate(native, ids, attention_mask=mask, **kw)

    def reference():
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=mask, **kw)

    ours, theirs = engine().sequences, reference()  # warm-up, and the token check
    times, cpu = {"engine": [], "hf": []}, {"engine": [], "hf": []}
    for _ in range(runs):  # alternate, so noise hits both
        for name, fn in (("engine", engine), ("hf", reference)):
            start = time.process_time()  # CPU seconds of this (single-threaded) process: robust to load
            times[name].append(timed(fn, 1, warmup=0)[0])
            cpu[name].append(time.process_time() - start)
    tokens = ids.shape[0] * new  # generated tokens of the returned sequences (length fixed)
    row = {"batch": ids.shape[0], "num_beams": beams, "prompt_len": ids.shape[1], "new_tokens": new, "runs": runs}
    for name, ts in times.items():
        row[f"{name}_s"] = statistics.median(ts)
        row[f"{name}_tok_s"] = tokens / row[f"{name}_s"]
    row["speedup"] = row["engine_tok_s"] / row["hf_tok_s"]
    row["cpu_time_speedup"] = statistics.median(cpu["hf"]) / statistics.median(cpu["engine"])
    row["token_match"] = float((ours == theirs).float().mean()) if ours.shape == theirs.shape else 0.0
    return row


def plot(out: Path, rows: list[dict], device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"B={r['batch']}\nbeams={r['num_beams']}" for r in rows]
    x = torch.arange(len(rows)).tolist()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], [r["engine_tok_s"] for r in rows], 0.4, label="engine (native)")
    ax.bar([i + 0.2 for i in x], [r["hf_tok_s"] for r in rows], 0.4, label="HF generate")
    for i, r in zip(x, rows):
        ax.text(i - 0.2, r["engine_tok_s"], f"{r['speedup']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set(ylabel="generated tokens/s (median)", title=f"beam search, {device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "beam.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny random model, a few seconds")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new", type=int, default=32, help="tokens generated per sequence")
    ap.add_argument("--prompt", type=int, default=128, help="longest prompt (tokens); row i has 3 i fewer")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def run(args, argv) -> dict:
    native, hf, tokenizer = models(args.smoke)
    pad = native.config.pad_token_id or 0
    if args.smoke:
        gen = torch.Generator().manual_seed(0)
        rows = lambda b: [torch.randint(3, 128, (8 - i,), generator=gen).tolist() for i in range(b)]  # noqa: E731
        grid, new, runs = [(1, 2), (2, 2)], 4, 1
    else:
        rows = lambda b: prompts(tokenizer, b, args.prompt)  # noqa: E731
        grid, new, runs = [(1, 4), (4, 4), (1, 8), (4, 8)], args.new, args.runs
    results = []
    for batch, beams in grid:
        ids, mask = left_pad(rows(batch), pad)
        results.append(measure(native, hf, ids, mask, beams, new, runs))
    info = machine()
    payload = {"machine": info, "argv": sys.argv[1:] if argv is None else list(argv),
               "model": "tiny random" if args.smoke else "models/shipped/target (fp16 -> fp32)",
               "parameters": native.num_parameters(), "results": results}
    cols = ["batch", "num_beams", "prompt_len", "new_tokens", "runs", "engine_tok_s", "hf_tok_s", "speedup",
            "cpu_time_speedup", "token_match"]
    md = ["# Beam search: engine (native model) vs HF `generate(num_beams=...)`, same weights\n",
          f"Machine: {info['device']}, {info.get('threads')} torch thread(s), torch {info['torch']}, "
          f"transformers {info['transformers']}, python {info['python']}; `python -m bench.beam "
          f"{' '.join(payload['argv'])}`.\n",
          f"Model: {payload['model']}, {payload['parameters']:,} parameters. tokens/s = generated tokens of the "
          "returned sequences / wall time of the whole call (median; engine and HF runs alternate); "
          "cpu_time_speedup = ratio of the median CPU seconds of the process per call (one thread: the "
          "same ratio without other jobs' noise); token_match = share of output tokens equal to HF's.\n",
          markdown_table(results, cols)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, "beam", payload, "\n".join(md))
    plot(args.out, results, info["device"])
    return payload


if __name__ == "__main__":
    main()
