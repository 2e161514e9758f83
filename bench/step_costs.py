"""Where a speculative or blockwise round's time goes on this machine, and what the CPU issue's speed
goals (speculative k = 4 >= 1.5x greedy, speculative sampling >= 1.1x sampling, exact blockwise >=
1.2x greedy) would need from it.

    python -m bench.step_costs                        # CPU, 1 thread -> bench/results/cpu/
    python -m bench.step_costs --smoke --out /tmp/x   # tiny random models, a few seconds

1. Forwards alone: median ms of the shipped target at T = 1 (a greedy step) and T = k + 1 (a verify
   block), of the draft's decode step and of the heads' (--heads, default the shipped hydra heads)
   --blockwise-k guesses; the target's and the draft's step also compiled (models/compiled_cpu.py,
   built or loaded from its disk cache; --no-compile skips it), and blockwise's compiled verify that
   also returns the heads' guesses. Whole calls (part 2) run with the default: compiled where available.
   Items take turns in each repetition, so noise bursts hit all alike.
2. Whole calls: greedy, speculative (draft, k, exactly k guesses a round), exact blockwise (heads,
   --blockwise-k, default 1: its fastest on this CPU, bench.blockwise), sampling and speculative sampling (seed 0, HF's sampling defaults) on the prompts, with every model forward (and heads call) timed by a wrapper; the rest of the
   call's wall time is the loop's own bookkeeping. Each call counts from the end of its first target
   forward (the prefill; on the skeleton it also verifies round 1's guesses).
3. Arithmetic from part 2, per goal: x the base mode = tau * g / round (g: the base's ms per token;
   speculative round = verify + draft steps x step + bookkeeping, blockwise = verify + heads +
   bookkeeping, where the compiled verify computes the heads' guesses itself and heads are ~0), its ceiling with only the verify left (tau * g / verify), the ms per round the rest
   may take at the goal, and the tau the goal needs at the measured round cost.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

import decoding
from decoding.strategies import speculative_row
from bench.common import code_prompts, machine, markdown_table, write_results
from models.artifacts import SHIPPED


class Timed:
    """Wraps obj.<name> (an instance attribute shadows the method) and logs (name, start, end) of
    every call into `log`; a call made inside another logged call of the same name is not logged
    again (a bound forward's masked step runs the forward itself)."""

    def __init__(self, obj, attr: str, name: str, log: list, fn=None):
        self.fn, self.name, self.log = fn or getattr(obj, attr), name, log
        self.__signature__ = inspect.signature(self.fn)  # callers inspect forward's arguments
        if obj is not None:
            setattr(obj, attr, self)

    def __call__(self, *args, **kw):
        if self.name in _busy:
            return self.fn(*args, **kw)
        _busy.add(self.name)
        t0 = time.perf_counter()
        try:
            out = self.fn(*args, **kw)
        finally:
            _busy.discard(self.name)
        self.log.append((self.name, t0, time.perf_counter()))
        return out


_busy: set[str] = set()  # names of the logged calls now running


class FirstRound:
    """A streamer that keeps how many tokens the call's first target forward gave (its second
    chunk: the first is the prompt). Cheaper than verify.tracing()'s Rounds, so it leaves the
    bookkeeping as the call has it."""

    def __init__(self):
        self.chunks, self.tokens = 0, 0

    def put(self, tokens):
        self.chunks += 1
        if self.chunks == 2:
            self.tokens = tokens.numel()

    def end(self):
        pass


def time_steps(model, name: str, log: list) -> None:
    """Logs, as `name`, the model's forwards (the prefill) and every step of the forwards it binds
    to a cache (model.forward_on: the strategies' decode, draft and verify steps)."""
    Timed(model, "forward", name, log)
    bind = model.forward_on
    model.forward_on = lambda cache: Timed(None, "", name, log, fn=bind(cache))
    guessing = getattr(model, "guessing_on", None)
    if guessing is not None:  # blockwise's verify with the heads' guesses in one compiled step: a target forward
        model.guessing_on = lambda cache, heads: _timed(guessing(cache, heads), name, log)


def _timed(step, name: str, log: list):
    return None if step is None else Timed(None, "", name, log, fn=step)


def median_ms(items: dict, reps: int, calls: int) -> dict:
    """name -> median over reps of the mean ms per call; items take turns within each rep."""
    times = {name: [] for name in items}
    for fn in items.values():
        fn()
    for _ in range(reps):
        for name, fn in items.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def forwards_alone(target, draft, heads, k: int, context: int, reps: int, calls: int,
                   compile_steps: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    V = target.vocab_size
    ct, cd = target.new_cache(1, context + 64), draft.new_cache(1, context + 64)
    rows = []
    with torch.inference_mode():
        target(torch.randint(4, V, (1, context), generator=g), ct)
        draft(torch.randint(4, V, (1, context), generator=g), cd)
        one, block = torch.tensor([[5]]), torch.randint(4, V, (1, k + 1), generator=g)
        h, first = torch.randn(1, target.config.dim, generator=g), torch.tensor([7])
        def step(model, on, ids, cache, keep=0):  # eager (on=False) or the compiled CPU step
            model.compile_step = on
            model(ids, cache, logits_to_keep=keep)
            cache.truncate(ids.shape[1])
        items = {
            "target step (T = 1)": lambda: step(target, False, one, ct, 1),
            f"target verify (T = {k + 1})": lambda: step(target, False, block, ct),
            "draft step (T = 1)": lambda: step(draft, False, one, cd, 1),
            f"heads: {heads.k} guess(es)": lambda: heads.propose(h, first, target, lambda j, s, guess: s.argmax(-1)),
        }
        if compile_steps:  # the compiled CPU step (models/compiled_cpu.py; the CPU analogue of CUDA graphs)
            for label, model, cache in (("draft", draft, cd), ("target", target, ct)):
                t0 = time.perf_counter()
                step(model, True, one, cache)
                if model._compiled is None or model._compiled.run is None:  # no C++ compiler: say so
                    rows.append(dict(item=f"{label} step: the compiled step is unavailable (see the warning)"))
                    continue
                rows.append(dict(item=f"{label} step, compiled: time to build or load the library",
                                 ms=(time.perf_counter() - t0) * 1e3))
                items[f"{label} step (T = 1), compiled"] = lambda m=model, c=cache: step(m, True, one, c, 1)
            items[f"target verify (T = {k + 1}), compiled"] = lambda: step(target, True, block, ct)
            items.update(_guessing_items(target, heads, block, ct, rows))
        for name, ms in median_ms(items, reps, calls).items():
            rows.append(dict(item=name, ms=ms))
    return rows


def _guessing_items(target, heads, block, cache, rows: list) -> dict:
    """The compiled verify of blockwise's round (T = heads.k + 1) with the heads' guesses
    (NativeDecoder.guessing_on), built or loaded here (a row says how long that took)."""
    target.compile_step = True
    guess, ids = target.guessing_on(cache, heads), block[:, :heads.k + 1]
    t0 = time.perf_counter()
    if guess is None or guess(ids, ids.shape[1]) is None:
        rows.append(dict(item="target verify with the heads' guesses: unavailable (see the warning)"))
        return {}
    cache.truncate(ids.shape[1])
    rows.append(dict(item=f"target verify with {heads.k} heads' guesses, compiled: time to build or load the library",
                     ms=(time.perf_counter() - t0) * 1e3))

    def run():
        guess(ids, ids.shape[1])
        cache.truncate(ids.shape[1])
    return {f"target verify with {heads.k} heads' guesses (T = {heads.k + 1}), compiled": run}


def whole_calls(target, draft, heads, prompts, k: int, n: int, runs: int) -> dict:
    """Per mode: the decode part of each call, from the end of its first target forward (the prefill;
    on the skeleton it also verifies round 1's guesses) to the end of the call."""
    fixed = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=None)
    log: list = []
    time_steps(target, "target", log)
    time_steps(draft, "draft", log)
    Timed(heads, "propose", "heads", log)
    spec = dict(assistant_model=draft, num_assistant_tokens=k, assistant_confidence_threshold=0,
                num_assistant_tokens_schedule="constant")
    sample = dict(do_sample=True, seed=0)  # HF's sampling defaults (top_k 50)
    modes = {"greedy": {}, f"speculative k={k}": spec,
             f"blockwise exact k={heads.k}": dict(strategy="blockwise", heads=heads, block_size=heads.k),
             "sampling": sample, f"speculative sampling k={k}": {**spec, **sample}}
    for kw in modes.values():
        decoding.generate(target, [prompts[0][:8]], max_new_tokens=4, eos_token_id=None, **kw)  # warm up
    acc = {mode: dict(wall=0.0, tokens=0, stats_forwards=0, spent=dict.fromkeys(("target", "draft", "heads"), 0.0),
                      calls=dict.fromkeys(("target", "draft", "heads"), 0), seqs=[]) for mode in modes}
    # one row takes the host-side path: its guesses (the first k' heads near a call's end) go through here
    with mock.patch.object(speculative_row, "_heads_guess",
                           Timed(None, "", "heads", log, fn=speculative_row._heads_guess)):
        for run in range(runs):  # every mode on a prompt, then the next prompt: noise bursts hit all alike
            for p in prompts:
                for mode, kw in modes.items():
                    a = acc[mode]
                    log.clear()
                    first = FirstRound()
                    res = decoding.generate(target, [p], streamer=first, **fixed, **kw)
                    end = time.perf_counter()
                    start = next(t1 for name, _, t1 in log if name == "target")
                    a["wall"] += end - start
                    for name, t0, t1 in log:
                        if t0 >= start:
                            a["spent"][name] += t1 - t0
                            a["calls"][name] += 1
                    a["tokens"] += n - first.tokens
                    a["stats_forwards"] += res.stats.target_forwards
                    if run == 0:
                        a["seqs"].append(res.sequences[0, len(p):])
    out = {}
    for mode, a in acc.items():
        R, spent, calls = a["calls"]["target"], a["spent"], a["calls"]  # rounds (greedy: steps) after the first
        out[mode] = dict(method=mode, rounds=R // runs, tokens_per_round=a["tokens"] / R,
                         ms_per_token=1e3 * a["wall"] / a["tokens"], target_ms=1e3 * spent["target"] / R,
                         draft_ms=1e3 * spent["draft"] / max(1, calls["draft"]),
                         draft_steps_per_round=calls["draft"] / R,
                         heads_ms=1e3 * spent["heads"] / max(1, calls["heads"]),
                         bookkeeping_ms_per_round=1e3 * (a["wall"] - sum(spent.values())) / R,
                         target_forwards=calls["target"] + runs * len(prompts),
                         stats_target_forwards=a["stats_forwards"],
                         sequences=torch.stack(a["seqs"]).tolist())
    return out


def goal_rows(label: str, base: str, tau: float, g: float, parts: dict, goal: float) -> list[dict]:
    """Rows of one goal: x the base mode = tau * g / round (g: the base's ms per token, round: the sum
    of `parts`, ms per round, the verify forward first), its ceiling with everything but the verify
    free, the ms per round left to the rest at the goal, and the tau the goal needs at this round."""
    round_ms, verify = sum(parts.values()), next(iter(parts.values()))
    rest = " + ".join(list(parts)[1:])
    return [
        dict(quantity=f"{label}: tokens per round (tau; first round apart)", value=tau),
        dict(quantity=f"{label}: ms per round = {' + '.join(parts)}", value=round_ms),
        dict(quantity=f"{label}: x {base} = tau * g / round (goal {goal}x)", value=tau * g / round_ms),
        dict(quantity=f"{label}: ceiling x {base} with {rest} free (verify alone)", value=tau * g / verify),
        dict(quantity=f"{label}: ms per round left to {rest} at {goal}x (< 0: out of reach at this tau and verify)",
             value=tau * g / goal - verify),
        dict(quantity=f"{label}: tau needed for {goal}x at this round cost", value=goal * round_ms / g),
    ]


def arithmetic(calls: dict, k: int, bk: int) -> list[dict]:
    """The speed goals of the CPU issue: speculative k = 4 >= 1.5x greedy, speculative sampling >= 1.1x
    sampling, exact blockwise >= 1.2x greedy (each against the engine's own compiled step)."""
    g, gs = calls["greedy"]["ms_per_token"], calls["sampling"]["ms_per_token"]
    rows = [dict(quantity="greedy ms per token (a decode step and its loop)", value=g),
            dict(quantity="sampling ms per token (a decode step, its processors and draw)", value=gs)]
    for label, base, ms, goal in ((f"speculative k={k}", "greedy", g, 1.5),
                                  (f"speculative sampling k={k}", "sampling", gs, 1.1)):
        c = calls[label]
        rows += goal_rows(label, base, c["tokens_per_round"], ms, {
            "verify": c["target_ms"], "draft steps": c["draft_steps_per_round"] * c["draft_ms"],
            "bookkeeping": c["bookkeeping_ms_per_round"]}, goal)
    b = calls[f"blockwise exact k={bk}"]
    rows += goal_rows(f"blockwise exact k={bk}", "greedy", b["tokens_per_round"], g, {
        "verify": b["target_ms"], "heads": b["heads_ms"], "bookkeeping": b["bookkeeping_ms_per_round"]}, 1.2)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny random models (a test of the script)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cpu"))
    ap.add_argument("--k", type=int, default=4, help="guesses per round (both goals are stated at k = 4)")
    ap.add_argument("--blockwise-k", type=int, default=1, help="blockwise's heads a round (its goal names none)")
    ap.add_argument("--heads", type=Path, default=SHIPPED / "heads", help="blockwise's heads directory")
    ap.add_argument("--draft-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="the draft's weights (auto: the CLI's choice for one row, models.compiled_cpu."
                         "half_draft_pays: the shipped float16 on an AVX-512 CPU, else float32)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=7, help="repetitions of part 1 (median)")
    ap.add_argument("--calls", type=int, default=100, help="calls per item and repetition in part 1")
    ap.add_argument("--runs", type=int, default=3, help="passes over the prompts in part 2 (summed)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k = args.k
    if args.smoke:
        from bench.speculative import random_prompts, tiny_pair
        from models.heads import BlockwiseHeads, HeadsConfig
        target, draft = tiny_pair()
        bk = args.blockwise_k
        heads = BlockwiseHeads(target.config.dim, bk, config=HeadsConfig.for_target(target, bk))
        prompts, n = random_prompts(2, 12, target.vocab_size), 8
        reps, calls, runs = 2, 3, 1
    else:
        from models.checkpoint import load
        from models.heads import load_heads
        target = load(SHIPPED / "target", dtype=torch.float32)
        from models.compiled_cpu import fastest_draft
        draft = load(SHIPPED / "draft", dtype=None if args.draft_dtype == "auto" else getattr(torch, args.draft_dtype))
        if args.draft_dtype == "auto":
            draft = fastest_draft(draft, 1)
        heads = load_heads(args.heads, target)
        bk = args.blockwise_k
        heads = heads if heads.k == bk else heads.first(bk)  # the module blockwise will call (timed in part 2)
        prompts, n = code_prompts(args.prompts, args.prompt_len), args.new_tokens
        reps, calls, runs = args.reps, args.calls, args.runs
    alone = forwards_alone(target, draft, heads, k, len(prompts[0]), reps, calls, not args.no_compile)
    print(markdown_table(alone, ["item", "ms"]), flush=True)
    calls_ = whole_calls(target, draft, heads, prompts, k, n, runs)
    sums = arithmetic(calls_, k, heads.k)
    columns = ["method", "rounds", "tokens_per_round", "ms_per_token", "target_ms", "draft_ms", "draft_steps_per_round",
               "heads_ms",
               "bookkeeping_ms_per_round"]
    print(markdown_table(list(calls_.values()), columns), "\n", markdown_table(sums, ["quantity", "value"]), flush=True)

    info = machine()
    argv_used = sys.argv[1:] if argv is None else list(argv)
    payload = {"machine": info, "loadavg_after": os.getloadavg(), "argv": argv_used, "k": k, "blockwise_k": heads.k,
               "draft_dtype": str(draft.dtype), "prompts": len(prompts), "prompt_len": len(prompts[0]), "new_tokens": n,
               "forwards_alone": alone, "calls": calls_, "arithmetic": sums}
    md = ["# Step costs: where a round's time goes, and what the speed goals need\n",
          f"Machine: {info['device']}, {info.get('threads')} torch threads, torch {info['torch']}, python "
          f"{info['python']}; load average after the run {os.getloadavg()[0]:.1f} (a shared machine); "
          f"`python -m bench.step_costs {' '.join(argv_used)}`.\n",
          "## 1. Forwards alone (median ms over interleaved repetitions)\n",
          f"Target and draft each hold a {len(prompts[0])}-token context. Target float32, draft {draft.dtype} "
          "(a draft never changes the output).\n",
          markdown_table(alone, ["item", "ms"]), "",
          f"## 2. Whole calls ({len(prompts)} prompts of {len(prompts[0])} tokens, {n} new tokens each, batch 1, "
          f"{runs} passes summed; rounds per pass)\n",
          "Each call counts from the end of its first target forward (the prefill, which on the skeleton "
          "also verifies round 1's guesses) to its end: rounds = target forwards in that span (greedy: "
          "steps), tokens = those emitted in it. Forward and heads times are means per call; bookkeeping = "
          "(wall - forwards - heads) per round.\n",
          markdown_table(list(calls_.values()), columns), "",
          "## 3. Arithmetic\n", markdown_table(sums, ["quantity", "value"])]
    write_results(args.out, "step_costs", payload, "\n".join(md))
    return payload


if __name__ == "__main__":
    main()
