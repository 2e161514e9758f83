"""Distil the speculative draft on the target's own greedy text (DistillSpec-style, hard labels).

    python -m models.training.distill_draft generate --rows 8192          # target's greedy continuations
    python -m models.training.distill_draft train --max-seconds 1500       # fine-tune the shipped draft on them
    python -m models.training.distill_draft ship                           # replace models/shipped/draft

Greedy speculative decoding accepts a drafted token exactly when it equals the target's argmax, so
the draft is trained with cross-entropy on the target's greedy continuations of corpus windows:
the labels are the very tokens a greedy verify compares against. `ship` copies the result over the
shipped draft, re-measures its validation loss on the corpus slice for train_log.json (the
pre-training record stays; the distillation is appended) and updates MANIFEST.json. `generate` writes chunks of
`--chunk-rows` rows (uint16 .npy, prompt + continuation) to `--data-dir`, chunk c seeded with
(seed, c), so rerunning continues where it stopped and reproduces the same rows. `train` starts
from `--init` (the shipped draft), trains only on continuation positions, evaluates on held-out
prompts (token agreement with the target's greedy continuation and the expected tokens per target
forward of greedy speculative decoding at k = 2, 4, 6), and writes a fp16 checkpoint with its log.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..artifacts import RUNS, SHIPPED
from ..checkpoint import load, save
from .head_features import greedy_rows
from .train_heads import DATA_DIR, greedy_continue, read_tokens, windows
from .train_zoo import draft_matches, spec_tau


def generate(args) -> None:
    target = load(args.target, dtype=torch.float32).eval()
    tokens = read_tokens(args.tokens_file or DATA_DIR / "train.bin")
    d = Path(args.data_dir)
    d.mkdir(parents=True, exist_ok=True)
    cache = target.new_cache(args.chunk_rows, args.prompt_len + args.gen_len)
    t0 = time.perf_counter()
    for c in range(math.ceil(args.rows / args.chunk_rows)):
        f = d / f"chunk_{c:04d}.npy"
        if f.exists():
            continue
        if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
            break
        prompts = windows(tokens, args.chunk_rows, args.prompt_len, np.random.default_rng([args.seed, c]))
        with torch.inference_mode():
            seq = greedy_continue(target, prompts, args.gen_len, cache)
        np.save(d / f"tmp_{c:04d}.npy", seq.numpy().astype(np.uint16))
        (d / f"tmp_{c:04d}.npy").rename(f)  # a chunk appears only when complete
        print(f"chunk {c}: {seq.numel()} tokens, {time.perf_counter() - t0:.0f} s", flush=True)
    (d / "meta.json").write_text(json.dumps({"target": str(args.target), "prompt_len": args.prompt_len,
                                             "gen_len": args.gen_len, "seed": args.seed}, indent=2) + "\n")


def loss_on(draft, seq: torch.Tensor, start: int) -> torch.Tensor:
    """Cross-entropy of the draft predicting seq[:, t + 1] for t >= start - 1 (the continuation)."""
    logits = draft.forward_train(seq[:, :-1])[:, start - 1:]
    return F.cross_entropy(logits.flatten(0, 1).float(), seq[:, start:].flatten())


@torch.no_grad()
def agreement(draft, target, prompts: torch.Tensor, gen_len: int, ks=(2, 4, 6)) -> dict:
    """On the target's greedy continuation of prompts (rows, P), cached: per-token agreement of the
    draft's argmax and the tau of greedy speculative decoding at each k (models.training.train_zoo)."""
    P = prompts.shape[1]
    match = draft_matches(draft, greedy_continue(target, prompts, gen_len), P)
    return {"rows": prompts.shape[0], "prompt_len": P, "gen_len": gen_len, "agreement": round(float(match.mean()), 4),
            **{f"tau_k{k}": round(spec_tau(match, k), 4) for k in ks}}


def train(args) -> dict:
    """Fine-tune --init on the generated rows; returns the log written next to the checkpoint."""
    target = load(args.target, dtype=torch.float32).eval()
    draft = load(args.init, dtype=torch.float32)
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"draft vocabulary {draft.vocab_size} != target's {target.vocab_size}")
    data, start = greedy_rows(Path(args.data_dir))
    val = read_tokens(args.val_tokens_file or DATA_DIR / "val.bin")
    held_out = windows(val, args.eval_rows, start, np.random.default_rng(0))  # the same rows every run
    draft.eval()
    before = agreement(draft, target, held_out, args.eval_gen_len)
    print("before", before, flush=True)
    draft.train()
    torch.manual_seed(args.seed)
    opt = torch.optim.AdamW(draft.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    steps = max(1, args.epochs * len(data) // args.batch)
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(len(data)) for _ in range(args.epochs + 1)])
    t0, history, step = time.perf_counter(), [], 0
    while step < steps and not (args.max_seconds and time.perf_counter() - t0 > args.max_seconds):
        frac = step / steps
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        seq = torch.from_numpy(data[order[step * args.batch:(step + 1) * args.batch]])
        loss = loss_on(draft, seq, start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0 or step == 1:
            history.append([step, round(loss.item(), 4)])
            print(f"step {step}/{steps} loss {history[-1][1]} {time.perf_counter() - t0:.0f} s", flush=True)
    train_s = time.perf_counter() - t0
    out = save(draft, args.out, dtype=torch.float16)  # as shipped; measured below as loaded
    after = agreement(load(out, dtype=torch.float32).eval(), target, held_out, args.eval_gen_len)
    print("after", after, flush=True)
    log = {"init": str(args.init), "target": str(args.target), "data_rows": len(data), "prompt_len": start,
           "gen_len": data.shape[1] - start, "steps": step, "planned_steps": steps, "train_s": round(train_s, 1),
           "positions_trained": step * args.batch * (data.shape[1] - start), "loss_history": history,
           "eval_before": before, "eval_after": after, "args": vars(args),
           "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__}
    (Path(out) / "distill_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log


def ship(args) -> dict:
    """Replace --to (the shipped draft) with --out, keeping MANIFEST.json and the logs truthful."""
    import shutil

    from . import corpus
    from .evaluate import evaluate
    from .train_zoo import agreement as zoo_agreement, write_manifest

    src, dst = Path(args.out), Path(args.to)
    if not (src / "distill_log.json").exists():
        raise FileNotFoundError(f"{src} has no distill_log.json: ship a directory written by `train` (--out)")
    rounds, d = [], src  # a run started from an earlier distilled draft: record every round
    while (d / "distill_log.json").exists() and d.resolve() != dst.resolve():
        r = json.loads((d / "distill_log.json").read_text())
        rounds.insert(0, {k: r[k] for k in ("init", "data_rows", "prompt_len", "gen_len", "steps", "train_s",
                                            "positions_trained", "eval_before", "eval_after", "device")})
        rounds[0]["lr"], rounds[0]["epochs"] = r["args"]["lr"], r["args"]["epochs"]
        d = Path(r["init"])
    log = json.loads((dst / "train_log.json").read_text())
    for f in ("model.safetensors", "config.json", "distill_log.json"):
        shutil.copyfile(src / f, dst / f)
    draft = load(dst, dtype=torch.float32).eval()
    target = load(args.target, dtype=torch.float32).eval()
    meta = json.loads((DATA_DIR / "meta.json").read_text())
    token_bytes = meta["tokenizer"]["token_bytes"]
    rows = np.asarray(corpus.load_tokens("val_slice"), dtype=np.int64)
    val = evaluate(draft, rows, token_bytes)
    val.update({k: log["val"][k] for k in ("windows", "len", "sha256", "slice_python")},
               precision="float16 weights upcast to float32, CPU")
    log["pretraining_val"] = log.get("pretraining_val", log["val"])
    log["val"], log["val_full"] = val, None  # the full-split number was the pre-distillation model's
    log["distilled"] = {"rounds": rounds, "train_s": round(sum(r["train_s"] for r in rounds), 1),
                        "eval_before": rounds[0]["eval_before"], "eval_after": rounds[-1]["eval_after"],
                        "reproduce": args.reproduce}
    (dst / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    shipped = dst.parent
    manifest = json.loads((shipped / "MANIFEST.json").read_text())
    entry = manifest["models"][dst.name]
    base = entry["device"].split("; distilled on ")[0]  # where it was pre-trained (a re-ship replaces the rest)
    result = {"arch": entry["arch"], "params": entry["params"], "compute_per_token": entry["compute_per_token"],
              "val": val, "tokens_seen": entry["tokens_seen"], "seconds": entry["seconds"],
              "device": f"{base}; distilled on {', '.join(sorted({r['device'] for r in rounds}))}, "
                        f"{log['distilled']['train_s']} s"}
    extra = {"draft_vs_target": zoo_agreement(target, draft, rows)}
    return write_manifest(shipped, {dst.name: result}, extra)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("generate", "train", "ship"))
    ap.add_argument("--target", default=str(SHIPPED / "target"))
    ap.add_argument("--init", default=str(SHIPPED / "draft"))
    ap.add_argument("--out", default=str(RUNS / "draft_distilled"))
    ap.add_argument("--reproduce", default="", help="ship: the commands that made --out, for the log")
    ap.add_argument("--to", default=str(SHIPPED / "draft"), help="ship: the draft to replace")
    ap.add_argument("--data-dir", default=str(RUNS / "distill"))
    ap.add_argument("--tokens-file", default=None, help="generate: corpus tokens for prompts (default data/train.bin)")
    ap.add_argument("--val-tokens-file", default=None, help="train: held-out tokens (default data/val.bin)")
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--chunk-rows", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-rows", type=int, default=128)
    ap.add_argument("--eval-gen-len", type=int, default=128)
    ap.add_argument("--max-seconds", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"generate": generate, "train": train, "ship": ship}[args.command](args)


if __name__ == "__main__":
    main()
