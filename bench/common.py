"""Shared benchmark plumbing: machine description, timing, and writing JSON + markdown + PNG."""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "triton"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, sms=p.multi_processor_count, gpu_memory_gib=round(p.total_memory / 2**30, 1))
    else:
        cpu = "unknown CPU"
        try:
            cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info.update(device=cpu, threads=torch.get_num_threads())
    return info


def device_slug(info: dict) -> str:
    return "".join(c if c.isalnum() else "-" for c in info["device"]).strip("-").lower()[:40] or "device"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, runs: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, payload: dict, md: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out_dir / f"{name}.md").write_text(md + "\n")


def config_125m(**overrides):
    """The 125M random Llama of the CPU benchmarks: dim 768, 12 layers, GQA 12/4, ffn 2048, vocab
    32000, untied."""
    from models import DecoderConfig
    return DecoderConfig(vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, hidden_dim=2048,
                         max_seq_len=2048, **overrides)


def code_prompts(n: int, length: int) -> list[list[int]]:
    """The middle `length` tokens of the first n validation files that are long enough."""
    from models.training.corpus import encode_file, split_files
    from models.tokenizer import Tokenizer
    tok = Tokenizer.load()
    out = []
    for _, text in split_files("val"):
        ids = encode_file(tok, text)
        if len(ids) >= 4 * length:
            mid = len(ids) // 2
            out.append(ids[mid:mid + length])
            if len(out) == n:
                return out
    raise RuntimeError(f"fewer than {n} validation files with {4 * length} tokens")
