"""Tensor parallelism on CPU: tp = 1 vs tp = 2 (gloo, one process per core, one thread each).

    python -m bench.tensor_parallel                         # 125M random Llama + shipped target -> bench/results/cpu/
    python -m bench.tensor_parallel --smoke --out /tmp/x    # a tiny random model, seconds

Models: a random 125M Llama (dim 768, 12 layers, GQA 12/4, ffn 2048, vocab 32000, untied; saved to a
temporary checkpoint first) and the shipped target, fp32. Each (model, tp) runs in fresh processes:
tp = 1 is the unsharded model in one process; tp = 2 is two ranks that each load only their shard
(models.parallel_load.load_tensor_parallel). Greedy, `max_new_tokens = min_new_tokens`, eos off, random
prompt ids; tokens/s = batch x new tokens / wall time of the whole call (prefill included), median
of --runs calls after one warm-up; the ranks meet at a barrier before each call. Per decode step:
wall ms, and ms inside collectives on rank 0 (all-reduces + the logits all-gather; with gloo on CPU
this includes waiting for the slower rank); `allreduce_us`: one all-reduce of a (1, 1, dim) activation
timed alone (mean of 200), the floor a collective costs on this machine. `match`: tp = 2 returned
tp = 1's tokens. CPU only: NCCL on several GPUs is not measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

from bench.common import config_125m
from models.artifacts import SHIPPED

ROOT = Path(__file__).resolve().parent
SHIPPED_TARGET = SHIPPED / "target"
COLUMNS = ["model", "params_m", "batch", "tp", "tok_s", "speedup", "step_ms", "comm_ms_per_step",
           "collectives_per_step", "allreduce_us", "weight_mb_per_rank", "weight_frac", "match"]


def bench_config(smoke: bool):
    from models import DecoderConfig
    if smoke:
        return DecoderConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                             max_seq_len=256)
    return config_125m()


# -- one rank --------------------------------------------------------------------------------------

def worker(rank: int, world: int, rendezvous: str, spec: dict, out: str) -> None:
    torch.set_num_threads(1)
    from decoding import generate
    from models import checkpoint
    from models.parallel import weight_bytes
    from models.parallel_load import load_tensor_parallel
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=600))
        model = load_tensor_parallel(spec["checkpoint"], dtype=torch.float32)
        barrier = dist.barrier
    else:
        model = checkpoint.load(spec["checkpoint"], dtype=torch.float32)
        barrier = lambda: None  # noqa: E731
    comm = getattr(model, "comm", None)
    latency_us = None
    if comm:  # one all-reduce of a decode step's activation (1, 1, dim) alone: the floor of a collective here
        x = torch.zeros(1, 1, model.config.dim)
        for i in range(220):
            if i == 20:
                t0 = time.perf_counter()
            dist.all_reduce(x)
        latency_us = 1e6 * (time.perf_counter() - t0) / 200
    rows = []
    N, P = spec["new_tokens"], spec["prompt_len"]
    for B in spec["batches"]:
        ids = torch.randint(4, model.vocab_size, (B, P), generator=torch.Generator().manual_seed(B))
        kw = dict(max_new_tokens=N, min_new_tokens=N, eos_token_id=None)
        walls, comms, seqs, forwards = [], [], None, 1
        for i in range(spec["runs"] + 1):
            barrier()
            c0, calls0 = (comm.seconds, comm.calls) if comm else (0.0, 0)
            t0 = time.perf_counter()
            res = generate(model, ids, **kw)
            wall = time.perf_counter() - t0
            if i:  # the first call warms up
                walls.append(wall)
                comms.append((comm.seconds - c0) if comm else 0.0)
                calls = (comm.calls - calls0) if comm else 0
            seqs, forwards = res.sequences.tolist(), res.stats.target_forwards
        wall = statistics.median(walls)
        rows.append(dict(batch=B, tp=world, tok_s=B * N / wall, wall_s=walls, step_ms=1e3 * wall / forwards,
                         comm_ms_per_step=1e3 * statistics.median(comms) / forwards,
                         collectives_per_step=calls / forwards, allreduce_us=latency_us, weight_bytes=weight_bytes(model),
                         params=sum(p.numel() for p in model.parameters()), sequences=seqs))
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    os._exit(0)  # skip gloo's teardown


def launch(world: int, spec: dict, work: Path) -> list[dict]:
    rdv, out = work / f"rdv_{time.monotonic_ns()}", work / "rows.json"
    out.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, "-m", "bench.tensor_parallel", "--worker", str(r), str(world),
                               str(rdv), json.dumps(spec), str(out)], cwd=ROOT.parent) for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes) or not out.exists():
        raise RuntimeError(f"tp = {world} workers exited with {codes}")
    return json.loads(out.read_text())


# -- the benchmark ---------------------------------------------------------------------------------

def run(smoke: bool, out_dir, runs, batches, new_tokens, prompt_len, models):
    from bench.common import machine, write_results
    from models import LlamaDecoder, checkpoint
    runs = runs or (1 if smoke else 3)
    new_tokens = new_tokens or (8 if smoke else 64)
    prompt_len = prompt_len or (8 if smoke else 32)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tp_bench_") as tmp:
        work = Path(tmp)
        todo = []
        if "125m" in models:
            torch.manual_seed(0)
            checkpoint.save(LlamaDecoder(bench_config(smoke)), work / "random")
            todo.append(("random 125M" if not smoke else "random tiny", work / "random"))
        if "target" in models:
            todo.append(("shipped target", SHIPPED_TARGET))
        for name, ckpt in todo:
            spec = dict(checkpoint=str(ckpt), batches=list(batches), runs=runs, new_tokens=new_tokens,
                        prompt_len=prompt_len)
            one = launch(1, spec, work)
            base = {r["batch"]: dict(r) for r in one}
            for r in [*one, *launch(2, spec, work)]:
                b = base[r["batch"]]
                r.update(model=name, params_m=b["params"] / 1e6, speedup=r["tok_s"] / b["tok_s"],
                         weight_mb_per_rank=r["weight_bytes"] / 2**20, weight_frac=r["weight_bytes"] / b["weight_bytes"],
                         match=r["sequences"] == b["sequences"])
                del r["sequences"], r["params"]
                rows.append(r)
    order = [name for name, _ in todo]
    rows.sort(key=lambda r: (order.index(r["model"]), r["batch"], r["tp"]))
    info = machine()
    info.update(threads=1, cpus=os.cpu_count())  # threads per process
    # the 1-minute load average before and after: the ranks run in lockstep, so other processes on the
    # cores (a shared machine) stretch every collective; read the numbers with it
    results = dict(smoke=smoke, runs=runs, new_tokens=new_tokens, prompt_len=prompt_len, machine=info, rows=rows,
                   load_average=[round(load_start, 2), round(os.getloadavg()[0], 2)],
                   seconds=round(time.perf_counter() - t_start, 1))
    out = Path(out_dir) if out_dir else ROOT / "results" / "cpu"
    write_results(out, "tensor_parallel", results, render(results))
    return results, out


def render(results: dict) -> str:
    from bench.common import markdown_table
    m = results["machine"]
    head = (f"Tensor parallelism on CPU, tp = 1 vs tp = 2 (gloo, one process per core, 1 thread each), greedy fp32, "
            f"{results['new_tokens']} new tokens after a {results['prompt_len']}-token prompt, median of "
            f"{results['runs']} runs: {m['device']}, torch {m['torch']}, Python {m['python']}; load average "
            f"{results['load_average'][0]} before, {results['load_average'][1]} after ({m.get('cpus', '?')} CPUs). "
            "comm_ms_per_step: time inside collectives on rank 0 per decode step (waits for the slower rank "
            "included); allreduce_us: one all-reduce alone. No multi-GPU machine: no NCCL numbers.")
    rows = [{**r, "speedup": f"{r['speedup']:.2f}x", "weight_frac": f"{r['weight_frac']:.3f}"} for r in results["rows"]]
    return head + "\n\n" + markdown_table(rows, COLUMNS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        _, rank, world, rdv, spec, out = argv
        return worker(int(rank), int(world), rdv, json.loads(spec), out)
    if "RANK" in os.environ and "--help" not in argv:
        print("error: bench/tensor_parallel.py starts its own rank processes: run it without torchrun", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="python -m bench.tensor_parallel", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and the shipped target, 1 run, 8 tokens")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/cpu/)")
    ap.add_argument("--runs", type=int, help="timed calls per (model, batch, tp) (default 3; smoke 1)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument("--new-tokens", type=int, help="tokens generated per row (default 64; smoke 8)")
    ap.add_argument("--prompt-len", type=int, help="prompt tokens per row (default 32; smoke 8)")
    ap.add_argument("--models", nargs="+", default=["125m", "target"], choices=["125m", "target"])
    args = ap.parse_args(argv)
    results, out = run(args.smoke, args.out, args.runs, tuple(args.batches), args.new_tokens, args.prompt_len,
                       args.models)
    print(render(results))
    print(f"\nwrote {out}/tensor_parallel.{{json,md}} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
