"""One rank of the tensor-parallel tests (tests/test_tensor_parallel.py), and the scenarios it runs.

    python tests/tp_worker.py MODE RANK WORLD RENDEZVOUS_FILE WORK_DIR

MODE main: shard the models, run every scenario, then the bad inputs; `dead`: rank 1 exits at
once and rank 0 must get an error from its first collective. Writes WORK_DIR/rank{RANK}.json.
The test process runs the same `scenarios` on the unsharded models: that is the oracle.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from models.artifacts import SHIPPED  # noqa: E402  (the repository on sys.path first)
F32 = torch.float32

# two prompts, the second shorter (left-padded); ids below every test model's vocabulary
ROWS = [[1, 120, 350, 280, 106, 390, 370, 127, 405, 730, 359, 106], [1, 905, 266, 150, 359]]


def prompt(rows=ROWS, pad=3):
    T = max(map(len, rows))
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def qwen2_config():
    """A random Qwen2-style model: q/k/v bias, GQA 6/2, untied head, a vocabulary and MLP width that
    do not divide evenly by 2 ranks' chunk (1001 rows, 202 units)."""
    from models import DecoderConfig
    return DecoderConfig(vocab_size=1001, dim=96, n_layers=2, n_heads=6, n_kv_heads=2, hidden_dim=202,
                         qkv_bias=True, max_seq_len=256, rope_theta=1e6, eos_token_id=2, pad_token_id=3)


def scenarios(m: dict) -> dict:
    """Name -> generated sequences, for m = {target, draft, draft_full, qwen2, yoco}."""
    from decoding import generate
    ids, mask = prompt()
    one = ids[:1]
    out = {}

    def run(name, model, x, **kw):
        kw.setdefault("max_new_tokens", 10)
        a = mask if x is ids else None
        out[name] = generate(model, x, attention_mask=a, **kw).sequences.tolist()

    t = m["target"]
    run("target_greedy", t, ids)
    run("target_sample", t, ids, do_sample=True, top_k=50, seed=7)
    run("target_beam", t, one, num_beams=3, max_new_tokens=8)
    run("target_diverse_beam", t, one, num_beams=4, num_beam_groups=2, diversity_penalty=0.5, max_new_tokens=6)
    run("target_greedy_one", t, one, max_new_tokens=12)
    run("target_spec_draft_replicated", t, one, assistant_model=m["draft_full"], num_assistant_tokens=3,
        max_new_tokens=12)
    run("target_spec_draft_sharded", t, one, assistant_model=m["draft"], num_assistant_tokens=3, max_new_tokens=12)
    run("target_prompt_lookup", t, one, prompt_lookup_num_tokens=3, max_new_tokens=12)
    run("target_jacobi", t, one, strategy="jacobi", block_size=4, max_new_tokens=12)
    run("target_gs_jacobi", t, one, strategy="gs_jacobi", block_size=4, max_new_tokens=12)
    run("target_sjd", t, one, strategy="sjd", block_size=4, do_sample=True, seed=5, max_new_tokens=12)
    run("target_blockwise", t, one, strategy="blockwise", max_new_tokens=12)  # default heads: the shipped-target check runs on every rank
    run("draft_greedy", m["draft"], ids)
    run("draft_beam", m["draft"], one, num_beams=3, max_new_tokens=8)
    run("qwen2_greedy", m["qwen2"], ids)
    run("qwen2_beam", m["qwen2"], one, num_beams=3, max_new_tokens=8)
    run("qwen2_sample", m["qwen2"], ids, do_sample=True, seed=3)
    run("yoco_greedy", m["yoco"], ids, max_new_tokens=8)
    return out


def oracle_models(work: Path) -> dict:
    from models import checkpoint
    draft = checkpoint.load(SHIPPED / "draft", dtype=F32)
    return {"target": checkpoint.load(SHIPPED / "target", dtype=F32), "draft": draft, "draft_full": draft,
            "qwen2": checkpoint.load(work / "qwen2", dtype=F32), "yoco": checkpoint.load(SHIPPED / "yoco", dtype=F32)}


def error_of(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - recorded for the test to check
        return f"{type(e).__name__}: {e}"
    return "no error"


def bad_inputs(rank: int, work: Path) -> dict:
    from models import DecoderConfig, LlamaDecoder, checkpoint
    from models.parallel import tensor_parallel
    from models.parallel_load import load_tensor_parallel
    out = {}
    three = LlamaDecoder(DecoderConfig(vocab_size=64, dim=48, n_layers=1, n_heads=3, n_kv_heads=1))
    out["heads_not_divisible"] = error_of(lambda: tensor_parallel(three))
    out["unsupported_type"] = error_of(lambda: tensor_parallel(torch.nn.Linear(4, 4)))
    out["disagreeing_checkpoints"] = error_of(
        lambda: load_tensor_parallel(SHIPPED / "draft" if rank == 0 else work / "draft_other", dtype=F32))
    torch.manual_seed(rank)  # a different random model on each rank
    out["disagreeing_models"] = error_of(lambda: tensor_parallel(LlamaDecoder(qwen2_config())))
    out["not_native_checkpoint"] = error_of(lambda: load_tensor_parallel(work / "hf_dir"))
    # the group still works after the errors: every rank failed at the same collective
    out["after_errors"] = error_of(lambda: tensor_parallel(checkpoint.load(SHIPPED / "draft", dtype=F32)))
    return out


def main(mode: str, rank: int, world: int, rendezvous: str, work: str) -> None:
    import torch.distributed as dist

    importlib.import_module("models.parallel")  # before joining: see its import of torch.distributed.nn
    work = Path(work)
    torch.set_num_threads(1)
    timeout = 10 if mode == "dead" else 120
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    result: dict = {"rank": rank}
    try:
        from models import checkpoint
        from models.parallel import tensor_parallel, weight_bytes
        from models.parallel_load import load_tensor_parallel
        if mode == "dead":  # rank 1 dies after loading, rank 0 then decodes
            from decoding import generate
            model = load_tensor_parallel(SHIPPED / "target", dtype=F32)
            if rank == 1:
                os._exit(3)
            t0 = time.perf_counter()
            result["error"] = error_of(lambda: generate(model, prompt()[0][:1], max_new_tokens=50))
            result["seconds"] = time.perf_counter() - t0
        else:
            m = {"target": load_tensor_parallel(SHIPPED / "target", dtype=F32),
                 "draft": tensor_parallel(checkpoint.load(SHIPPED / "draft", dtype=F32)),
                 "draft_full": checkpoint.load(SHIPPED / "draft", dtype=F32),
                 "qwen2": load_tensor_parallel(work / "qwen2", dtype=F32),
                 "yoco": load_tensor_parallel(SHIPPED / "yoco", dtype=F32)}
            result["weight_bytes"] = {k: weight_bytes(v) for k, v in m.items() if k != "draft_full"}
            result["cache_heads"] = {k: m[k].new_cache(1, 8).k[0].shape[1] for k in ("target", "draft", "qwen2")}
            result["sequences"] = scenarios(m)
            from decoding import generate
            ids, mask = prompt()
            result["sample_no_seed"] = generate(m["target"], ids, attention_mask=mask, do_sample=True,
                                                max_new_tokens=8).sequences.tolist()
            result["bad"] = bad_inputs(rank, work)
    except Exception:  # noqa: BLE001
        result["crash"] = traceback.format_exc()
    if mode != "dead":
        from decoding.cli_parallel import leave
        try:
            leave()  # as the CLI leaves: the world must really close, its gloo threads joined
            result["threads_after_leave"] = sorted((Path("/proc/self/task") / t / "comm").read_text().strip()
                                                   for t in os.listdir("/proc/self/task"))
        except Exception:  # noqa: BLE001
            result.setdefault("crash", traceback.format_exc())
    (work / f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # skip gloo's teardown, which can wait on a dead peer


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
