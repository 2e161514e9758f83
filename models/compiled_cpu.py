"""The compiled CPU step: a native model's fixed-shape decode/verify step (`model.static_logits`,
models/compiled.py) exported once with torch.export and compiled ahead of time by AOTInductor into
one C++ library, so a step is a single call with no Python per op (the CPU's CUDA graph). It returns
the logits and the final-norm hidden states of the kept tokens (logits_to_keep), so blockwise
decoding's verify (whose heads read them) runs through it too, and so does a pad-free prompt of up to
PROMPT_ROWS rows (its last token's logits only).

One library serves every batch size, cache capacity, step width T <= MAX_TOKENS and kept count
(dynamic dimensions). Two kinds, by `model.compile_frozen`:
- frozen (the native models' default): the weights are constants of the library, prepacked at
  build time for inductor's C++ GEMM micro-kernels (FROZEN_CONFIG). Faster than MKL at the small row counts of decoding (batch x T <= 16 rows) on
  the CPUs measured, most at T = k + 1 (verify) and beam widths. The library holds its own copy of
  the weights (memory: + the model's weights), is built per weight values, and is dropped when a
  weight changes in place or is replaced (checked before every direct forward and once per
  generate() call, NativeDecoder.forward_on: ids and version counters).
- inputs (`compile_frozen = False`, the HF-native route: one copy of the caller's weights): the
  weights are inputs of the library; one library per architecture serves any weight values.
A frozen fp32 library on an AVX2 CPU comes in two builds, told apart by the rows of a step (batch x T):
inductor's default micro-kernel (4 x 16 registers) for 1-2 rows, and a second library whose GEMMs
all use its 8 x 8 kernel for WIDE_ROWS (3) rows on: a speculative or blockwise verify (k >= 2), beam
search's 4 beams, a batch of 3-16. The second is built on the first such step that is not a prompt
(a prompt of 3-16 tokens into an empty cache, a step once per call, runs the default library until
the wide one exists). Same arithmetic, other blocking: on the shipped target their logits were bitwise equal.
A third kind serves one row of blockwise decoding (NativeDecoder.guessing_on): the frozen library of
the target with blockwise heads as constants too, returning in place of the hidden states the heads'
greedy guesses after every kept token (heads.greedy_guesses), one library per heads' values and k.
Either writes the new K/V in place; lengths (and YOCO's high-water marks) advance after it returns,
so a failure (a bad token id trips the embedding's bounds check) leaves the cache as it was.
Attention reads keys up to the cache's host bound on its longest row (a size among the inputs, see
StaticCache.step_state), not its capacity: a step costs by the context held.

Switch: `model.compile_step = False` (always eager) or True (compiled wherever it can be); None,
the default, defers to the environment variable DECODING_COMPILE=0/1, else to `wanted`'s rule (fp32,
and fp16 / bf16: a draft in its checkpoint's half precision reads half the bytes a step).
Disk cache (models/library_cache.py): a library is named by a hash of everything it depends on
(torch version, CPU capability, threads, model source, config, dtype, weight shapes and strides, and
for a frozen library the weights' sha256), checked with its file's sha256 before loading, so a stale
or corrupt file is rebuilt, never used. The cache's `aoti_interface/` holds the AOTI runtime
interface's object, compiled once and linked into every library (models/aoti_interface.py).
No C++ compiler, an export that fails, an older torch: one warning, then the eager step.
"""
from __future__ import annotations

import hashlib
import operator
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from . import compile_speed, micro_gemm
from .library_cache import cache_dir, load_checked, open_library, paths, store, temporary, values_hash
from .protocol import check_input_ids

ENV = "DECODING_COMPILE"
MAX_TOKENS = 128  # widest step the library takes (decode: 1, verify: k + 1, a short prompt)
# a longer step (a prompt, a chunk) of at most this many rows (batch x T) runs the library too: measured on
# the shipped target (AMD EPYC, 1 thread, one library call against the eager forward, last row's logits)
# 0.69x the eager time at 1 x 32 rows, 0.80x at 64, 0.90x at 96, 0.89-0.98x at 128, 1.03x at 256
PROMPT_ROWS = 128
# steps of this many rows (batch x T) on run the library built on WIDE_BLOCKING: measured on the shipped
# target (AMD EPYC, AVX2, 1 thread, both libraries in turn over B x T) 1.1-1.23x faster than the default
# kernel at 5-8 rows, 1.03-1.15x at 12-20, level at 9-10, 0.85x at 1-2 rows (before the row panels); with
# them (micro_gemm.row_panels: 3 panels of 8 columns against the default's micro-kernel) 1.13x at 3 rows,
# 1.06x at 4, level at 2; bench/compiled_step.py (wide_vs_default) times 5, 8, 20 and 40 rows
WIDE_ROWS = 3
WIDE_BLOCKING = {"AVX2": (8, 8)}  # CPU capability -> (block_m, block_n); measured on AVX2 only
MAX_BATCH = 1024
# fp32: compiled = eager's tokens (the tests run HF-identity through it). Half precision promises logits
# within tolerance only (docs/DESIGN.md 5), and its weights are half the bytes: the fast way to run a
# draft, whose dtype never changes an output (it only proposes)
AUTO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SOURCES = ("native.py", "llama.py", "yoco.py", "attention.py", "compiled.py", "compiled_cpu.py", "rope.py",
            "cache.py", "yoco_cache.py", "layout.py", "gpt2.py", "micro_gemm.py")
# the frozen library's build: weights as constants, every matmul inductor's C++ GEMM template over
# weights prepacked for its micro-kernel. No timing of alternatives: on the CPU measured the template
# beat MKL at every decode shape (1.2-1.7x per step, bench/compiled_step.py), and autotuning doubled
# the build time. torch 2.13 no longer reads autotune_fallback_to_aten: a matmul the template cannot
# take (none in the native models; a bmm over a dynamic size would be one) fails the build, and the
# step runs eagerly with a warning. Configs an older torch lacks are left out.
FROZEN_CONFIG = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP",
                 "autotune_fallback_to_aten": True, "autotune_num_choices_displayed": 0,
                 "max_autotune_report_choices_stats": False}
# both kinds: no debug line tables in the C++ (-g1 doubled the kernel file's compile: 3.2 -> 6.3 s
# for the shipped target, the wrapper's 7.8 -> 10.0 s; the code is the same), and the wrapper (the
# step's glue: kernel calls, allocations, sizes; the kernels stay -O3) at -Og instead of inductor's
# -O1: its g++ 7.6-8.8 -> 5.7-6.9 s; the first build 39.5 s -> 37.4 s on average over five
# alternating pairs (AMD EPYC, fresh caches; single builds vary by +-4 s); decode and verify steps
# level within this machine's noise (+-5%)
BUILD_CONFIG = {"aot_inductor.enable_line_tables": False, "aot_inductor.compile_wrapper_opt_level": "Og"}
_KEEP = torch.empty(MAX_TOKENS, dtype=torch.uint8)  # views of it tell the library how many rows' logits to return
_failed: set[str] = set()  # keys whose compile failed in this process: eager from then on
_registered = [0]  # parameters registered on any module since import (a replaced weight)


def _count_registration(module, name, param):
    _registered[0] += 1


nn.modules.module.register_module_parameter_registration_hook(_count_registration)


def wanted(model, cache) -> bool:
    """Run this step compiled? The switch, then the rule: CPU, no autograd, a dtype of AUTO_DTYPES.
    Measured faster than eager at every shape tried: 1.8-3.3x per step on the shipped target, draft
    and YOCO at batch 1, 1.1-2.2x at batch 8 (bench/compiled_step.py, fp32)."""
    on = model.compile_step
    if on is None:
        env = os.environ.get(ENV, "").strip()
        on = None if env == "" else env not in ("0", "false", "off", "no")
    if on is False or torch.is_grad_enabled():
        return False
    return on is True or model.dtype in AUTO_DTYPES


# CPUs (torch's capability names) where a half-precision model's compiled step beat fp32: the
# shipped draft's one-row call on an Intel Xeon with AVX-512 0.14 against 0.21 ms; on an AMD EPYC
# with AVX2 it was slower (fp16 0.26, bf16 0.32 against 0.21 ms), and at 4 rows slower on both
HALF_PAYS = ("AVX512",)


def half_draft_pays(model, rows: int) -> bool:
    """Would `model`, a half-precision native draft, step faster in its own dtype than in fp32 for
    `rows` rows decoded together on this CPU? One row, a HALF_PAYS CPU, its step compiled."""
    return (rows == 1 and model.dtype in (torch.float16, torch.bfloat16) and runs_compiled(model)
            and torch.backends.cpu.get_cpu_capability() in HALF_PAYS)


def fastest_draft(model, rows: int):
    """A draft loaded in its checkpoint's dtype, as it steps fastest here for `rows` rows: in that
    half precision where half_draft_pays, else in float32."""
    return model if half_draft_pays(model, rows) else model.float()


def runs_compiled(model) -> bool:
    """Will `model`'s CPU decode steps under generate() (no-grad) run the compiled step (a native
    model, switch and rule agreeing)? False for any other model (the HF adapter runs eagerly)."""
    if getattr(model, "compile_step", False) is False or not hasattr(model, "static_logits"):
        return False
    with torch.no_grad():
        return wanted(model, None)


def _key(model, cache, frozen: bool, blocking: tuple[int, int] | None = None, heads=None) -> dict:
    here = Path(__file__).parent
    source = hashlib.sha256(b"".join((here / f).read_bytes() for f in _SOURCES)).hexdigest()
    weights = [(n, tuple(p.shape), tuple(p.stride())) for n, p in model.named_parameters(remove_duplicate=False)]
    key = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
           "model": type(model).__name__, "config": model.config.to_dict(), "dtype": str(model.dtype),
           "weights": hashlib.sha256(repr(weights).encode()).hexdigest(), "cache": type(cache).__name__,
           "max_tokens": MAX_TOKENS, "source": source, "frozen": frozen}
    if frozen:  # constants of the library, and its GEMMs' thread plan
        key["values"] = values_hash(model)
        key["threads"] = torch.get_num_threads()
    if blocking:  # the wide library (the default one's key has no such entry)
        key["blocking"] = list(blocking)
    if heads is not None:  # the library with blockwise heads' guesses (their values are constants too)
        key["heads"] = {"kind": type(heads).__name__, "config": heads.config.to_dict(),
                        "values": values_hash(heads),
                        "source": hashlib.sha256((here / "heads.py").read_bytes()).hexdigest()}
    return key


_version = operator.attrgetter("_version")


def _stamp(params: list[Tensor]) -> list:
    """What changes when a weight does: its version (in-place writes) and storage (a `.data` swap).
    Weights made under torch.inference_mode have no version: only their storage is seen (write them
    in place there and the library is stale; replace them instead)."""
    try:
        versions = list(map(_version, params))
    except RuntimeError:  # an inference tensor among them
        versions = [None if p.is_inference() else p._version for p in params]
    return versions + list(map(Tensor.data_ptr, params))


class _Step(nn.Module):
    """model.static_logits as a module, so functional_call can swap the weights for inputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, cache, keep: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.static_logits(input_ids, cache, hidden=True, keep=keep.shape[0])


class _Exported(nn.Module):
    """(ids, weights, cache state) -> logits. Holds the model outside its own parameters, so the
    export takes the weights as inputs instead of baking them into the library."""

    def __init__(self, model, names: list[str], template):
        super().__init__()
        self._step = [_Step(model)]
        self.names, self.template = [f"model.{n}" for n in names], template

    def forward(self, input_ids: Tensor, weights: list[Tensor], state: list[Tensor], keep: Tensor) -> Tensor:
        cache = self.template.from_state(state)
        return torch.func.functional_call(self._step[0], dict(zip(self.names, weights)), (input_ids, cache, keep),
                                          tie_weights=False, strict=False)


class _Frozen(nn.Module):
    """(ids, cache state) -> (logits, hidden), with the model's weights as module state: constants of
    the library. With heads: (logits, the heads' greedy guesses (B, T', k) after each kept token)."""

    def __init__(self, model, template, heads=None):
        super().__init__()
        self.model, self.template, self.heads = model, template, heads

    def forward(self, input_ids: Tensor, state: list[Tensor], keep: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.static_logits(input_ids, self.template.from_state(state), hidden=True, keep=keep.shape[0])
        if self.heads is None:
            return out
        B, T, dim = out[1].shape  # the step's own lm_head(hidden) is dead code: guesses computes the logits
        logits, guesses = self.heads.greedy_guesses(out[1].reshape(B * T, dim), self.model)
        return logits.view(B, T, -1), guesses.view(B, T, -1)


class CompiledStep:
    """The compiled step of one model: loaded from the disk cache or built on first use."""

    def __init__(self, model, heads=None):
        self.model, self.dtype, self.device = model, model.dtype, model.device
        # blockwise heads whose greedy guesses the library returns in place of the hidden states (frozen
        # only; no wide build). Their values are part of the key that finds this step (guessing_on)
        self.heads = heads
        self.frozen = bool(model.compile_frozen)
        named = dict(model.named_parameters(remove_duplicate=False))
        self.names, self.weights = list(named), list(named.values())
        self.registered, self.stamp = _registered[0], _stamp(self.weights)
        self.run = None  # the library's flat-input entry point, once loaded
        self.unavailable = False  # its build failed: eager, without hashing the weights again
        # the wide library (WIDE_ROWS rows on): its blocking, its entry point once loaded. fp32 only: the
        # blocking limits inductor's fp32 kernels, so a half-precision wide build would be the default again
        self.blocking = WIDE_BLOCKING.get(torch.backends.cpu.get_cpu_capability()) \
            if self.frozen and heads is None and self.dtype == torch.float32 else None
        self.wide = None

    def matches(self, model) -> bool:
        """Still the library of `model` as it is now: no weight replaced, and for a frozen library
        none written to (a few us a step)."""
        w = self.weights[0]  # a dtype or device move changes every weight's data, not the Parameter
        if w.dtype != self.dtype or w.device != self.device or self.frozen != bool(model.compile_frozen):
            return False
        if _registered[0] != self.registered:  # some parameter was (re)assigned: look again
            now = list(dict(model.named_parameters(remove_duplicate=False)).values())
            if len(now) != len(self.weights) or any(a is not b for a, b in zip(now, self.weights)):
                return False
            self.registered = _registered[0]
        return not self.frozen or _stamp(self.weights) == self.stamp

    def __call__(self, input_ids: Tensor, cache, keep: int = 0) -> tuple[Tensor, Tensor] | None:
        """(logits (B, T', V), final-norm hidden states (B, T', dim); with heads, their guesses
        (B, T', k)) of the last T' = keep tokens (0: all T) with the cache advanced, or None where the
        library is unavailable."""
        run = self.library(input_ids.numel(), cache)
        if run is None:
            return None
        T = input_ids.shape[1]
        cache.reserve(T)  # raises on overflow; reads the lengths back only near the capacity
        ids, kept = input_ids.long().contiguous(), _KEEP[:keep or T]  # the size of a view is an input
        try:
            logits, hidden = run([ids, *cache.step_state(), kept] if self.frozen else
                                 [ids, *self.weights, *cache.step_state(), kept])
        except RuntimeError:
            check_input_ids(input_ids, self.model.vocab_size)  # a bad id: the protocol's error
            raise
        cache.advance(T)
        return logits, hidden

    def library(self, rows: int, cache):
        """The entry point for a step of `rows` rows (batch x T), loaded or built on first use; None
        where no library is available (the step runs eagerly)."""
        if self.run is None and (self.unavailable or not self._load(cache)):
            self.unavailable = True
            return None
        # a prompt into an empty cache is a step once per call: it runs the wide library where that
        # is loaded, never builds it (a verify block or a batch of 3+ rows recurs every step)
        if self.blocking and rows >= WIDE_ROWS and (self.wide is not None or cache.longest != 0):
            if self.wide is not None or self._load(cache, self.blocking):
                return self.wide
            self.blocking = None  # the wide build failed: the default library serves every width
        return self.run

    # -- build / load ---------------------------------------------------------------------------
    def _load(self, cache, blocking: tuple[int, int] | None = None) -> bool:
        """Load or build the default library (blocking None) or the wide one; False where it fails."""
        key = _key(self.model, cache, self.frozen, blocking, self.heads)
        digest, path, meta = paths(key)
        if digest in _failed:
            return False
        runner = load_checked(path, meta, key)
        if runner is None:
            try:
                runner = self._build(cache, key, path, meta)
            except Exception as e:  # no compiler, unsupported export, older torch: run eagerly
                _failed.add(digest)
                fallback = f"steps of {WIDE_ROWS}+ rows run the default library" if blocking else \
                    f"running the eager step (set {ENV}=0 to skip the attempt)"
                warnings.warn(f"compiled CPU step{' for wide steps' if blocking else ''} unavailable "
                              f"({type(e).__name__}: {str(e)[:300]}); {fallback}", stacklevel=4)
                return False
        # flat inputs -> flat outputs, no pytree per call
        if blocking:
            self.wide = runner.boxed_run
        else:
            self.run = runner.boxed_run
        return True

    def _build(self, cache, key: dict, path: Path, meta: Path):
        from torch.export import Dim
        model = self.model
        n = sum(p.numel() for p in model.parameters())
        kind = "prepacked weights" if self.frozen else "weights as inputs"
        if key.get("blocking"):
            kind += f", {'x'.join(map(str, key['blocking']))} GEMM kernels for steps of {WIDE_ROWS}+ rows"
        if self.heads is not None:
            kind += f", with {self.heads.k} blockwise heads' guesses"
        print(f"decoding: compiling the CPU step of {key['model']} ({n / 1e6:.1f}M parameters, "
              f"{key['dtype']}, {kind}) once, cached in {path.parent} ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        # example shapes all distinct from each other and from the model's own sizes (no accidental
        # specialisation); every one of them is dynamic in the library
        example = model.new_cache(2, min(MAX_TOKENS + 3, model.config.max_seq_len), dtype=self.dtype, device=self.device)
        example.lengths.copy_(torch.tensor([0, 1], dtype=torch.int32))
        example.reserve(min(11, example.capacity - 1))  # the key range's example size (step_state)
        ids, keep = torch.zeros(2, 7, dtype=torch.long, device=self.device), _KEEP[:3]
        B, T, S = Dim("batch", min=1, max=MAX_BATCH), Dim("tokens", min=1, max=MAX_TOKENS), \
            Dim("capacity", min=2, max=max(3, model.config.max_seq_len))
        K = Dim("keep", min=1, max=MAX_TOKENS)
        dims = {"B": B, "S": S, "L": Dim("keys", min=1, max=max(2, model.config.max_seq_len))}
        state_dims = [{i: dims[tag] for i, tag in d.items()} for d in example.step_dims()]
        from torch._inductor import config as inductor_config
        known = inductor_config.get_config_copy()  # configs an older torch lacks are left out
        build_configs = {k: v for k, v in BUILD_CONFIG.items() if k in known}
        weight_bytes = sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
        # the C++ headers build on the second core while export and inductor trace on the first
        interface_dir = cache_dir() / "aoti_interface"  # the runtime interface's object, shared by every library
        with torch.no_grad(), warnings.catch_warnings(), compile_speed.no_stack_traces(), \
                compile_speed.headers_warming(build_configs, weight_bytes, interface_dir):
            # torch's own notices from inside export/inductor: not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            with compile_speed.uncached_fake_dispatch():
                if self.frozen:
                    ep = torch.export.export(_Frozen(model, example, self.heads), (ids, example.step_state(), keep),
                                             dynamic_shapes=({0: B, 1: T}, state_dims, {0: K}), strict=False)
                    configs = FROZEN_CONFIG
                else:
                    ep = torch.export.export(_Exported(model, self.names, example),
                                             (ids, [w.detach() for w in self.weights], example.step_state(), keep),
                                             dynamic_shapes=({0: B, 1: T}, [None] * len(self.weights), state_dims,
                                                             {0: K}), strict=False)
                    configs = {}
            configs = {**build_configs, **{k: v for k, v in configs.items() if k in known}}
            tmp = temporary(path)
            with compile_speed.faster_codegen(interface_dir), micro_gemm.register_blocking(key.get("blocking")), \
                    micro_gemm.streamlined_k_loop(), micro_gemm.row_panels():
                torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp), inductor_configs=configs)
        store(tmp, path, meta, key)
        runner = open_library(path)
        print(f" done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        return runner
