"""YOCO vs decoder-only: KV-cache bytes vs context, prefill latency, decode tokens/s at long context.

    python -m bench.kv_memory                       # CPU, 1k/4k/16k prompts -> bench/results/cpu/
    python -m bench.kv_memory --quick               # without the 16k prompt
    python -m bench.kv_memory --smoke --out /tmp/x  # tiny sizes, a few seconds

KV bytes are `nbytes()` of real cache objects, allocated on the meta device (no memory is touched),
for MHA, GQA and MQA LlamaDecoders and a YOCO decoder of the same width and depth. Latencies are
medians of runs that alternate between the two models, so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common import machine, markdown_table, write_results
from models import DecoderConfig, LlamaDecoder
from models.yoco import YOCOConfig, YOCODecoder

# Memory: a ~1B-parameter shape (bf16 caches); YOCO's self-decoder window as in the paper's SWA.
MEM_SHAPE = dict(vocab_size=32000, dim=2048, n_layers=24, n_heads=16, head_dim=128, max_seq_len=65536)
MEM_YOCO = dict(n_kv_heads=4, window=1024, max_rollback=64)
# Latency: a small shape that runs on 2 CPU cores (fp32), GQA in both models.
LAT_SHAPE = dict(vocab_size=4096, dim=256, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=16384 + 64)
LAT_YOCO = dict(window=256, max_rollback=64)

SMOKE_SHAPE = dict(vocab_size=128, dim=32, n_layers=4, n_heads=4, head_dim=8, max_seq_len=1024)
SMOKE_YOCO = dict(n_kv_heads=2, window=16, max_rollback=8)


def memory_models(shape: dict, yoco: dict) -> dict:
    """MHA, GQA (YOCO's kv heads), MQA and YOCO models on the meta device; shape has no n_kv_heads."""
    with torch.device("meta"):
        models = {name: LlamaDecoder(DecoderConfig(**shape, n_kv_heads=kv))
                  for name, kv in (("MHA", shape["n_heads"]), ("GQA", yoco["n_kv_heads"]), ("MQA", 1))}
        models["YOCO"] = YOCODecoder(YOCOConfig(**shape, **yoco))
    return models


def kv_bytes(models: dict, contexts: list[int], dtype) -> list[dict]:
    rows = []
    for n in contexts:
        row = {"context": n}
        for name, m in models.items():
            row[name] = m.new_cache(1, n, dtype=dtype, device="meta").nbytes()
        row["YOCO/GQA"] = row["YOCO"] / row["GQA"]
        rows.append(row)
    return rows


@torch.inference_mode()
def latency(models: dict, prompts: list[int], runs: int, decode_steps: int) -> tuple[list[dict], list[dict]]:
    """Prefill seconds (median of `runs`) per prompt length, then decode tokens/s (1 / median step
    time) from that context."""
    prefill, decode = [], []
    for T in prompts:
        ids = torch.randint(0, next(iter(models.values())).vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
        times = {name: [] for name in models}
        caches = {}
        for _ in range(runs):
            for name, m in models.items():  # alternate: noise hits both
                cache = m.new_cache(1, T + decode_steps)
                t0 = time.perf_counter()
                logits = m(ids, cache, logits_to_keep=1)
                times[name].append(time.perf_counter() - t0)
                caches[name] = (cache, logits)
        row = {"prompt": T, "runs": runs}
        for name in models:
            row[f"{name}_s"] = statistics.median(times[name])
        row["YOCO/decoder-only"] = row["YOCO_s"] / row["decoder-only_s"]
        prefill.append(row)

        row = {"context": T, "steps": decode_steps}
        steps = {name: [] for name in models}
        for _ in range(decode_steps):  # greedy steps, alternating models; median step time
            for name, m in models.items():
                cache, logits = caches[name]
                t0 = time.perf_counter()
                caches[name] = (cache, m(logits[:, -1].argmax(-1, keepdim=True), cache))
                steps[name].append(time.perf_counter() - t0)
        for name in models:
            row[f"{name}_tok_s"] = 1.0 / statistics.median(steps[name])
        decode.append(row)
        print(f"prompt {T}: prefill {prefill[-1]}, decode {row}", flush=True)
    return prefill, decode


def plot(out: Path, memory: dict, prefill: list[dict], decode: list[dict], device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(memory), figsize=(6 * len(memory), 4), squeeze=False)
    for ax, (shape, rows) in zip(axes[0], memory.items()):
        for name in ("MHA", "GQA", "MQA", "YOCO"):
            ax.loglog([r["context"] for r in rows], [r[name] / 2**20 for r in rows], marker="o", label=name)
        ax.set(xlabel="context (tokens)", ylabel="KV cache (MiB, nbytes())", title=f"KV cache, {shape}")
        ax.legend()
    fig.tight_layout(); fig.savefig(out / "kv_memory.png", dpi=100); plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for name in ("decoder-only", "YOCO"):
        a.loglog([r["prompt"] for r in prefill], [r[f"{name}_s"] for r in prefill], marker="o", label=name)
        b.semilogx([r["context"] for r in decode], [r[f"{name}_tok_s"] for r in decode], marker="o", label=name)
    a.set(xlabel="prompt (tokens)", ylabel="prefill seconds (median)", title=f"prefill, {device}")
    b.set(xlabel="context (tokens)", ylabel="decode tokens/s (batch 1)", title=f"decode, {device}")
    a.legend(); b.legend()
    fig.tight_layout(); fig.savefig(out / "yoco_latency.png", dpi=100); plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--quick", action="store_true", help="skip the 16k-token prompt")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.smoke:
        mem_shapes = {"smoke": (SMOKE_SHAPE, SMOKE_YOCO, torch.float32)}
        contexts, prompts, runs, steps = [64, 256, 1024], [64, 256], 1, 4
        lat_shape, lat_yoco = dict(SMOKE_SHAPE, n_kv_heads=2), dict(window=16, max_rollback=8)
    else:
        lat_mem = {k: v for k, v in LAT_SHAPE.items() if k != "n_kv_heads"}
        mem_shapes = {"1B-like (dim 2048, 24 layers, bf16)": (MEM_SHAPE, MEM_YOCO, torch.bfloat16),
                      "latency shape (dim 256, 8 layers, fp32)": (lat_mem, dict(LAT_YOCO, n_kv_heads=2), torch.float32)}
        contexts = [1024 * 2**i for i in range(7)]  # 1k .. 64k
        prompts, runs, steps = ([1024, 4096] if args.quick else [1024, 4096, 16384]), args.runs, 32
        lat_shape, lat_yoco = LAT_SHAPE, LAT_YOCO

    memory = {}
    for label, (shape, yoco, dtype) in mem_shapes.items():
        memory[label] = kv_bytes(memory_models({**shape, "max_seq_len": max(contexts)}, yoco), contexts, dtype)

    models = {"decoder-only": LlamaDecoder(DecoderConfig(**lat_shape)).eval(),
              "YOCO": YOCODecoder(YOCOConfig(**lat_shape, **lat_yoco)).eval()}
    sizes = {name: m.num_parameters() for name, m in models.items()}
    with torch.inference_mode():  # warm up kernels before timing
        for m in models.values():
            m(torch.zeros(1, 64, dtype=torch.long), m.new_cache(1, 64))
    prefill, decode = latency(models, prompts, runs, steps)

    info = machine()
    payload = {"machine": info, "argv": sys.argv[1:] if argv is None else list(argv), "memory_shapes": {k: {"shape": s, "yoco": y, "dtype": str(d)} for k, (s, y, d) in mem_shapes.items()},
               "latency_shape": {"shape": lat_shape, "yoco": lat_yoco, "parameters": sizes},
               "kv_bytes": memory, "prefill": prefill, "decode": decode}
    md = ["# YOCO vs decoder-only: KV memory, prefill, decode\n",
          f"Machine: {info['device']}, {info.get('threads')} torch threads, torch {info['torch']}, python {info['python']}; "
          f"`python -m bench.kv_memory {' '.join(payload['argv'])}`.\n"]
    for label, rows in memory.items():
        md += [f"## KV-cache bytes (`nbytes()`, batch 1), {label}\n",
               markdown_table(rows, ["context", "MHA", "GQA", "MQA", "YOCO", "YOCO/GQA"]), ""]
    md += [f"## Prefill latency (s, median of {runs}, logits of the last token only)\n",
           f"Decoder-only {sizes['decoder-only']:,} parameters, YOCO {sizes['YOCO']:,}; shape {lat_shape}, "
           f"YOCO {lat_yoco}.\n",
           markdown_table(prefill, ["prompt", "runs", "decoder-only_s", "YOCO_s", "YOCO/decoder-only"]), "",
           f"## Decode tokens/s at long context (batch 1, 1 / median of {steps} greedy steps after the prefill)\n",
           markdown_table(decode, ["context", "steps", "decoder-only_tok_s", "YOCO_tok_s"])]
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, "kv_memory", payload, "\n".join(md))
    plot(args.out, memory, prefill, decode, info["device"])
    return payload


if __name__ == "__main__":
    main()
