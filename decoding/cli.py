"""`python -m decoding generate ...`, `python -m decoding viz ...` and `python -m decoding bench ...`.

generate: load a model directory (a native checkpoint or an HF model directory; the shipped target
when --model is left out), read the prompts (--prompt, repeatable; --prompt-file; or piped stdin),
decode them as one batch, print each completion (one prompt streams as it is decoded), then one
stats line. Every engine option is passed through only when given, so the engine resolves defaults
as HF does and answers what it cannot run with its own NotImplementedError (exit code 2).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from models.artifacts import SHIPPED

from .cli_common import (EXIT_USAGE, CLIError, add_prompt_args, check_heads, check_tokenizer_path, default_path,
                         encode_prompts, load_model, load_tokenizer, model_type, pick_device, read_prompts,
                         use_threads)

# -- generate ------------------------------------------------------------------------------------

# CLI option -> generate() keyword; each is passed only when given on the command line
PASS_THROUGH = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "min_p",
                "repetition_penalty", "num_beams", "num_beam_groups", "diversity_penalty", "length_penalty",
                "num_return_sequences", "num_assistant_tokens", "num_assistant_tokens_schedule",
                "prompt_lookup_num_tokens", "strategy", "block_size", "jacobi_init", "heads", "acceptance",
                "acceptance_top_k", "seed")


def engine_kwargs(args) -> dict:
    kw = {name: getattr(args, name) for name in PASS_THROUGH if getattr(args, name) is not None}
    if args.do_sample:
        kw["do_sample"] = True
    if args.early_stopping is not None:
        kw["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    if args.ignore_eos:
        kw["eos_token_id"] = None  # passed as None: stopping off (HF's rule)
    if args.stop:
        kw["stop_strings"] = args.stop
    return kw


def stats_line(stats) -> str:
    line = (f"[{stats.new_tokens} new tokens in {stats.wall_s:.2f} s: {stats.tokens_per_s:.1f} tokens/s | "
            f"{stats.target_forwards} target forwards | tau {stats.tau:.2f}")
    if stats.draft_forwards:
        line += f" | {stats.draft_forwards} draft forwards"
    return line + "]"


def pick_dtype(name: str, device):
    """fp16 matmuls are slow on CPUs: the shipped fp16 weights run in fp32 there unless asked otherwise."""
    import torch
    if name == "auto":
        return torch.float32 if device.type == "cpu" else None
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_assistant(args, device, dtype, rows: int):
    """--assistant in --assistant-dtype. auto: the draft only proposes, so its dtype never changes the
    output; on CPU a native draft keeps its checkpoint's own half precision where that step is the
    faster (models.compiled_cpu.half_draft_pays: one row of `rows` decoded together, its step
    compiled, a CPU with AVX-512), else runs in float32; on GPU, --dtype's."""
    from models.compiled_cpu import fastest_draft
    if args.assistant_dtype != "auto":
        return load_model(args.assistant, device=device, dtype=pick_dtype(args.assistant_dtype, device),
                          native=args.native, flag="--assistant")
    if device.type != "cpu":
        return load_model(args.assistant, device=device, dtype=dtype, native=args.native, flag="--assistant")
    model = load_model(args.assistant, device=device, dtype=None, native=args.native, flag="--assistant")
    return fastest_draft(model, rows)


def check_inputs(args) -> None:
    """Every path the command will read, before anything is loaded or decoded."""
    model_type(Path(args.model) if args.model else default_path("target"))
    check_tokenizer_path(args.tokenizer)
    if args.assistant is not None:
        model_type(Path(args.assistant), "--assistant")
    if args.heads is not None:
        check_heads(args.heads)


def make_streamer(args, tok, batch_size: int):
    """One prompt and one sequence stream as they are decoded; a batch prints at the end."""
    if args.no_stream or batch_size > 1 or (args.num_return_sequences or 1) > 1:
        return None
    if (args.num_beams or 1) > 1:  # the best beam changes as it goes: revised in place on a terminal
        from .beam_streamer import BeamTextStreamer
        return BeamTextStreamer(tok)
    from transformers import TextStreamer  # HF's own: the engine speaks HF's put/end protocol
    return TextStreamer(tok, skip_special_tokens=True)


def run_generate(model, batch: list[list[int]], kw: dict):
    """decoding.generate on the batch (left-padded by the engine), its errors as CLIErrors."""
    import decoding
    try:
        return decoding.generate(model, batch, **kw)
    except NotImplementedError as e:
        raise CLIError(f"not implemented: {e}", EXIT_USAGE) from None
    except (ValueError, TypeError) as e:
        raise CLIError(f"invalid arguments: {e}", EXIT_USAGE) from None
    except OSError as e:  # a file the engine reads itself (heads, ...)
        raise CLIError(str(e)) from None


def print_outputs(out, tok, batch: list[list[int]], n: int) -> None:
    """Every returned sequence (prompt + completion), headed by its prompt and sequence number when
    there are several."""
    width = max(map(len, batch))
    rows = out.sequences.tolist()
    for r, row in enumerate(rows):
        i, j = divmod(r, n)
        text = tok.decode(row[width - len(batch[i]):], skip_special_tokens=True)  # left pads dropped
        if len(rows) > 1:
            head = [f"prompt {i + 1}"] * (len(batch) > 1) + [f"sequence {j + 1}"] * (n > 1)
            print(f"--- {', '.join(head)} ---")
        print(text)


def cmd_generate(args) -> int:
    check_inputs(args)
    prompts = read_prompts(args)
    device = pick_device(args.device)
    if args.tensor_parallel:  # under torchrun: join the world, load this rank's shard (decoding/cli_parallel.py)
        from .cli_parallel import join, load_sharded
        device = join(args.device)
    dtype = pick_dtype(args.dtype, device)
    model = (load_sharded(args.model or SHIPPED / "target", device=device, dtype=dtype, native=args.native)
             if args.tensor_parallel else load_model(args.model, device=device, dtype=dtype, native=args.native))
    use_threads(args.threads, model, device)
    tok = load_tokenizer(args.tokenizer, args.model or SHIPPED / "target", model)
    batch = encode_prompts(tok, prompts)
    kw = engine_kwargs(args)
    if args.assistant is not None:
        kw["assistant_model"] = load_assistant(args, device, dtype, len(batch) * (args.num_return_sequences or 1))
    if args.stop:
        kw["tokenizer"] = tok
    streamer = make_streamer(args, tok, len(batch))
    if streamer is not None:
        kw["streamer"] = streamer
    out = run_generate(model, batch, kw)
    if streamer is None:
        print_outputs(out, tok, batch, args.num_return_sequences or 1)
    print(stats_line(out.stats), flush=True)
    if args.tensor_parallel:
        from .cli_parallel import leave
        leave()
    return 0


# -- argument parser -----------------------------------------------------------------------------

class _Help(argparse.HelpFormatter):
    """Shows a default only where there is one (None means: the engine's own, as HF resolves it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt, streaming the text, then print tokens/s",
                       description=__doc__.split("\n\n")[1], formatter_class=_Help)
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PATH", help="model directory: a native checkpoint (model.safetensors + "
                   "config.json) or a Hugging Face model directory; default: the shipped target "
                   f"({SHIPPED / 'target'})")
    g.add_argument("--tokenizer", metavar="PATH", help="a SentencePiece .model file or an HF tokenizer directory; "
                   "default: the model directory's tokenizer, else the shipped one")
    g.add_argument("--native", action="store_true", help="convert an HF Llama/Qwen2/Mistral directory to the "
                   "native decoder (static cache, faster) instead of running HF's model through the adapter")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when there is one)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights dtype (auto: float32 on CPU, the checkpoint's own on GPU)")
    g.add_argument("--tensor-parallel", action="store_true", help="shard the model over the processes of torchrun "
                   "(torchrun --nproc-per-node N -m decoding generate --tensor-parallel ...); rank 0 prints")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: one for models under 50M "
                   "parameters that run eagerly, else torch's default)")
    g = p.add_argument_group("prompt and length")
    add_prompt_args(g)
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    g.add_argument("--min-new-tokens", type=int, help="do not stop (eos) before this many new tokens")
    g.add_argument("--ignore-eos", action="store_true", help="never stop at eos (fixed-length output)")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop once the output contains TEXT "
                   "(repeatable; HF's stop_strings)")
    g.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming it")
    g = p.add_argument_group("sampling (greedy unless --do-sample)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=float, help="divide logits by this before sampling (HF default 1.0)")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens (HF default 50; 0 = off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with probability >= p")
    g.add_argument("--min-p", type=float, help="drop tokens below min_p x the top probability")
    g.add_argument("--repetition-penalty", type=float, help="penalise tokens seen so far (1.0 = off; greedy too)")
    g.add_argument("--seed", type=int, help="random seed: the same seed gives the same sample")
    g = p.add_argument_group("beam search")
    g.add_argument("--num-beams", type=int, help="beam width (1 = no beam search)")
    g.add_argument("--num-beam-groups", type=int, help="diverse beam search: groups of beams")
    g.add_argument("--diversity-penalty", type=float, help="diverse beam search: Hamming penalty between groups")
    g.add_argument("--length-penalty", type=float, help="exponent on length when ranking finished beams")
    g.add_argument("--early-stopping", choices=["true", "false", "never"],
                   help="beam stopping rule (HF's early_stopping)")
    g.add_argument("--num-return-sequences", type=int, help="sequences per prompt (sampling or beams)")
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--assistant", nargs="?", const=str(SHIPPED / "draft"), metavar="PATH",
                   help="draft model directory (alone: the shipped draft)")
    g.add_argument("--assistant-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="the draft's weights dtype; it never changes the output (auto: on CPU the checkpoint's own "
                   "half precision where its compiled step is the faster, for one row on an AVX-512 CPU, else "
                   "float32; on GPU as --dtype)")
    g.add_argument("--num-assistant-tokens", type=int, metavar="K", help="draft tokens proposed per target forward")
    g.add_argument("--num-assistant-tokens-schedule", choices=["constant", "heuristic"],
                   help="keep K fixed or adapt it to acceptance (HF)")
    g.add_argument("--prompt-lookup-num-tokens", type=int, help="draft from n-grams of the prompt (HF's prompt lookup)")
    g = p.add_argument_group("parallel decoding (the engine's own modes)")
    from .validate import ACCEPTANCES, JACOBI_INITS, STRATEGIES
    g.add_argument("--strategy", choices=STRATEGIES, help="Jacobi, Gauss-Seidel-Jacobi, speculative Jacobi, "
                   "or blockwise parallel decoding")
    g.add_argument("--block-size", type=int, help="Jacobi/GS-Jacobi/SJD guess block length")
    g.add_argument("--jacobi-init", choices=JACOBI_INITS, help="how a fresh guess block is filled")
    g.add_argument("--heads", metavar="PATH", help="blockwise proposal heads directory (default: the shipped heads)")
    g.add_argument("--acceptance", choices=ACCEPTANCES, help="blockwise acceptance; topk is the lossy mode")
    g.add_argument("--acceptance-top-k", type=int, help="k of the top-k relaxed acceptance")
    p.set_defaults(func=cmd_generate)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m decoding", description="A sequence-decoding engine: "
                                 "generate text, or run a benchmark from bench/.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{generate,viz,bench}")
    _add_generate(sub)
    from .viz import add_parser as _add_viz  # the decoding picture (decoding/viz.py)
    _add_viz(sub)
    b = sub.add_parser("bench", help="run a benchmark script from bench/ (`bench --help` lists them)",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def cmd_bench(argv: list[str]) -> int:
    """Run bench/NAME.py through bench's own front (bench/__main__.py), imported by name at call time:
    the engine does not depend on the benchmarks, which live in the repository, not the library."""
    try:
        front = importlib.import_module("bench.__main__")
    except ImportError as e:
        raise CLIError(f"the bench verb runs the repository's bench/ scripts, which cannot be imported here "
                       f"({type(e).__name__}: {e}); run it from a checkout of the repository after "
                       "`pip install -e .`") from None
    return front.run(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # everything after NAME belongs to the script's own parser
            return cmd_bench(argv[1:])
        args = parser().parse_args(argv)
        return args.func(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
