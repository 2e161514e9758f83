"""Engine vs llama.cpp vs CTranslate2 vs HF eager vs HF static cache + compile, on identical weights.

    python -m bench.peers                        # CPU, 1 thread, ~10 minutes -> bench/results/cpu/peers.*
    python -m bench.peers --models target        # the shipped target only, ~2 minutes
    python -m bench.peers --smoke --out /tmp/x   # tiny random model, a few seconds
    python -m bench.peers --from-json bench/results/cpu/peers.json   # redo the .md and .png only

Models: the shipped target (fp16 checkpoint upcast to fp32, its shipped draft for the speculative
row, prompts from validation-split source files) and a 125M random Llama (768 x 12, GQA 12/4, ffn
2048, vocab 32000, weights N(0, 0.02) from seed 0, random prompts). The bench writes each peer's
model from the engine's own weights into a temporary folder: an fp32 GGUF for llama.cpp
(bench/peer/llamacpp.py) and a float32 CTranslate2 model converted from the `to_hf` export
(bench/peer/ct2.py); HF runs that `to_hf` export (bench/peer/hf.py).

Protocol: 1 thread each, fp32, 64 new tokens after a 32-token prompt, eos off (every call emits
exactly batch x 64 tokens), greedy at batch 1 and 8 and beam 4 at batch 1. All systems run in this
one process; every rep runs each system in turn (machine noise hits all alike) after one untimed
warm-up call each (compilation and context set-up). --repeats (2) blocks of --reps reps (target
5, 125M 3): tokens/s comes from the median over all of them; a ratio (engine tokens/s over the
peer's) is the median of the per-rep ratios (each rep runs the two back to back), overall and per
block, the block values showing its spread. A batch-1 rep decodes --b1-prompts prompts (target
2, 125M 1) one after another. Beside the batch-1 greedy row run the engine's speculative decoding
(shipped draft, k=4, exactly k drafted a round) and prompt lookup (k=4); their ratios are over each
system's plain greedy. HF's beam search (transformers 5.24) calls the model directly, not the
compiled forward, so its "static+compile" beam row is a static cache without compilation.

`tokens equal`: the peer's tokens are the engine's (for the speculative rows: the engine's greedy
tokens). `min margin`: the smallest top-1 minus top-2 logit gap along the engine's greedy path; a
mismatch at a gap near float noise (~1e-5) is a tie, not a bug. A peer whose package is missing
(`pip install -e '.[peers]'`) is listed as absent; one that cannot do a case (llama.cpp: no beam
search) says why.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import config_125m, machine, markdown_table, write_results
from bench.peer import missing

ROOT = Path(__file__).resolve().parent
PEERS = ("llama.cpp", "CTranslate2", "HF eager", "HF static+compile")
K = 4  # draft tokens per round, and prompt-lookup tokens
SPEC = f"engine speculative k={K}"
LOOKUP = f"engine prompt lookup k={K}"


class Unsupported(Exception):
    """The system cannot run this case (the message says why)."""


@dataclass
class Case:
    name: str
    batch: int
    num_beams: int = 1


CASES = (Case("greedy", 1), Case("greedy", 8), Case("beam 4", 1, 4))
# model -> (reps per block, batch-1 prompts): the 125M model's calls take seconds each, so fewer;
# 2 blocks x 3 reps still give the protocol's median of >= 5, and the bench stays near 10 minutes
PLAN = {"target": (5, 2), "125m": (3, 1), "tiny": (1, 1)}


@dataclass
class Subject:
    """A model under test with everything the systems need."""
    name: str
    native: torch.nn.Module
    vocab: object
    prompts: list  # >= 8 lists of prompt ids
    draft: torch.nn.Module | None = None
    notes: str = ""
    reps: int = 5  # timed reps per block
    b1_prompts: int = 1  # prompts decoded one by one in a batch-1 rep


# -- models ------------------------------------------------------------------------------------------

def random_llama(cfg, seed: int = 0, std: float = 0.02):
    """A native Llama with N(0, std) matrices (norm weights 1): the logits spread enough that greedy
    ties are rare, so token equality between systems means something."""
    from models import LlamaDecoder
    torch.manual_seed(seed)
    model = LlamaDecoder(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)  # in place: keeps the k-major storage
    return model.eval()


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n, length), generator=g).tolist()


def subject(name: str, prompt_len: int) -> Subject:
    from models import DecoderConfig, checkpoint
    from models.artifacts import shipped
    from bench.peer import vocab
    common = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if name == "target":
        from bench.common import code_prompts
        native = checkpoint.load(shipped("target"), dtype=torch.float32)
        from models.compiled_cpu import fastest_draft
        draft = fastest_draft(checkpoint.load(shipped("draft")), 1)  # the CLI's --assistant-dtype auto, one row
        return Subject("shipped target", native, vocab.for_model(native.config.vocab_size, True),
                       code_prompts(8, prompt_len), draft, "models/shipped/target (fp16 -> fp32), prompts from "
                       f"validation source files; speculative draft models/shipped/draft ({draft.dtype})")
    if name == "125m":
        cfg = config_125m(**common)
        native = random_llama(cfg)
        return Subject("125M random", native, vocab.placeholder(cfg.vocab_size),
                       random_prompts(8, prompt_len, cfg.vocab_size), None,
                       "random Llama, N(0, 0.02) weights from seed 0, random prompts")
    if name == "tiny":
        cfg = DecoderConfig(vocab_size=320, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                            max_seq_len=256, tie_embeddings=True, **common)
        dcfg = DecoderConfig(vocab_size=320, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64,
                             max_seq_len=256, tie_embeddings=True, **common)
        return Subject("tiny random", random_llama(cfg, std=0.2), vocab.placeholder(cfg.vocab_size),
                       random_prompts(8, prompt_len, cfg.vocab_size), random_llama(dcfg, seed=1, std=0.2),
                       "smoke: tiny random Llama and draft")
    raise ValueError(f"unknown model {name!r}: choose target, 125m (or tiny for --smoke)")


# -- systems -----------------------------------------------------------------------------------------

def engine(native, **kw):
    import decoding

    def run(ids, new, num_beams=1):
        out = decoding.generate(native, ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                num_beams=num_beams, eos_token_id=None, **kw)
        return out.sequences[:, ids.shape[1]:]
    return run


def systems(subj: Subject, workdir: Path, threads: int, backend: str, log) -> tuple[dict, dict, list]:
    """name -> run(ids, new, num_beams) for everything that loads, name -> status for the rest, and
    the functions that free the peers' native resources."""
    from transformers.utils import logging as hf_logging
    from models.hf_weights import to_hf
    hf_logging.disable_progress_bar()  # the CTranslate2 conversion saves and reloads the HF export
    from bench.peer.hf import HF
    runs = {"engine": engine(subj.native)}
    if subj.draft is not None:
        runs[SPEC] = engine(subj.native, assistant_model=subj.draft, num_assistant_tokens=K,
                            assistant_confidence_threshold=0.0)
    runs[LOOKUP] = engine(subj.native, prompt_lookup_num_tokens=K)
    status, closers = {}, []
    hf_model = to_hf(subj.native)
    slug = subj.name.replace(" ", "_")
    for peer in PEERS:
        need = missing(peer)
        if need:
            status[peer] = f"absent: pip install -e '.[peers]' (missing {', '.join(need)})"
            continue
        t0 = time.time()
        try:
            if peer == "llama.cpp":
                from bench.peer.llamacpp import LlamaCpp, write_gguf
                runner = LlamaCpp(write_gguf(subj.native, workdir / f"{slug}.gguf", subj.vocab), threads)
                closers.append(runner.close)

                def run(ids, new, num_beams=1, runner=runner):
                    if num_beams > 1:
                        raise Unsupported("n/a: llama.cpp has no beam search API")
                    return runner.greedy(ids, new)
            elif peer == "CTranslate2":
                from bench.peer.ct2 import CT2, write_ct2
                run = CT2(write_ct2(hf_model, workdir / f"{slug}_ct2", subj.vocab), subj.vocab, threads).generate
            else:
                run = HF(hf_model, static=peer == "HF static+compile", backend=backend).generate
        except Exception as e:  # a peer that breaks is reported, the others still run
            status[peer] = f"error: {type(e).__name__}: {e}"
            log(f"  {peer}: {status[peer]}")
            continue
        runs[peer] = run
        log(f"  {peer}: ready in {time.time() - t0:.1f} s")
    return runs, status, closers


# -- measuring ---------------------------------------------------------------------------------------

def margins(native, ids: torch.Tensor, new_ids: torch.Tensor) -> torch.Tensor:
    """(B, new) top-1 minus top-2 logit at each generated position, one cache-free forward in float64."""
    from models.hf_weights import to_hf
    hf = to_hf(native).double()
    seq = torch.cat([ids, new_ids], 1)
    with torch.inference_mode():
        logits = hf(seq).logits[:, ids.shape[1] - 1:-1]
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def measure_case(subj: Subject, case: Case, runs: dict, status: dict, args, bar) -> list[dict]:
    n_calls = subj.b1_prompts if case.batch == 1 else 1
    calls = [torch.tensor(subj.prompts[i:i + case.batch]) for i in range(0, n_calls * case.batch, case.batch)]
    names = [n for n in runs if case == CASES[0] or n not in (SPEC, LOOKUP)]  # speculative rows: greedy b1
    tokens, rows = {}, {}
    for name in names:  # warm-up call: compilation, contexts, and the tokens to compare
        try:
            tokens[name] = torch.cat([runs[name](ids, args.new_tokens, case.num_beams) for ids in calls])
        except Unsupported as e:
            rows[name] = dict(status=str(e))
        except Exception as e:  # a peer failing a case is reported; the engine failing is a bug
            if name in PEERS:
                rows[name] = dict(status=f"error: {type(e).__name__}: {e}")
            else:
                raise
        bar.update(1)
    timed = [n for n in names if n in tokens]
    times = {n: [[] for _ in range(args.repeats)] for n in timed}
    for block in range(args.repeats):
        for _ in range(subj.reps):
            for name in timed:
                t0 = time.perf_counter()
                for ids in calls:
                    runs[name](ids, args.new_tokens, case.num_beams)
                times[name][block].append(time.perf_counter() - t0)
                bar.update(1)
    made = case.batch * args.new_tokens * n_calls
    ref = tokens["engine"]
    margin = None
    if case.num_beams == 1:
        margin = margins(subj.native, torch.cat(calls), ref)
    out = []
    for name in ["engine", SPEC, LOOKUP, *PEERS]:
        if name in (SPEC, LOOKUP) and case != CASES[0]:
            continue
        if name not in names and name not in status:
            continue
        row = dict(model=subj.name, case=case.name, batch=case.batch, num_beams=case.num_beams, system=name)
        if name in status:
            row["status"] = status[name]
        elif name in rows:
            row.update(rows[name])
        else:
            flat = [t for block in times[name] for t in block]
            equal = tokens[name].shape == ref.shape and bool(torch.equal(tokens[name], ref))
            row.update(status="ok", tok_s=made / statistics.median(flat),
                       tok_s_blocks=[made / statistics.median(b) for b in times[name]],
                       tokens_equal=equal, runs_s=[[round(t, 4) for t in b] for b in times[name]])
            if not equal and margin is not None and tokens[name].shape == ref.shape:
                diff = (tokens[name] != ref).nonzero()[0].tolist()
                row["first_mismatch"] = dict(row=diff[0], position=diff[1],
                                             margin=float(margin[diff[0], diff[1]]))
        out.append(row)
    add_ratios(out)
    by = {r["system"]: r for r in out if r.get("status") == "ok"}
    if margin is not None:
        by["engine"]["min_margin"] = float(margin.min())
        by["engine"]["near_ties"] = int((margin < args.tie).sum())
    return out


def _paired(slow: list[list[float]], fast: list[list[float]]) -> tuple[float, list[float]]:
    """Median of slow[r] / fast[r] over the reps (paired: run back to back, so drifting load cancels),
    overall and per block; for equal token counts, fast's tokens/s over slow's."""
    per_block = [[a / b for a, b in zip(sb, fb)] for sb, fb in zip(slow, fast)]
    return statistics.median([x for blk in per_block for x in blk]), [statistics.median(blk) for blk in per_block]


def add_ratios(rows: list[dict]) -> None:
    """x_engine on peer rows (engine tokens/s over the peer's) and x_over on the speculative rows
    (their tokens/s over each system's greedy), from the paired per-rep times of one case."""
    by = {r["system"]: r for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok":
            continue
        if r["system"] in PEERS:
            r["x_engine"], r["x_engine_blocks"] = _paired(r["runs_s"], by["engine"]["runs_s"])
        elif r["system"] != "engine":
            pairs = {p: _paired(by[p]["runs_s"], r["runs_s"]) for p in ["engine", *PEERS] if p in by}
            r["x_over"] = {p: x for p, (x, _) in pairs.items()}
            r["x_over_blocks"] = {p: blocks for p, (_, blocks) in pairs.items()}


def run(args) -> tuple[dict, Path]:
    from tqdm import tqdm
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else ROOT / "results" / "cpu"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.time()
    rows, subjects = [], []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        workdir = Path(args.export_dir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            log(f"{name}: building the model and writing the peers' exports to {workdir}")
            subj = subject(name, args.prompt_len)
            subj.reps, subj.b1_prompts = args.reps or PLAN[name][0], args.b1_prompts or PLAN[name][1]
            runs, status, closers = systems(subj, workdir, args.threads, args.compile_backend, log)
            cfg = subj.native.config
            subjects.append(dict(name=subj.name, notes=subj.notes, params_m=round(
                sum(p.numel() for p in subj.native.parameters()) / 1e6, 2), vocab_size=cfg.vocab_size,
                dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                hidden_dim=cfg.hidden_dim, tie_embeddings=cfg.tie_embeddings, reps=subj.reps,
                b1_prompts=subj.b1_prompts))
            for case in CASES:
                n = len([r for r in runs if case == CASES[0] or r not in (SPEC, LOOKUP)])
                with tqdm(total=n * (1 + subj.reps * args.repeats), desc=f"{subj.name}: {case.name} b{case.batch}",
                          unit="call", file=sys.stderr, leave=False) as bar:
                    case_rows = measure_case(subj, case, runs, status, args, bar)
                rows += case_rows
                log(summary(case_rows))
            for close in closers:
                close()
            del runs
    results = dict(machine=machine(), peers=peer_versions(), smoke=args.smoke, threads=args.threads,
                   compile_backend=args.compile_backend,
                   repeats=args.repeats, new_tokens=args.new_tokens,
                   prompt_len=args.prompt_len, dtype="float32", seconds=round(time.time() - t_start, 1),
                   command=" ".join(["python -m bench.peers", *args.argv]), subjects=subjects, rows=rows)
    write_results(out, "peers", results, render(results))
    plot(results, out / "peers.png")
    return results, out


def rerender(path: str | Path, out: Path) -> dict:
    """Ratios, markdown and plot again from a results JSON (its per-rep times), without rerunning."""
    results = json.loads(Path(path).read_text())
    cases = {}
    for r in results["rows"]:
        cases.setdefault((r["model"], r["case"], r["batch"]), []).append(r)
    for rows in cases.values():
        add_ratios(rows)
    write_results(out, "peers", results, render(results))
    plot(results, out / "peers.png")
    return results


def peer_versions() -> dict:
    out = {}
    for peer, module in (("llama.cpp", "llama_cpp"), ("CTranslate2", "ctranslate2"), ("gguf", "gguf")):
        try:
            out[peer] = __import__(module).__version__
        except (ImportError, AttributeError):
            out[peer] = None
    return out


# -- reporting ---------------------------------------------------------------------------------------

def _range(xs) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if len(xs) > 1 else ""


def cell(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "")
    text = f"{r['tok_s']:.0f} tok/s"
    if "x_engine" in r:
        spread = _range(r["x_engine_blocks"])
        text += f", {r['x_engine']:.2f}x" + (f" ({spread})" if spread else "")
    if "tokens_equal" in r:
        text += ", same tokens" if r["tokens_equal"] else ", DIFFERENT tokens" + (
            f" (first at {r['first_mismatch']['position']}, margin {r['first_mismatch']['margin']:.2g})"
            if "first_mismatch" in r else "")
    return text


def render(results: dict) -> str:
    m, rows = results["machine"], results["rows"]
    p = results["peers"]
    head = (f"# Engine vs llama.cpp, CTranslate2 and HF on identical weights\n\n"
            f"{m['device']}, {results['threads']} thread each, fp32, {results['new_tokens']} new tokens after a "
            f"{results['prompt_len']}-token prompt, eos off, systems interleaved in one process, {results['repeats']} "
            f"blocks of reps (per model below), one untimed warm-up call each. "
            f"torch {m['torch']}, transformers {m.get('transformers')}, llama-cpp-python {p['llama.cpp']}, "
            f"ctranslate2 {p['CTranslate2']}, Python {m['python']}, HF static+compile with torch.compile backend "
            f"{results['compile_backend']}. `{results['command']}`, "
            f"{results['seconds']:.0f} s." + (" Smoke run: tiny random model." if results["smoke"] else "") + "\n\n"
            "Peer cells: tokens/s, engine tokens/s over the peer's (its range over the repeat blocks), whether "
            "the tokens equal the engine's. Speculative / prompt-lookup rows: their tokens/s over each "
            "system's plain greedy at batch 1. HF's beam search does not use the compiled forward: its static+compile "
            "beam row is a static cache alone.\n")
    parts = [head]
    for s in results["subjects"]:
        sel = [r for r in rows if r["model"] == s["name"]]
        parts.append(f"\n## {s['name']} ({s['params_m']}M parameters: {s['dim']} x {s['n_layers']}, heads "
                     f"{s['n_heads']}/{s['n_kv_heads']}, ffn {s['hidden_dim']}, vocab {s['vocab_size']})\n\n"
                     f"{s['notes']}. Median of {results['repeats']} x {s['reps']} reps; a batch-1 rep decodes "
                     f"{s['b1_prompts']} prompt(s) one after another.\n")
        table = []
        for case in CASES:
            cr = {r["system"]: r for r in sel if r["case"] == case.name and r["batch"] == case.batch}
            if "engine" not in cr:
                continue
            e = cr["engine"]
            margin = f"{e['min_margin']:.3g} ({e['near_ties']} near ties)" if "min_margin" in e else ""
            table.append({"case": f"{case.name}, batch {case.batch}", "engine": cell(e), "min margin": margin,
                          **{peer: cell(cr[peer]) for peer in PEERS if peer in cr}})
            for spec in (SPEC, LOOKUP):
                if spec in cr and cr[spec].get("status") == "ok":
                    r = cr[spec]
                    row = {"case": spec.removeprefix("engine ") + ", batch 1",
                           "engine": f"{r['tok_s']:.0f} tok/s, {r['x_over']['engine']:.2f}x greedy, "
                                     + ("same tokens as greedy" if r["tokens_equal"] else "DIFFERENT tokens")}
                    for peer in PEERS:
                        if peer in r["x_over"]:
                            spread = _range(r["x_over_blocks"][peer])
                            row[peer] = f"{r['x_over'][peer]:.2f}x its greedy" + (f" ({spread})" if spread else "")
                    table.append(row)
        parts.append(markdown_table(table, ["case", "engine", "min margin", *PEERS]))
    return "\n".join(parts)


def summary(case_rows: list[dict]) -> str:
    r0 = case_rows[0]
    return f"{r0['model']} / {r0['case']} batch {r0['batch']}: " + "; ".join(
        f"{r['system']} {cell(r)}" for r in case_rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    systems = ["engine", SPEC, LOOKUP, *PEERS]
    subjects = results["subjects"]
    fig, axes = plt.subplots(1, len(subjects), figsize=(7 * len(subjects), 4.6), squeeze=False)
    for ax, s in zip(axes[0], subjects):
        sel = [r for r in results["rows"] if r["model"] == s["name"] and r.get("status") == "ok"]
        cases = [c for c in CASES if any(r["case"] == c.name and r["batch"] == c.batch for r in sel)]
        shown = [n for n in systems if any(r["system"] == n for r in sel)]
        width = 0.8 / max(len(shown), 1)
        for j, name in enumerate(shown):
            xs, ys = [], []
            for i, c in enumerate(cases):
                r = next((r for r in sel if r["system"] == name and r["case"] == c.name and r["batch"] == c.batch), None)
                if r:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r["tok_s"])
            ax.bar(xs, ys, width, label=name, color=f"C{systems.index(name)}")  # one colour per system
        ax.set_xticks(range(len(cases)), [f"{c.name}\nbatch {c.batch}" for c in cases], fontsize=8)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{s['name']} ({s['params_m']}M)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"engine vs peers, fp32, {results['threads']} thread: {results['machine']['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 3 new tokens, 1 rep, 1 block")
    ap.add_argument("--models", nargs="+", choices=["target", "125m", "tiny"], help="default: target 125m")
    ap.add_argument("--reps", type=int, help="timed reps per block (default: target 5, 125m 3; smoke 1)")
    ap.add_argument("--repeats", type=int, help="blocks of reps, for the spread of the ratios (default 2; smoke 1)")
    ap.add_argument("--b1-prompts", type=int,
                    help="prompts decoded one by one in a batch-1 rep (default: target 2, 125m 1; smoke 1)")
    ap.add_argument("--new-tokens", type=int, help="tokens generated per row (default 64; smoke 3)")
    ap.add_argument("--prompt-len", type=int, help="prompt tokens per row (default 32; smoke 8)")
    ap.add_argument("--threads", type=int, default=1, help="threads for every system (default 1)")
    ap.add_argument("--tie", type=float, default=1e-4, help="logit margin counted as a near tie (default 1e-4)")
    ap.add_argument("--compile-backend", help="torch.compile backend of HF static+compile (default inductor; "
                    "smoke: eager, which traces the same graph without code generation: seconds, not a minute)")
    ap.add_argument("--export-dir", help="keep the GGUF / CTranslate2 exports here (default: a temporary folder)")
    ap.add_argument("--out", help="output folder (default bench/results/cpu/)")
    ap.add_argument("--from-json", help="only rewrite the markdown and PNG from this results JSON (into --out, "
                    "default its folder)")
    args = ap.parse_args(argv)
    if args.from_json:
        out = Path(args.out or Path(args.from_json).parent)
        print(render(rerender(args.from_json, out)))
        print(f"\nwrote {out}/peers.{{json,md,png}}")
        return 0
    s = args.smoke
    args.compile_backend = args.compile_backend or ("eager" if s else "inductor")
    args.models = args.models or (["tiny"] if s else ["target", "125m"])
    args.repeats = args.repeats or (1 if s else 2)
    args.new_tokens = args.new_tokens or (3 if s else 64)
    args.prompt_len = args.prompt_len or (8 if s else 32)
    for name in ("reps", "repeats", "b1_prompts", "new_tokens", "prompt_len", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if (args.b1_prompts or 0) > 8:
        ap.error("--b1-prompts must be at most 8 (the bench builds 8 prompts per model)")
    args.argv = argv
    results, out = run(args)
    print(render(results))
    print(f"\nwrote {out}/peers.{{json,md,png}} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
