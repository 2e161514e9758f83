"""The compiled CPU step (models/compiled_cpu.py), both kinds, against the eager step, 1 thread.

    python -m bench.compiled_step                        # shipped target, draft, YOCO, random 125M
    python -m bench.compiled_step --smoke --out /tmp/x   # a tiny random model

Per model: the time to build each library (first process: export + AOTInductor; the on-disk cache
is pointed at a fresh directory) and to load the frozen one in a second process; then the median ms
of one decode step (T = 1) and one verify block (T = 5) at batch 1, 4 and 8 over a 96-token context,
eager, compiled with weights as inputs and compiled frozen (weights prepacked in) taking turns in
each repetition, and the largest |logit difference| of each compiled kind from eager. Frozen steps
of 3+ rows run the wide library (8 x 8 GEMM kernels, models/compiled_cpu.py WIDE_ROWS; its build
time is its own column); `frozen_default` runs them on the default library instead, so
`wide_vs_default` says what the second library buys (1.0 below 3 rows: the same library). The cache
holds room for the step (`capacity` 96 + T + 1); at batch 1 also a cache of 1024 slots (room for
a long generation) over the same 96 tokens: a step should cost by the context, not the room.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import torch

import models.compiled_cpu as cc
from bench.common import machine, markdown_table, write_results

LOAD = """
import sys, time, torch
import bench.compiled_step as b
import models.compiled_cpu as cc
torch.set_num_threads(1)  # the first process's: a frozen library is built per thread count
built, build = [], cc.CompiledStep._build
cc.CompiledStep._build = lambda self, *a: built.append(1) or build(self, *a)
model = b.make(sys.argv[1])
model.compile_step = True
with torch.no_grad():
    c = model.new_cache(1, 8)
    t = time.perf_counter()
    model(torch.tensor([[1]]), c)
    print(time.perf_counter() - t, int(model._compiled.run is not None and not built))
"""


def make(name: str):
    from models import DecoderConfig, LlamaDecoder
    from models.artifacts import SHIPPED
    from models.checkpoint import load
    if name == "random-125M":
        torch.manual_seed(0)
        cfg = DecoderConfig(vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, hidden_dim=2048,
                            max_seq_len=1024)
        return LlamaDecoder(cfg).eval()
    if name == "tiny":
        torch.manual_seed(0)
        return LlamaDecoder(DecoderConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    return load(SHIPPED / name, dtype=torch.float32)


MODES = ("eager", "inputs", "frozen", "frozen_default")


def use(model, mode: str, steps: dict) -> None:
    """Run `model`'s next steps eagerly or through one of its compiled steps (all kept loaded)."""
    model.compile_step = mode != "eager"
    if mode != "eager":
        model.compile_frozen = mode != "inputs"
        model._compiled = steps[mode]


def step_times(model, steps: dict, B: int, T: int, reps: int, calls: int, capacity: int) -> dict:
    g = torch.Generator().manual_seed(0)
    caches = {}
    with torch.no_grad():
        prompt = torch.randint(0, model.vocab_size, (B, 96), generator=g)
        for mode in MODES:
            caches[mode] = model.new_cache(B, capacity)
            model(prompt, caches[mode], attention_mask=torch.ones(B, 96, dtype=torch.long))  # eager prefill
        ids = torch.randint(0, model.vocab_size, (B, T), generator=g)
        outs, times = {}, {m: [] for m in caches}
        for r in range(reps + 1):
            for mode, cache in caches.items():
                use(model, mode, steps)
                t0 = time.perf_counter()
                for _ in range(calls):
                    outs[mode] = model(ids, cache)
                    cache.truncate(T)
                if r:  # the first round warms up
                    times[mode].append((time.perf_counter() - t0) / calls * 1e3)
    ms = {m: statistics.median(times[m]) for m in MODES}
    row = {f"{m}_ms": v for m, v in ms.items()}
    row.update({"frozen_vs_inputs": ms["inputs"] / ms["frozen"], "frozen_vs_eager": ms["eager"] / ms["frozen"],
                "wide_vs_default": ms["frozen_default"] / ms["frozen"]})
    for m in ("inputs", "frozen", "frozen_default"):
        row[f"{m}_max_abs_diff"] = float((outs["eager"] - outs[m]).abs().max())
        row[f"{m}_same_argmax"] = bool(torch.equal(outs["eager"].argmax(-1), outs[m].argmax(-1)))
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="target,draft,yoco,random-125M")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default="bench/results/cpu")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.reps, args.calls = "tiny", 2, 3
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as d, patch.dict(os.environ, {"DECODING_COMPILE_CACHE": d}):
        for name in args.models.split(","):
            model = make(name)
            steps, build_s = {}, {}
            for mode in ("inputs", "frozen"):
                model.compile_step, model.compile_frozen, model._compiled = True, mode == "frozen", None
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(torch.tensor([[1]]), model.new_cache(1, 8))
                build_s[mode] = time.perf_counter() - t0
                if model._compiled is None or model._compiled.run is None:
                    raise SystemExit(f"{name}: the compiled step did not build (see the warning above)")
                steps[mode] = model._compiled
            t0 = time.perf_counter()
            with torch.no_grad():  # the wide library, where this CPU has one (a step after a token, not a prompt)
                c = model.new_cache(1, 8)
                model(torch.tensor([[1]]), c)
                model(torch.ones(1, cc.WIDE_ROWS, dtype=torch.long), c)
            build_s["wide"] = time.perf_counter() - t0 if model._compiled.wide is not None else None
            steps["frozen_default"] = copy.copy(model._compiled)
            steps["frozen_default"].blocking = None  # every width on the default library
            out = subprocess.run([sys.executable, "-c", LOAD, name], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path.cwd())}, check=True)
            load_s, loaded = out.stdout.split()
            long = min(1024, model.max_positions)
            for B, T, capacity in [(B, T, 96 + T + 1) for B in (1, 4, 8) for T in (1, 5)] + \
                    [(1, T, long) for T in (1, 5) if long > 96 + T + 1]:
                r = step_times(model, steps, B, T, args.reps, args.calls, capacity)
                rows.append({"model": name, "batch": B, "T": T, "capacity": capacity, **r,
                             "inputs_build_s": build_s["inputs"],
                             "frozen_build_s": build_s["frozen"], "frozen_wide_build_s": build_s["wide"],
                             "second_process_first_step_s": float(load_s),
                             "loaded_not_built": loaded == "1"})
                print(rows[-1], flush=True)
    info = machine()
    md = ["# Compiled CPU step (weights as inputs, frozen) vs eager step", "",
          f"{info['device']}, torch {info['torch']}, python {info['python']}, 1 thread; "
          f"`python -m bench.compiled_step {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
          markdown_table(rows, list(rows[0])), ""]
    write_results(Path(args.out), "compiled_step", {"machine": info, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
