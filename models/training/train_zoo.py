"""Train the shipped zoo (target, then draft) in one command and write MANIFEST.json.

    python -m models.training.train_zoo --device cuda --budget gpu --out $OUT   # the one GPU run
    python -m models.training.train_zoo --device cpu --smoke --out /tmp/zoo     # same path, tiny, on CPU
    python -m models.training.train_zoo --device cpu --budget cpu               # CPU-only fallback (hours)

Budgets: "gpu" gives each model its recipe's gpu_seconds (target 100 s, draft 40 s) and a token
cap from FLOPs (6 x compute-parameters per token at an assumed 100 TFLOP/s); a model whose
measured speed cannot reach the cap in time gets its budget shrunk after 13 timed steps (fit_seconds), and
--max-seconds (default 1.25 x its share) stops it hard, still evaluating and saving.
OUT gets the models/shipped layout: OUT/<name>/{model.safetensors,config.json,train_log.json},
OUT/MANIFEST.json and OUT/train_zoo.log; copy OUT/* into models/shipped/ to ship.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import zoo
from ..artifacts import DATA, RUNS, SHIPPED
from ..tokenizer import SHIPPED as TOKENIZER, Tokenizer
from .train import Log, load_data, token_info, train

ASSUMED_FLOPS = 100e12  # effective bf16 FLOP/s for these tiny models on an H200: conservative
PROMPT = "def fibonacci(n):\n"


def gpu_tokens(name: str, tok) -> int:
    n = zoo.compute_params(zoo.build(name, tok))
    return int(zoo.ZOO[name].recipe.gpu_seconds * ASSUMED_FLOPS / (6 * n))


@torch.no_grad()
def greedy(model, ids: torch.Tensor, new: int, eos: int | None = None) -> torch.Tensor:
    """Reference greedy continuation with the cache-free forward (any arch; short outputs only)."""
    for _ in range(new):
        nxt = model.forward_train(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        if eos is not None and ids.shape[0] == 1 and nxt.item() == eos:
            break
    return ids


def spec_tau(match: np.ndarray, k: int) -> float:
    """Tokens per target forward of greedy speculative decoding with exactly k guesses per round,
    from match (rows, n): the draft's argmax equals the target's greedy token at each position,
    given the true prefix. Replays each row as the decoder does: a round accepts the run of matching
    guesses (at most k) plus the target's own token, never past the row's end."""
    emitted = rounds = 0
    for row in match:
        t = 0
        while t < len(row):
            run = 0
            while run < k and t + run < len(row) and row[t + run]:
                run += 1
            step = min(run + 1, len(row) - t)
            emitted, rounds, t = emitted + step, rounds + 1, t + step
    return emitted / rounds


@torch.no_grad()
def draft_matches(draft, seq: torch.Tensor, prompt_len: int) -> np.ndarray:
    """(rows, n) bool: the draft's argmax on the true prefix equals seq's continuation token. A guess
    is only judged when every guess before it was accepted, so teacher forcing is what the decoder sees."""
    return (draft.forward_train(seq[:, :-1])[:, prompt_len - 1:].argmax(-1) == seq[:, prompt_len:]).numpy()


@torch.no_grad()
def agreement(target, draft, rows: np.ndarray, prompt_len: int = 64, new: int = 32, k: int = 4) -> dict:
    """Fraction of the target's greedy tokens that the draft's argmax predicts (given the target's
    prefix), and tau (tokens per target forward) of greedy speculation with k drafted tokens."""
    ids = greedy(target, torch.as_tensor(rows[:, :prompt_len]), new)
    match = draft_matches(draft, ids, prompt_len)
    return {"greedy_agreement": float(match.mean()), f"tau_k{k}": spec_tau(match, k),
            "rows": len(rows), "prompt_len": prompt_len, "new_tokens": new}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(out: Path, results: dict, extra: dict) -> dict:
    path = out / "MANIFEST.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name, r in results.items():
        d = out / name
        manifest["models"][name] = {
            "arch": r["arch"], "params": r["params"], "compute_per_token": r["compute_per_token"],
            "val_loss": r["val"]["loss"], "val_bpb": r["val"]["bpb"], "tokens_seen": r["tokens_seen"],
            "seconds": r["seconds"], "device": r["device"],
            "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(d.iterdir())},
        }
    manifest["tokenizer"] = {"path": "tokenizer.model", "sha256": sha256(TOKENIZER)}
    manifest["default"] = "target"
    manifest.update(extra)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets, bf16 autocast: rehearse the GPU path")
    ap.add_argument("--out", type=Path, help="default models/shipped (runs/smoke-zoo with --smoke)")
    ap.add_argument("--models", default="target,draft")
    ap.add_argument("--max-seconds", type=float, help="hard cap per model (default 1.25 x its share)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each training step (opt-in)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out = a.out or (RUNS / "smoke-zoo" if a.smoke else SHIPPED)
    names = a.models.split(",")
    a.out.mkdir(parents=True, exist_ok=True)
    log = Log(a.out / "train_zoo.log")
    log(f"train_zoo {' '.join(sys.argv[1:] if argv is None else argv)} torch {torch.__version__} "
        f"python {sys.version.split()[0]}")
    data = load_data(DATA)
    t0 = time.time()
    results = {}
    for name in names:
        rc = zoo.ZOO[name].recipe
        kw = dict(device=a.device, compile=a.compile, resume=a.resume, data=data, log_file=a.out / "train_zoo.log")
        if a.smoke:
            # real configs and code path; tiny batches; 16 steps so the speed fit (steps 3..13) runs
            kw.update(tokens=16 * 2 * 64, batch=2, seq_len=64, warmup_steps=4, fit_seconds=600, amp="bfloat16",
                      max_seconds=a.max_seconds or 300, val_windows=2, evals=1)
        elif a.budget == "gpu":
            kw.update(tokens=gpu_tokens(name, token_info(data["meta"])), fit_seconds=rc.gpu_seconds,
                      max_seconds=a.max_seconds or 1.25 * rc.gpu_seconds)
        else:
            kw.update(tokens=rc.cpu_tokens, max_seconds=a.max_seconds, val_windows=0)
        state = RUNS / (f"smoke-{name}" if a.smoke else name)
        results[name] = train(name, a.out, state_dir=state, **kw)
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()

    extra = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python -m models.training.train_zoo " +
             " ".join(sys.argv[1:] if argv is None else argv), "wall_seconds": round(time.time() - t0, 1)}
    loaded = {n: zoo.ARCHS[zoo.ZOO[n].arch].load(a.out / n, dtype=torch.float32, device="cpu") for n in names}
    try:
        tok = Tokenizer.load()
    except ImportError as e:  # no sentencepiece on this machine: the checkpoints are still fine
        extra["samples"] = {"skipped": str(e)}
    else:
        samples = {}
        for n, m in loaded.items():
            ids = greedy(m, torch.tensor([tok.encode(PROMPT, bos=True)]), 48, eos=tok.eos_id)
            samples[n] = tok.decode(ids[0].tolist())
            log(f"[{n}] greedy sample:\n{samples[n]}")
        extra["samples"] = {"prompt": PROMPT, "new_tokens": 48, **samples}
    if {"target", "draft"} <= set(loaded):
        rows = np.asarray(data["val_slice"], dtype=np.int64)
        extra["draft_vs_target"] = agreement(loaded["target"], loaded["draft"], rows)
        log(f"draft vs target on the validation slice: {extra['draft_vs_target']}")
    manifest = write_manifest(a.out, results, extra)
    log(json.dumps({n: {k: manifest["models"][n][k] for k in ("params", "val_loss", "val_bpb", "tokens_seen",
                                                              "seconds")} for n in results}))
    log(f"train_zoo done in {time.time() - t0:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
