"""Tensor parallelism (models/parallel.py) at world size 2 on gloo: two worker processes
(tests/tp_worker.py) shard the shipped target (GQA 4/2), the shipped draft (MQA), a random
Qwen2-style model (q/k/v bias) and the shipped YOCO model, and run every strategy. The oracle is
the unsharded model in this process running the same calls: tokens must be identical, on both
ranks. Then bad inputs (an error on every rank, the group still usable) and a dead rank (an error,
not a hang)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tp_worker
from models import DecoderConfig, LlamaDecoder, checkpoint
from models.parallel import tensor_parallel, weight_bytes

WORKER = Path(tp_worker.__file__)
WORLD = 2


def launch(mode: str, work: Path, timeout: float) -> list[dict]:
    rdv = work / f"rendezvous_{mode}"
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(r), str(WORLD), str(rdv), str(work)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(WORLD)]
    deadline, logs = time.monotonic() + timeout, []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].decode())
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"tensor-parallel workers ({mode}) still running after {timeout} s")
    out = []
    for r in range(WORLD):
        f = work / f"rank{r}.json"
        out.append(json.loads(f.read_text()) if f.exists() else {"missing": logs[r][-3000:]})
        f.unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("tp")
    torch.manual_seed(0)
    qwen2 = LlamaDecoder(tp_worker.qwen2_config())
    checkpoint.save(qwen2, d / "qwen2")
    other = checkpoint.load(tp_worker.SHIPPED / "draft")
    with torch.no_grad():
        other.layers[0].mlp.w2.weight.mul_(1.01)
    checkpoint.save(other, d / "draft_other")
    (d / "hf_dir").mkdir()
    (d / "hf_dir" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "hf_dir" / "model.safetensors").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def ranks(work):
    out = launch("main", work, timeout=300)
    for r in out:
        assert "crash" not in r and "missing" not in r, r.get("crash") or r.get("missing")
    return out


@pytest.fixture(scope="module")
def oracle(work):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same kernels
    try:
        models = tp_worker.oracle_models(work)
        yield models, tp_worker.scenarios(models)
    finally:
        torch.set_num_threads(threads)


NAMES = ["target_greedy", "target_sample", "target_beam", "target_diverse_beam", "target_greedy_one",
         "target_spec_draft_replicated", "target_spec_draft_sharded", "target_prompt_lookup", "target_jacobi",
         "target_gs_jacobi", "target_sjd", "target_blockwise", "draft_greedy", "draft_beam", "qwen2_greedy", "qwen2_beam", "qwen2_sample",
         "yoco_greedy"]


@pytest.mark.parametrize("name", NAMES)
def test_tp2_tokens_equal_tp1(ranks, oracle, name):
    _, ref = oracle
    for r in ranks:
        assert r["sequences"][name] == ref[name], f"rank {r['rank']}: {name} differs from the unsharded model"


def test_speculative_and_parallel_modes_equal_greedy(ranks, oracle):
    _, ref = oracle  # the oracle's greedy is itself checked against tp = 1 above
    greedy = ref["target_greedy_one"]
    for r in ranks:
        for name in ("target_spec_draft_replicated", "target_spec_draft_sharded", "target_prompt_lookup",
                     "target_jacobi", "target_gs_jacobi", "target_blockwise"):
            assert r["sequences"][name] == greedy, f"rank {r['rank']}: {name} is not the greedy output"


def test_sampling_without_seed_agrees_across_ranks(ranks):
    assert ranks[0]["sample_no_seed"] == ranks[1]["sample_no_seed"]


def test_weight_bytes_per_rank_and_local_cache(ranks, oracle):
    models, _ = oracle
    for r in ranks:
        for name, n in r["weight_bytes"].items():
            whole = weight_bytes(models[name])
            assert n <= 0.55 * whole, f"rank {r['rank']}: {name} holds {n / whole:.3f} of the model's bytes"
        # GQA 4/2 and 6/2 split their KV heads; the MQA draft replicates its one KV head
        assert r["cache_heads"] == {"target": 1, "draft": 1, "qwen2": 1}


BAD = {"heads_not_divisible": ("ValueError", "does not divide the model's 3 query heads"),
       "unsupported_type": ("TypeError", "cannot shard a Linear"),
       "disagreeing_checkpoints": ("ValueError", "different models or checkpoints"),
       "disagreeing_models": ("ValueError", "different models or checkpoints"),
       "not_native_checkpoint": ("TypeError", "tensor-parallel loading reads native checkpoints")}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_on_every_rank(ranks, case):
    kind, phrase = BAD[case]
    for r in ranks:
        msg = r["bad"][case]
        assert msg.startswith(kind) and phrase in msg, f"rank {r['rank']}: {msg}"
    assert ranks[0]["bad"]["after_errors"] == ranks[1]["bad"]["after_errors"] == "no error"


def test_leaving_closes_the_world(ranks):
    """After the CLI's leave() no gloo thread is left: a world group still alive at exit lets gloo's
    threads free tensors during interpreter shutdown, which aborts the rank (SIGABRT)."""
    for r in ranks:
        assert r["threads_after_leave"] and not [t for t in r["threads_after_leave"] if "gloo" in t], r["rank"]


@pytest.mark.parametrize("joined_first", [False, True])
def test_importing_after_the_world_is_joined_warns(tmp_path, joined_first):
    """torch.distributed.nn imported after init_process_group keeps the world group alive past
    destroy_process_group: models.parallel says so when its import finds the group captured."""
    init = f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'rdv'}', rank=0, world_size=1)\n"
    code = ("import os, warnings\nimport torch.distributed as dist\n" + (init if joined_first else "") +
            "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
            "    import models.parallel\n" + ("" if joined_first else init) +
            "print(any('before init_process_group' in str(w.message) for w in caught), flush=True)\nos._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=WORKER.parent.parent, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == str(joined_first), out.stderr[-2000:]


def test_dead_rank_raises_instead_of_hanging(work):
    t0 = time.monotonic()
    out = launch("dead", work, timeout=120)
    assert time.monotonic() - t0 < 120
    err = out[0].get("error", out[0].get("crash", ""))
    assert err and err != "no error", out[0]


def _cli_text(stdout: str) -> str:
    """The completion as printed, without the stats line (its timings differ)."""
    return "\n".join(l for l in stdout.splitlines() if not l.startswith("[") and not l.startswith("*"))


def test_cli_torchrun_prints_once_and_matches_one_process():
    args = ["-m", "decoding", "generate", "--prompt", "def fibonacci(n):", "--max-new-tokens", "12", "--ignore-eos"]
    root = WORKER.parent.parent
    one = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=120)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args, "--tensor-parallel"], cwd=root, capture_output=True, text=True, timeout=180)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[:3000] + "\n...\n" + two.stderr[-1500:]
    assert _cli_text(two.stdout) == _cli_text(one.stdout)  # rank 0's stream alone, tp = 1's text
    assert two.stdout.count("new tokens in") == 1


def test_cli_without_torchrun_is_a_usage_error(capsys, monkeypatch):
    from decoding import cli
    monkeypatch.delenv("RANK", raising=False)
    assert cli.main(["generate", "--tensor-parallel", "--prompt", "x"]) == cli.EXIT_USAGE
    assert "runs under torchrun" in capsys.readouterr().err


def test_sharding_without_a_process_group_says_how_to_start_one():
    model = LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2))
    with pytest.raises(RuntimeError, match="torchrun"):
        tensor_parallel(model)
