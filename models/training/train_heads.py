"""Train blockwise proposal heads (models/heads.py) on a frozen native target.

    python -m models.training.train_heads --target models/shipped/target --out runs/heads --k 6 \
        --data distill --device cuda --max-seconds 30                    # models/shipped/heads_independent
    python -m models.training.distill_draft generate --rows 40960                   # greedy rows for --data rows
    python -m models.training.train_heads --target models/shipped/target --out runs/hydra_k6 --kind hydra --k 6 \
        --data rows --rows-dir runs/distill --device cpu --threads 2 --cpu-bf16 --batch 2048 \
        --lr 3e-3 --tokens 12000000 --max-seconds 0                      # models/shipped/heads

Data (`--data`):
  corpus   head i at position t learns the corpus token t+1+i (teacher forcing on real code).
  distill  sequence-level self-distillation, as Stern et al. (who distil with the teacher's own
           outputs): a corpus window of `--prompt-len` tokens is continued greedily by the target
           for `--gen-len` tokens, and the heads learn that continuation. Along a greedy sequence
           the tokens after position t ARE the target's greedy chain from the prefix at t, so every
           generated position is an exact label for all k heads at once: one batched greedy
           generation gives gen-len exact examples per row, against k + 1 sequential forwards per
           position for per-position chains. Exact blockwise acceptance checks the heads against
           exactly this chain, which is why distillation raises acceptance over corpus labels.
  rows     the same self-distillation from rows generated beforehand by
           `python -m models.training.distill_draft generate` (`--rows-dir`): the frozen target's features are
           computed once per chunk and cached (models/training/head_features.py), and every step trains on
           `--batch` random continuation positions of all rows. For CPU training, where a target
           forward per step would cost as much as the heads' own step.

`--kind`: "independent" heads (Stern et al.) or "hydra" heads that also read the token before each
guess (models/heads.py); both train with teacher forcing on the same labels.

Reproducible: the heads start from `--seed`, and batch b's data comes from a generator seeded with
(seed, b), so a resumed run (`--resume`, state in `--state`, safetensors + JSON) continues exactly.
The LR schedule follows the token budget; `--max-seconds` (wall clock of the training loop) and
`--max-steps` stop earlier, and the heads are still saved and evaluated. The evaluation reports
per-head top-1 accuracy against the target's greedy continuation of held-out prompts (the
acceptance proxy) and the expected tokens per target forward of exact blockwise decoding.
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
from safetensors.torch import load_file, save_file

from ..artifacts import DATA
from ..checkpoint import load as load_target
from .head_features import PositionBatches, cache_features
from ..heads import HeadsConfig, build_heads, save_heads

DATA_DIR = DATA  # where models.training.corpus writes train/val.bin
IGNORE = -100


# -- data ---------------------------------------------------------------------------------------------
def read_tokens(path: str | Path) -> np.ndarray:
    """uint16 tokens from a .npy file or a raw little-endian .bin file (models.training.corpus), memory-mapped."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: build the corpus with `python -m models.training.corpus` or pass --tokens-file")
    if p.suffix == ".npy":
        return np.load(p, mmap_mode="r")
    return np.memmap(p, dtype="<u2", mode="r")


def windows(tokens: np.ndarray, rows: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """(rows, length) int64 random windows of `tokens`."""
    if len(tokens) <= length:
        raise ValueError(f"token file holds {len(tokens)} tokens, fewer than one window of {length}")
    starts = rng.integers(0, len(tokens) - length, size=rows)
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + length], dtype=np.int64) for s in starts]))


@torch.no_grad()
def greedy_continue(target, prompts: torch.Tensor, n: int, cache=None) -> torch.Tensor:
    """prompts (B, P) -> (B, P + n): the target's greedy continuation, one cached step per token."""
    B, P = prompts.shape
    if cache is None:
        cache = target.new_cache(B, P + n)
    cache.truncate(cache.lengths.clone())  # reuse the buffers (and any CUDA graphs on them)
    out = torch.empty(B, P + n, dtype=torch.long, device=prompts.device)
    out[:, :P] = prompts
    logits = target(prompts, cache, logits_to_keep=1)
    for j in range(n):
        out[:, P + j] = logits[:, -1].argmax(-1)
        if j + 1 < n:
            logits = target(out[:, P + j:P + j + 1], cache)
    return out


def head_window(seq: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """seq (B, L) -> (B, L - 1 - start, k + 1) for positions t in [start, L - 2]: tokens t+1..t+k+1,
    IGNORE where that runs past the end. Head i reads [..., i - 1] (hydra) and predicts [..., i]."""
    L = seq.shape[1]
    t = torch.arange(start, L - 1, device=seq.device)
    idx = t[:, None] + 1 + torch.arange(k + 1, device=seq.device)  # (T', k + 1)
    return seq[:, idx.clamp(max=L - 1)].masked_fill(idx >= L, IGNORE)


def window_logits(target, heads, hidden: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits (B, T, k, V) of hidden (B, T, dim) and its token window (B, T, k + 1)."""
    return heads.train_logits(hidden, window[..., :-1].clamp(min=0), target)


def window_loss(target, heads, hidden: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of all heads: head i predicts window[..., i]."""
    logits = window_logits(target, heads, hidden, window)
    return F.cross_entropy(logits.flatten(0, 2).float(), window[..., 1:].flatten(), ignore_index=IGNORE)


def heads_loss(target, heads, seq: torch.Tensor, start: int) -> torch.Tensor:
    """Mean cross-entropy of all heads over positions [start, L - 2] of seq (B, L)."""
    with torch.no_grad():
        hidden = target.hidden_train(seq)[:, start:-1]  # (B, T', dim), frozen target
    return window_loss(target, heads, hidden, head_window(seq, start, heads.k))


class Batches:
    """Deterministic training rows: batch b comes from pool b // per_pool, pool p from rng (seed, p)."""

    def __init__(self, args, target, tokens: np.ndarray):
        self.args, self.target, self.tokens = args, target, tokens
        self.per_pool = max(1, args.pool_rows // args.batch)
        self.pool_id, self.pool, self.cache = None, None, None

    def get(self, b: int) -> tuple[torch.Tensor, int]:
        """(rows (batch, L), first trained position)."""
        a, p = self.args, b // self.per_pool
        if p != self.pool_id:
            rng = np.random.default_rng([a.seed, p])
            dev = self.target.device
            if a.data == "corpus":
                self.pool = windows(self.tokens, self.per_pool * a.batch, a.seq + 1 + a.k, rng).to(dev)
            else:
                prompts = windows(self.tokens, self.per_pool * a.batch, a.prompt_len, rng).to(dev)
                if self.cache is None:
                    self.cache = self.target.new_cache(prompts.shape[0], a.prompt_len + a.gen_len)
                self.pool = greedy_continue(self.target, prompts, a.gen_len, self.cache)
            self.pool_id = p
        i = b % self.per_pool
        return self.pool[i * a.batch:(i + 1) * a.batch], (0 if a.data == "corpus" else a.prompt_len - 1)


# -- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(target, heads, val: np.ndarray, *, rows: int, prompt_len: int, gen_len: int,
             batch: int = 64) -> dict:
    """Per-head top-1 accuracy against the target's greedy continuation of held-out prompts."""
    rng = np.random.default_rng(0)  # the same held-out prompts for every run
    prompts = windows(val, rows, prompt_len, rng).to(target.device)
    k, start = heads.k, prompt_len - 1
    cuda = target.device.type == "cuda"
    cache = target.new_cache(batch, prompt_len + gen_len) if rows % batch == 0 else None
    hits, full_hits, self_hits, n, n_full = torch.zeros(k), torch.zeros(k), 0, torch.zeros(k), 0
    for lo in range(0, rows, batch):
        seq = greedy_continue(target, prompts[lo:lo + batch], gen_len, cache)
        hidden = target.hidden_train(seq)[:, start:-1]  # (B, T', dim)
        window = head_window(seq, start, k)
        with torch.autocast(target.device.type, dtype=torch.bfloat16, enabled=cuda):
            # teacher forcing = what exact acceptance sees: head i counts only after heads < i were right
            pred = window_logits(target, heads, hidden, window).argmax(-1)  # (B, T', k)
        labels = window[..., 1:]
        valid = labels != IGNORE
        ok = (pred == labels) & valid
        hits += ok.sum((0, 1)).float().cpu()
        n += valid.sum((0, 1)).float().cpu()
        full = valid.all(-1)  # positions where all k heads have a label
        full_hits += (ok.cumprod(-1).bool() & full[..., None]).sum((0, 1)).float().cpu()
        n_full += int(full.sum())
        # sanity: the target's own head on the recomputed hidden reproduces the greedy tokens
        self_hits += int((target.lm_head(hidden).argmax(-1) == seq[:, start + 1:]).sum())
    prefix = (full_hits / max(n_full, 1)).tolist()  # P(heads 1..i all right)
    return {"rows": rows, "prompt_len": prompt_len, "gen_len": gen_len, "positions": int(n[0]),
            "head_top1": [round(x, 4) for x in (hits / n.clamp(min=1)).tolist()],
            "prefix_accept": [round(x, 4) for x in prefix],
            # exact blockwise emits the target's token plus every head up to the first miss
            "est_tokens_per_forward": round(1 + sum(prefix), 4),
            "target_self_agreement": round(self_hits / (rows * gen_len), 4)}


# -- training state (safetensors + JSON, no pickle) ---------------------------------------------------
def save_state(d: Path, heads, opt, meta: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    names = {id(p): n for n, p in heads.named_parameters()}
    t = {f"heads.{n}": p.detach().cpu().contiguous() for n, p in heads.named_parameters()}
    for p, st in opt.state.items():
        for key, v in st.items():
            t[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(v).detach().cpu().contiguous()
    save_file(t, str(d / "state.safetensors"))
    (d / "state.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_state(d: Path, heads, opt) -> dict:
    t = load_file(str(d / "state.safetensors"))
    with torch.no_grad():
        for n, p in heads.named_parameters():
            p.copy_(t[f"heads.{n}"])
    sd = opt.state_dict()
    for i, (n, _) in enumerate(heads.named_parameters()):
        st = {key.rsplit(".", 1)[1]: v for key, v in t.items() if key.startswith(f"opt.{n}.")}
        if st:
            sd["state"][i] = st
    opt.load_state_dict(sd)
    return json.loads((d / "state.json").read_text())


def lr_at(step_tokens: int, budget: int, base: float, warmup_tokens: int) -> float:
    if step_tokens < warmup_tokens:
        return base * (step_tokens + 1) / warmup_tokens
    frac = min(1.0, (step_tokens - warmup_tokens) / max(1, budget - warmup_tokens))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine to 10%


# -- main ---------------------------------------------------------------------------------------------
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="native target checkpoint directory")
    ap.add_argument("--out", required=True, help="where heads.safetensors, heads.json, train_log.json go")
    ap.add_argument("--k", type=int, default=4, help="number of heads (tokens proposed beyond the target's own)")
    ap.add_argument("--hidden", type=int, default=None, help="head feed-forward width (default: target dim)")
    ap.add_argument("--kind", choices=("independent", "hydra"), default="independent",
                    help="independent heads (Stern et al.) or hydra heads that read the token before each guess")
    ap.add_argument("--data", choices=("distill", "corpus", "rows"), default="distill")
    ap.add_argument("--rows-dir", default="runs/distill",
                    help="rows: greedy rows from `python -m models.training.distill_draft generate` (features cached there)")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="run the heads under bf16 autocast on CPU too (AMX; always on for CUDA)")
    ap.add_argument("--tokens", type=int, default=14_000_000,
                    help="budget of trained positions (sized for ~25 s of distill training on an H200)")
    ap.add_argument("--tokens-file", default=None, help="uint16 .bin/.npy training tokens (default data/train.bin)")
    ap.add_argument("--val-tokens-file", default=None, help="held-out tokens (default data/val.bin, else "
                    "the last 2%% of --tokens-file)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="wall-clock cap of the training loop (0 = none)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop this run after this many steps (0 = none)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--state", default=None, help="training-state directory (default runs/heads_<out name>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=64, help="rows per optimizer step (rows data: positions per step)")
    ap.add_argument("--seq", type=int, default=256, help="corpus: trained positions per row")
    ap.add_argument("--prompt-len", type=int, default=32, help="distill/eval: corpus prompt length")
    ap.add_argument("--gen-len", type=int, default=224, help="distill: greedy tokens generated per row")
    ap.add_argument("--pool-rows", type=int, default=4096,
                    help="rows generated at once: batched greedy is ~2x faster per token at 4096 than 1024 rows")
    ap.add_argument("--eval-rows", type=int, default=256)
    ap.add_argument("--eval-gen-len", type=int, default=128)
    ap.add_argument("--save-every", type=float, default=120.0, help="seconds between state saves")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return ap.parse_args(argv)


def load_data(args, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    train = read_tokens(args.tokens_file or DATA_DIR / "train.bin")
    if args.val_tokens_file:
        val = read_tokens(args.val_tokens_file)
    elif args.tokens_file is None:
        val = read_tokens(DATA_DIR / "val.bin")
    else:  # one file: hold out its tail
        cut = int(len(train) * 0.98)
        train, val = train[:cut], train[cut:]
    for name, arr in (("training", train), ("held-out", val)):
        if int(arr.max()) >= vocab:
            raise ValueError(f"{name} tokens reach id {int(arr.max())} but the target's vocabulary is {vocab}: "
                             f"the token file and the target use different tokenizers")
    return train, val


def main(argv=None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    # the frozen target runs in bf16 on GPU (its CUDA-graph decode steps need no autocast); heads
    # keep fp32 master weights and run under bf16 autocast there
    target = load_target(args.target, dtype=torch.bfloat16 if cuda else torch.float32, device=dev)
    target.requires_grad_(False).eval()
    train_tok, val_tok = load_data(args, target.vocab_size)
    if args.data == "distill" and args.prompt_len + args.gen_len > target.config.max_seq_len:
        raise ValueError(f"prompt-len + gen-len exceeds the target's max_seq_len {target.config.max_seq_len}")

    torch.manual_seed(args.seed)
    heads = build_heads(HeadsConfig.for_target(target, args.k, args.hidden, args.kind)).to(dev)
    opt = torch.optim.AdamW(heads.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    state_dir = Path(args.state or Path("runs") / f"heads_{Path(args.out).name}")
    # what must not change on resume (a larger --tokens budget may: it extends the schedule)
    fingerprint = {"heads": heads.config.to_dict(), **{n: getattr(args, n) for n in (
        "data", "seed", "batch", "seq", "prompt_len", "gen_len", "pool_rows", "tokens_file", "rows_dir")}}
    step, tokens, history, elapsed_before = 0, 0, [], 0.0
    if args.resume and (state_dir / "state.json").exists():
        meta = load_state(state_dir, heads, opt)
        if meta["fingerprint"] != fingerprint:
            raise ValueError(f"{state_dir} was written by a different run: {meta['fingerprint']} vs {fingerprint}")
        step, tokens, history, elapsed_before = meta["step"], meta["tokens"], meta["history"], meta["elapsed_s"]
        print(f"resumed at step {step}, {tokens} tokens")
    elif args.resume:
        print(f"--resume: no state in {state_dir}, starting fresh")

    if args.data == "rows":
        cache_features(target, args.rows_dir)
        batches = PositionBatches(args.rows_dir, k=args.k, positions=args.batch, seed=args.seed, device=dev,
                                  ignore=IGNORE)
        per_step = args.batch
    else:
        batches = Batches(args, target, train_tok)
        per_step = args.batch * (args.seq if args.data == "corpus" else args.gen_len)
    autocast = cuda or args.cpu_bf16
    warmup = min(args.tokens // 10, 30 * per_step)

    def save(elapsed):
        save_state(state_dir, heads, opt, {"fingerprint": fingerprint, "step": step, "tokens": tokens,
                                           "history": history, "elapsed_s": elapsed})

    from tqdm import tqdm
    bar = tqdm(total=args.tokens, initial=tokens, unit="tok", unit_scale=True, mininterval=1.0,
               disable=False)
    t0 = last_save = time.perf_counter()
    stopped_by, run_steps, run_tokens = "tokens", 0, 0
    while tokens < args.tokens:
        now = time.perf_counter()
        if args.max_seconds and now - t0 >= args.max_seconds:
            stopped_by = "max_seconds"
            break
        if args.max_steps and run_steps >= args.max_steps:
            stopped_by = "max_steps"
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(tokens, args.tokens, args.lr, warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            if args.data == "rows":
                hidden, window = batches.get(step)
                loss = window_loss(target, heads, hidden.to(target.dtype), window)
            else:
                seq, start = batches.get(step)
                loss = heads_loss(target, heads, seq, start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        opt.step()
        step, run_steps = step + 1, run_steps + 1
        tokens, run_tokens = tokens + per_step, run_tokens + per_step
        if step % 10 == 0 or step <= 3:
            lv = loss.item()  # a host sync, so only every 10 steps
            history.append([step, tokens, round(lv, 4)])
            bar.set_postfix(loss=f"{lv:.3f}", tok_s=f"{run_tokens / (time.perf_counter() - t0):.0f}")
        bar.update(per_step)
        if time.perf_counter() - last_save > args.save_every:
            save(elapsed_before + time.perf_counter() - t0)
            last_save = time.perf_counter()
    bar.close()
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    save(elapsed_before + train_s)
    out = save_heads(heads, args.out)

    heads.eval()
    t1 = time.perf_counter()
    ev = evaluate(target, heads, val_tok, rows=args.eval_rows, prompt_len=args.prompt_len,
                  gen_len=args.eval_gen_len, batch=min(64, args.eval_rows))
    log = {"target": str(args.target), "heads": heads.config.to_dict(), "data": args.data,
           "parameters": heads.config.num_parameters(), "file_bytes": (out / "heads.safetensors").stat().st_size,
           "steps": step, "tokens": tokens, "stopped_by": stopped_by, "train_s_this_run": round(train_s, 2),
           "train_s_total": round(elapsed_before + train_s, 2),
           "tokens_per_s_this_run": round(run_tokens / max(train_s, 1e-9)), "eval_s": round(time.perf_counter() - t1, 2),
           "final_loss": history[-1][2] if history else None, "loss_history": history, "eval": ev,
           "args": vars(args), "device": torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version()}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps({k: log[k] for k in ("steps", "tokens", "stopped_by", "train_s_this_run",
                                          "tokens_per_s_this_run", "final_loss", "eval")}, indent=2))
    return log


if __name__ == "__main__":
    main()
