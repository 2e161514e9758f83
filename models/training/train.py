"""Train a named zoo model (models/zoo.py) on the stdlib token files (models/training/corpus.py).

    python -m models.training.train --config target --out DIR [--tokens N] [--device cpu|cuda]
                           [--max-seconds S] [--fit-seconds S] [--resume] [--compile]

Reproducible: initialisation is seeded on the CPU, and the batch of step s is a pure function of
(seed, s), so a resumed run sees exactly the batches an uninterrupted one would. Resume state
(fp32 weights + AdamW moments) is safetensors + JSON in --state (default runs/<name>), never
pickle. The checkpoint in DIR/<name>/ is model.safetensors (fp16) + config.json + train_log.json;
its validation numbers are measured on those fp16 weights, upcast to fp32, on the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .. import zoo
from ..artifacts import RUNS, SHIPPED
from . import corpus
from .evaluate import evaluate, strided_windows
from ..tokenizer import SHIPPED as TOKENIZER, Tokenizer

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Plan:
    """Everything that fixes the trajectory; recorded in the log and in the resume state."""
    name: str
    seed: int
    batch: int
    seq_len: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    total_steps: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len


def lr_at(step: int, p: Plan) -> float:
    """Linear warmup, then cosine from lr to min_lr_ratio * lr at total_steps."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    t = min(1.0, (step - p.warmup_steps) / max(1, p.total_steps - p.warmup_steps))
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def init_weights(model: torch.nn.Module, n_layers: int, std: float = 0.02) -> None:
    """GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers) so the
    residual stream does not grow with depth; a tied LM head then starts with small logits."""
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            s = std / math.sqrt(2 * n_layers) if name.endswith((".wo", ".w2")) else std
            torch.nn.init.normal_(m.weight, 0.0, s)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)


class Batches:
    """Each epoch cuts the stream into windows of seq_len + 1 at a seeded offset and visits them
    in a seeded permutation; step s takes global windows [s * batch, (s + 1) * batch)."""

    def __init__(self, tokens: torch.Tensor, batch: int, seq_len: int, seed: int):
        self.tokens, self.batch, self.width, self.seed = tokens, batch, seq_len + 1, seed
        self.n = (len(tokens) - self.width) // self.width
        if self.n < 1:
            raise ValueError(f"{len(tokens)} training tokens cannot fill one window of {self.width}")
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}
        self._ar = torch.arange(self.width, device=tokens.device)

    def _epoch(self, e: int):
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e])
            self._epochs = {e: (int(rng.integers(self.width)), rng.permutation(self.n))}
        return self._epochs[e]

    def starts(self, step: int) -> np.ndarray:
        out = []
        for g in range(step * self.batch, (step + 1) * self.batch):
            off, perm = self._epoch(g // self.n)
            out.append(off + self.width * int(perm[g % self.n]))
        return np.asarray(out)

    def __call__(self, step: int):
        starts = torch.as_tensor(self.starts(step), device=self.tokens.device)
        w = self.tokens[starts[:, None] + self._ar].long()  # (B, L + 1)
        return w[:, :-1], w[:, 1:]


# resume state: safetensors for tensors, JSON for the rest


def save_state(d: Path, model, opt, info: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    t = {f"model.{k}": v.detach().float().contiguous().cpu() for k, v in model.named_parameters()}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            t[f"opt.{i}.{k}"] = v.detach().contiguous().cpu()
    save_file(t, str(d / "state.safetensors.tmp"))
    (d / "state.json.tmp").write_text(json.dumps({**info, "param_groups": sd["param_groups"]}, indent=1))
    (d / "state.safetensors.tmp").replace(d / "state.safetensors")  # weights first, then the json that names them
    (d / "state.json.tmp").replace(d / "state.json")


def load_state(d: Path, model, opt) -> dict:
    info = json.loads((d / "state.json").read_text())
    t = load_file(str(d / "state.safetensors"))
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(t[f"model.{k}"])
    state: dict = {}
    for key, v in t.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    return info


def make_optimizer(model, p: Plan, device: str):
    decay = [q for q in model.parameters() if q.dim() >= 2]
    rest = [q for q in model.parameters() if q.dim() < 2]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=p.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))


def load_data(data_dir: Path) -> dict:
    meta = json.loads((data_dir / "meta.json").read_text())
    if meta["tokenizer"]["sha256"] != hashlib.sha256(TOKENIZER.read_bytes()).hexdigest():
        raise ValueError(f"{data_dir} was tokenized with another tokenizer: rerun `python -m models.training.corpus`")
    return {"train": corpus.load_tokens("train", data_dir), "val": corpus.load_tokens("val", data_dir),
            "val_slice": corpus.load_tokens("val_slice", data_dir), "meta": meta}


def token_info(meta: dict):
    """The shipped tokenizer, or, where sentencepiece is missing, the ids and byte lengths that
    data/meta.json recorded from it (all that training and bits per byte need)."""
    try:
        return Tokenizer.load()
    except ImportError:
        t = meta["tokenizer"]
        return SimpleNamespace(vocab_size=t["vocab_size"], unk_id=t["unk_id"], bos_id=t["bos_id"], eos_id=t["eos_id"],
                               pad_id=t["pad_id"], token_bytes=lambda: t["token_bytes"])


class Log:
    """Lines to stdout and appended to a text file."""

    def __init__(self, path: Path | None):
        self.path = path
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        tqdm.write(line)
        if self.path:
            with open(self.path, "a") as f:
                f.write(time.strftime("%H:%M:%S ") + line + "\n")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def train(name: str, out: str | Path, *, tokens: int | None = None, device: str = "cpu",
          max_seconds: float | None = None, fit_seconds: float | None = None, resume: bool = False,
          compile: bool = False, batch: int | None = None, seq_len: int | None = None,
          warmup_steps: int | None = None, seed: int = 0, state_dir: str | Path | None = None,
          data: dict | None = None, data_dir: Path = corpus.DATA_DIR, amp: str | None = "auto",
          ship_dtype: str = "float16", val_windows: int | None = None, evals: int = 4,
          stop_step: int | None = None, save_every_s: float = 600.0, log_file: Path | None = None) -> dict:
    """Train, save the checkpoint to out/<name>/, and return its train log (dict).

    tokens: budget (default: the recipe's cpu_tokens); fit_seconds: after a few timed steps,
    shrink the budget so training ends by then (the schedule follows the shrunk budget; the log
    records it, so `--tokens` reproduces the run); max_seconds: hard wall-clock stop, still
    saves and evaluates; stop_step: pause after that step (resume state only, for tests)."""
    t_start = time.time()
    entry = zoo.ZOO[name]
    rc = entry.recipe
    cuda = device.startswith("cuda")
    if amp == "auto":
        amp = "bfloat16" if cuda else "none"
    amp_dtype = DTYPES[amp] if amp and amp != "none" else None
    state_dir = Path(state_dir) if state_dir else RUNS / name
    log = Log(log_file or state_dir.with_suffix(".log"))  # beside the state: that holds only safetensors + json
    data = data if data is not None else load_data(data_dir)
    tok = token_info(data.get("meta", {}))
    token_bytes = tok.token_bytes()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(seed)
    model = zoo.build(name, tok)
    init_weights(model, model.config.n_layers)  # on the CPU: the same init on any device
    model.to(device).train()
    batch = batch or (rc.batch_gpu if cuda else rc.batch_cpu)
    seq_len = seq_len or rc.seq_len
    budget = tokens or rc.cpu_tokens
    total = max(1, budget // (batch * seq_len))
    warmup = warmup_steps if warmup_steps is not None else min(rc.warmup_steps, max(1, total // 10))
    plan = Plan(name, seed, batch, seq_len, rc.lr, rc.min_lr_ratio, warmup, rc.weight_decay, total)
    opt = make_optimizer(model, plan, device)
    info = {"step": 0, "seconds": 0.0, "sessions": 0, "history": [], "evals": [], "plan": asdict(plan)}
    if resume and (state_dir / "state.json").exists():
        info = load_state(state_dir, model, opt)
        plan = Plan(**info["plan"])
        log(f"[{name}] resumed at step {info['step']}/{plan.total_steps} from {state_dir}")
    info["sessions"] += 1
    seconds_before = info["seconds"]

    train_tokens = torch.from_numpy(np.asarray(data["train"], dtype=np.int32)).to(device)
    batches = Batches(train_tokens, plan.batch, plan.seq_len, plan.seed)
    val_sub = strided_windows(data["val"], plan.seq_len, 32)  # quick periodic check, training precision

    def loss_fn(x, y):
        return F.cross_entropy(model.forward_train(x).float().flatten(0, 1), y.flatten())

    step_fn = torch.compile(loss_fn) if compile else loss_fn
    amp_ctx = (lambda: torch.autocast(device.split(":")[0], dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    n_params = sum(q.numel() for q in model.parameters())
    log(f"[{name}] {n_params:,} params, compute {zoo.compute_per_token(model) / 1e6:.2f} MFLOP/token, "
        f"device {device_name(device)}, amp {amp_dtype}, compile {compile}, plan {asdict(plan)}")

    step, reason = info["step"], "budget"
    calib = {"from": step + 3, "to": step + 13} if fit_seconds and step == 0 else None
    evals_at = lambda p: {round(p.total_steps * (i + 1) / (evals + 1)) for i in range(evals)}  # noqa: E731
    eval_at = evals_at(plan)
    bar = tqdm(total=plan.total_steps * plan.tokens_per_step, initial=step * plan.tokens_per_step, unit="tok",
               unit_scale=True, mininterval=2.0 if sys.stderr.isatty() else 15.0, desc=name, file=sys.stderr)
    loss_sum, loss_n, t_mark, t_saved = torch.zeros((), device=device), 0, time.time(), time.time()
    log_every = max(1, min(50, plan.total_steps // 100))
    try:
        while step < plan.total_steps:
            if stop_step is not None and step >= stop_step:
                reason = "paused"
                break
            if max_seconds and time.time() - t_start > max_seconds:
                reason = "max_seconds"
                log(f"[{name}] max_seconds {max_seconds} reached at step {step}/{plan.total_steps}")
                break
            lr = lr_at(step, plan)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches(step)
            with amp_ctx():
                loss = step_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_sum += loss.detach()
            loss_n += 1
            bar.update(plan.tokens_per_step)
            if calib and step in (calib["from"], calib["to"]):
                if cuda:
                    torch.cuda.synchronize()
                calib[step] = time.time()
                if step == calib["to"]:
                    plan = _fit(plan, step, calib, fit_seconds - (time.time() - t_start), log)
                    bar.total = plan.total_steps * plan.tokens_per_step
                    eval_at, calib = evals_at(plan), None
            if step % log_every == 0 or step == plan.total_steps:
                mean = (loss_sum / loss_n).item()  # the only host sync, every log_every steps
                dt = time.time() - t_mark
                tps = loss_n * plan.tokens_per_step / dt
                info["history"].append([step, step * plan.tokens_per_step, round(mean, 4), lr,
                                        round(seconds_before + time.time() - t_start, 2)])
                bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                if step % (log_every * 10) == 0 or step == plan.total_steps:
                    log(f"[{name}] step {step}/{plan.total_steps} loss {mean:.4f} lr {lr:.2e} {tps:,.0f} tok/s")
                loss_sum, loss_n, t_mark = torch.zeros((), device=device), 0, time.time()
            if step in eval_at:
                t_eval = time.time()
                ev = evaluate(model, val_sub, token_bytes, amp_dtype=amp_dtype)
                t_mark += time.time() - t_eval  # keep tok/s a training speed
                info["evals"].append([step, step * plan.tokens_per_step, round(ev["loss"], 4)])
                log(f"[{name}] step {step} val(sub) loss {ev['loss']:.4f} bpb {ev['bpb']:.4f}")
            if time.time() - t_saved > save_every_s:
                _save(state_dir, model, opt, info, plan, step, seconds_before + time.time() - t_start)
                t_saved = time.time()
    except KeyboardInterrupt:
        _save(state_dir, model, opt, info, plan, step, seconds_before + time.time() - t_start)
        log(f"[{name}] interrupted at step {step}; state saved to {state_dir}, continue with --resume")
        raise
    finally:
        bar.close()
    if cuda:
        torch.cuda.synchronize()
    train_seconds = seconds_before + time.time() - t_start
    _save(state_dir, model, opt, info, plan, step, train_seconds)
    if reason == "paused":
        return info

    ckpt = Path(out) / name
    zoo.ARCHS[entry.arch].save(model.cpu(), ckpt, dtype=DTYPES[ship_dtype])
    shipped = zoo.ARCHS[entry.arch].load(ckpt, dtype=torch.float32, device="cpu")
    slice_rows = np.asarray(data["val_slice"], dtype=np.int64)
    val = evaluate(shipped, slice_rows, token_bytes)
    meta = data.get("meta", {})
    val.update(windows=len(slice_rows), len=slice_rows.shape[1] - 1, sha256=corpus.slice_sha256(slice_rows),
               slice_python=meta.get("python", sys.version.split()[0]),
               precision=f"{ship_dtype} weights upcast to float32, CPU")
    log(f"[{name}] shipped-weights val slice: loss {val['loss']:.4f} bpb {val['bpb']:.4f}")
    val_full = None
    if val_windows is None or val_windows > 0:
        with _no_tf32():
            val_full = evaluate(shipped.to(device), strided_windows(data["val"], plan.seq_len, val_windows),
                                token_bytes, batch_size=32 if cuda else 4)
        val_full["precision"] = f"{ship_dtype} weights upcast to float32, {device}"
        log(f"[{name}] shipped-weights val split ({val_full['tokens']} tokens): loss {val_full['loss']:.4f} "
            f"bpb {val_full['bpb']:.4f}")
    n_train = len(data["train"])
    result = {
        "name": name, "arch": entry.arch, "config": model.config.to_dict(), "params": n_params,
        "compute_params": zoo.compute_params(model), "compute_per_token": zoo.compute_per_token(model),
        "plan": asdict(plan), "stop_reason": reason, "steps": step, "tokens_seen": step * plan.tokens_per_step,
        "epochs": round(step * plan.tokens_per_step / n_train, 3), "seconds": round(train_seconds, 1),
        "sessions": info["sessions"], "device": device_name(device), "amp": str(amp_dtype), "compile": compile,
        "torch": torch.__version__, "python": sys.version.split()[0], "ship_dtype": ship_dtype,
        "corpus": {k: meta.get(k) for k in ("python", "train", "val", "tokenizer_vocab")},
        "val": val, "val_full": val_full, "history": info["history"], "evals": info["evals"],
        "reproduce": (f"python -m models.training.train --config {name} --device {device} "
                      f"--tokens {plan.total_steps * plan.tokens_per_step} --batch {plan.batch} "
                      f"--seq-len {plan.seq_len} --warmup-steps {plan.warmup_steps} --seed {plan.seed}"
                      + (f" (stopped by max_seconds after step {step})" if reason == "max_seconds" else "")),
    }
    (ckpt / "train_log.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"[{name}] saved {ckpt} ({step * plan.tokens_per_step:,} tokens, {train_seconds:.0f} s, {reason})")
    return result


def _fit(plan: Plan, step: int, calib: dict, seconds_left: float, log) -> Plan:
    """Shrink total_steps so the remaining steps fit in seconds_left at the measured speed."""
    per_step = (calib[calib["to"]] - calib[calib["from"]]) / (calib["to"] - calib["from"])
    fit = step + int(0.97 * max(0.0, seconds_left) / per_step)
    log(f"[{plan.name}] measured {plan.tokens_per_step / per_step:,.0f} tok/s; "
        f"{plan.total_steps} planned steps, {fit} fit")
    if fit >= plan.total_steps:
        return plan
    return Plan(**{**asdict(plan), "total_steps": max(fit, step + 1)})


def _save(state_dir, model, opt, info, plan, step, seconds) -> None:
    info.update(step=step, seconds=seconds, plan=asdict(plan))
    save_state(Path(state_dir), model, opt, info)


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, choices=sorted(zoo.ZOO))
    ap.add_argument("--out", default=str(SHIPPED))
    ap.add_argument("--tokens", type=int, help="token budget (default: the recipe's CPU budget)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-seconds", type=float, help="hard wall-clock cap; still evaluates and saves")
    ap.add_argument("--fit-seconds", type=float, help="shrink the budget to end by then (measured speed)")
    ap.add_argument("--resume", action="store_true", help="continue from --state if it holds a run")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state", help="resume-state directory (default runs/<config>)")
    ap.add_argument("--data", type=Path, default=corpus.DATA_DIR)
    ap.add_argument("--amp", default="auto", choices=["auto", "none", "bfloat16", "float16"])
    ap.add_argument("--val-windows", type=int, help="windows of the full validation split to score (0: none)")
    ap.add_argument("--evals", type=int, default=4, help="quick validation checks during training")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    train(a.config, a.out, tokens=a.tokens, device=a.device, max_seconds=a.max_seconds, fit_seconds=a.fit_seconds,
          resume=a.resume, compile=a.compile, batch=a.batch, seq_len=a.seq_len, warmup_steps=a.warmup_steps,
          seed=a.seed, state_dir=a.state, data_dir=a.data, amp=a.amp, evals=a.evals,
          val_windows=a.val_windows if a.val_windows is not None else (None if a.device.startswith("cuda") else 0))


if __name__ == "__main__":
    main()
