"""What the native decoders (LlamaDecoder, YOCODecoder) share: the capabilities of the model
protocol they have alike, the input checks, and the choice of how a decode/verify step runs.

A step of T <= `step_max_tokens` new tokens per row, none of them padding, is the fixed-shape step
of models/compiled.py: replayed as a CUDA graph on GPU, and on CPU run by the compiled step of
models/compiled_cpu.py (`compile_step`: None = automatic, False = always eager, True = compiled
wherever it can be), which also takes a pad-free prompt or chunk of up to compiled_cpu.PROMPT_ROWS
rows (batch x T). Every other forward (long prefills, masks, positions) runs eagerly.

No forward reads a value back to the host on CPU: token ids are range-checked by the embedding
itself (a bad id raises before the cache changes), cache lengths by the cache's host-side bound.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .cache import StaticCache
from .protocol import bound_forward, check_input_ids, special_tokens

HALF = (torch.float16, torch.bfloat16)
GUESSING_KEPT = 4  # compiled steps with heads' guesses kept loaded per model (a benchmark's sweep of k)


class NativeDecoder(nn.Module):
    """Subclasses define `cache_type`, `cache_heads`, `static_logits(input_ids, cache)` (the fixed-shape step:
    writes the new K/V, leaves the lengths to the caller) and `hidden_train`."""
    cache_type: type  # the cache class new_cache() returns
    cuda_graphs = False  # fixed-shape steps replay CUDA graphs on GPU
    # capabilities (models/protocol.py) both have; max_rollback is each one's own
    rollback_window = None
    returns_hidden = True
    runs_past_max_positions = False  # the rope table and the cache end at max_seq_len
    hf_passthrough = False
    # the compiled CPU step bakes the weights in, prepacked (a copy; models/compiled_cpu.py); False: it
    # takes them as inputs (one copy of the weights, one library per architecture)
    compile_frozen = True

    def __init__(self):
        super().__init__()
        # decode/verify steps of up to this many tokens run the fixed-shape step (0 = always eager)
        self.step_max_tokens = 16
        self.compile_step: bool | None = None  # CPU: None = DECODING_COMPILE or the rule of compiled_cpu
        self._graphed = None  # CUDA graphs (models/compiled.GraphedStep)
        self._compiled = None  # compiled CPU step (models/compiled_cpu.CompiledStep)
        self._guessing = {}  # heads' kind, k and values -> the compiled CPU step with their guesses

    def __getstate__(self):
        """Copies and pickles leave the compiled step and CUDA graphs behind (rebuilt or reloaded on
        the copy's first step): they belong to this object's weights and cannot be pickled."""
        state = self.__dict__.copy()
        state["_compiled"] = state["_graphed"] = None
        state["_guessing"] = {}
        return state

    @property
    def device(self):
        return self.embed.weight.device

    @property
    def dtype(self):
        return self.embed.weight.dtype

    @property
    def embed_size(self) -> int:
        return self.vocab_size

    @property
    def max_positions(self) -> int:
        return self.config.max_seq_len

    @property
    def generation_defaults(self) -> dict:
        return special_tokens(self.config)

    def new_cache(self, batch_size: int, max_len: int, *, dtype=None, device=None) -> StaticCache:
        """A StaticCache of this model's layers and cached KV heads (YOCO overrides it with its own)."""
        self.check_cache_len(max_len)
        c = self.config
        return StaticCache(c.n_layers, batch_size, self.cache_heads, max_len, c.head_dim,
                           dtype=dtype or self.dtype, device=device or self.device)

    def check_cache_len(self, max_len: int) -> None:
        """new_cache's bound: no row may outgrow the positions the model has."""
        if max_len > self.config.max_seq_len:
            raise ValueError(f"max_len {max_len} exceeds the model's max_seq_len {self.config.max_seq_len}")

    @property
    def cuda_graph_max_tokens(self) -> int:  # the name the GPU benchmarks use
        return self.step_max_tokens

    @cuda_graph_max_tokens.setter
    def cuda_graph_max_tokens(self, n: int) -> None:
        self.step_max_tokens = n

    def check_inputs(self, input_ids: Tensor, cache, attention_mask, positions, logits_to_keep: int) -> None:
        """The protocol's checks, on the host only (ids' range: see `embed_ids`)."""
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.LongTensor [B, T], got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids is empty (T = 0): pass at least one token per forward")
        if not isinstance(cache, self.cache_type):
            raise TypeError(f"cache must come from {type(self).__name__}.new_cache(), got {type(cache).__name__}")
        if cache.batch_size != B:
            raise ValueError(f"input_ids has {B} rows but the cache has {cache.batch_size}")
        if cache.dtype != self.dtype:
            raise TypeError(f"cache dtype {cache.dtype} differs from the model's {self.dtype}; "
                            f"create it with model.new_cache(..., dtype={self.dtype})")
        for name, t in (("attention_mask", attention_mask), ("positions", positions)):
            if t is not None and tuple(t.shape) != (B, T):
                raise ValueError(f"{name} must have the shape of input_ids {(B, T)}, got {tuple(t.shape)}")
        if not isinstance(logits_to_keep, int) or not 0 <= logits_to_keep <= T:
            raise ValueError(f"logits_to_keep must be an int in [0, {T}] (0 = all), got {logits_to_keep}")
        if input_ids.is_cuda:  # an out-of-range id is a fatal device assert there: check first (one read-back)
            check_input_ids(input_ids, self.vocab_size)

    @staticmethod
    def new_slots(T: int, cache, attention_mask) -> tuple[Tensor, Tensor | None, bool]:
        """An eager forward's layout: the slots (B, T) its tokens go to, their real-token mask (None:
        all real) and whether the cache's length bound was exact before them. Raises on overflow
        before any work."""
        exact = cache.exact
        if attention_mask is None:  # decode and verify steps: every token real, appended at each row's end
            return cache.append_slots(T)[0], None, exact
        valid = attention_mask.bool()
        return cache.slots_for(valid), valid, exact

    def embed_ids(self, input_ids: Tensor) -> Tensor:
        """Embeddings (B, T, dim). Call before changing the cache: on CPU the lookup is the range
        check (no read-back), and a bad id gets the protocol's error."""
        try:
            return self.embed(input_ids)
        except IndexError:
            check_input_ids(input_ids, self.vocab_size)  # raises the clear error
            raise

    def checked_step(self, input_ids: Tensor, cache, attention_mask, positions, logits_to_keep: int,
                     return_hidden: bool):
        """Every forward's start: the protocol's checks, then the output of the fixed-shape step
        when this forward is one (no mask, no positions, `fixed_step`) and a compiled
        step or CUDA graph runs it; None: the caller runs eagerly."""
        self.check_inputs(input_ids, cache, attention_mask, positions, logits_to_keep)
        if attention_mask is None and positions is None:
            if self.fixed_step(*input_ids.shape, input_ids.is_cuda):
                return self.run_step(input_ids, cache, logits_to_keep, return_hidden)
            if self.dtype in HALF and input_ids.device.type == "cpu" and self.step_max_tokens:
                return self.chunked_step(input_ids, cache, logits_to_keep, return_hidden)
        return None

    def chunked_step(self, input_ids: Tensor, cache, logits_to_keep: int, return_hidden: bool):
        """A mask-free forward too wide for one compiled CPU step (a long prompt), as library calls
        of at most PROMPT_ROWS rows each, in order; None where no library runs (nothing written).
        For half precision: eager half-precision steps on a CPU ran 5-13x slower than the
        library (the shipped draft's and target's steps)."""
        from .compiled_cpu import MAX_TOKENS, PROMPT_ROWS
        B, T = input_ids.shape
        width = min(MAX_TOKENS, PROMPT_ROWS // B)
        if width < 1:
            return None
        first = T - (logits_to_keep or T)  # the kept positions: [first, T)
        outs = []
        for start in range(0, T, width):
            end = min(start + width, T)
            want = end - max(start, first)  # of this chunk's positions, the kept ones (its last)
            out = self.run_step(input_ids[:, start:end], cache, max(want, 1), return_hidden)
            if out is None:
                return None  # no library (known at the first chunk: nothing written)
            if want > 0:
                outs.append(out)
        if return_hidden:
            return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)
        return torch.cat(outs, 1)

    def fixed_step(self, B: int, T: int, cuda: bool) -> bool:
        """Does a mask-free forward of B x T tokens take the fixed-shape step: T <= step_max_tokens,
        or on CPU (step_max_tokens > 0) a prompt or chunk of up to compiled_cpu.PROMPT_ROWS rows."""
        if T <= self.step_max_tokens:
            return True
        from .compiled_cpu import MAX_TOKENS, PROMPT_ROWS
        return not cuda and self.step_max_tokens > 0 and T <= MAX_TOKENS and B * T <= PROMPT_ROWS

    def run_step(self, input_ids: Tensor, cache, logits_to_keep: int, return_hidden: bool = False):
        """Logits (return_hidden: and final-norm hidden states) of a fixed-shape step through CUDA
        graphs or the compiled CPU step; None when neither applies here (then the caller runs eagerly)."""
        if input_ids.device.type == "cpu":
            compiled = self.compiled_step(cache)
            out = None if compiled is None else compiled(input_ids, cache, logits_to_keep)  # the kept rows only
            return out if out is None or return_hidden else out[0]
        # CUDA graphs; eager: a prompt into an empty cache (not worth a graph), hidden states (no graph keeps them)
        if not input_ids.is_cuda or return_hidden or not self.cuda_graphs or \
                (not cache.longest and cache.sync_longest() == 0):
            return None
        from .compiled import GraphedStep
        cache.reserve(input_ids.shape[1])  # raises on overflow
        if self._graphed is None:
            self._graphed = GraphedStep(self)
        logits = self._graphed(input_ids, cache).clone()  # the graph reuses its output buffer
        return logits[:, -logits_to_keep if logits_to_keep else None:]

    def forward_on(self, cache):
        """This model's forward on `cache` for one generate() call's steps, (input_ids,
        attention_mask=None, logits_to_keep=0, return_hidden=False) -> its output: on CPU, a mask-free
        step of up to step_max_tokens goes straight to the compiled step, the switch and the weight
        check done once, here, and the protocol's checks left to the caller (a strategy's ids are
        right by construction): ~70 us a step less (the draft's step is ~0.15 ms). Weights changed
        during the call are not seen (a direct forward checks them every time); anything else is
        the forward itself."""
        forward = bound_forward(self, cache)
        compiled = self.compiled_step(cache) if self.device.type == "cpu" and self.step_max_tokens else None
        if compiled is None:
            return forward
        most = self.step_max_tokens

        def step(ids, attention_mask=None, logits_to_keep=0, return_hidden=False):
            if attention_mask is None and ids.shape[1] <= most:
                out = compiled(ids, cache, logits_to_keep)
                if out is not None:
                    return out if return_hidden else out[0]
            return forward(ids, attention_mask, logits_to_keep, return_hidden=return_hidden)
        return step

    def guessing_on(self, cache, heads):
        """The compiled CPU step that also returns blockwise heads' greedy guesses, for one generate()
        call's steps: (input_ids, keep) -> (logits (B, keep, V), the heads' guesses after each kept
        token (B, keep, k)), or None for a step it does not take (not a fixed step: fixed_step; no
        library). None where the compiled step does not run (compiled_step) or would not be frozen.
        One library per heads' values and k, built on first use (the target's weights and the heads'
        are its constants); the last GUESSING_KEPT stay loaded, found by _heads_key."""
        from . import compiled_cpu
        if self.device.type != "cpu" or not self.step_max_tokens or not self.compile_frozen \
                or not compiled_cpu.wanted(self, cache):
            return None
        key = (type(heads).__name__, heads.k, *_heads_key(heads))
        step = self._guessing.pop(key, None)
        if step is None or not step.matches(self):
            step = compiled_cpu.CompiledStep(self, heads)
        self._guessing[key] = step  # the most recent last
        while len(self._guessing) > GUESSING_KEPT:
            self._guessing.pop(next(iter(self._guessing)))

        def guess(ids, keep):
            return step(ids, cache, keep) if self.fixed_step(*ids.shape, False) else None
        return guess

    def compiled_step(self, cache):
        """The compiled CPU step of this model as it is now (a new one where a weight changed), or
        None where the switch and rule say eager (models/compiled_cpu.py)."""
        from . import compiled_cpu
        if not compiled_cpu.wanted(self, cache):
            return None
        if self._compiled is None or not self._compiled.matches(self):
            self._compiled = compiled_cpu.CompiledStep(self)
        return self._compiled

    def num_parameters(self, *, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def hidden_train(self, input_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_train(self, input_ids: Tensor) -> Tensor:
        """Logits (B, T, V) of a full causal pass, no cache (training)."""
        return self.lm_head(self.hidden_train(input_ids))


def _heads_key(heads) -> tuple:
    """What finds the heads' library again: their storage and versions (a write makes a new key; the
    step kept under the old one holds those tensors, so no other heads take their addresses), or,
    for tensors made under inference_mode (heads=PATH, loaded anew in every generate() call), their
    values' hash (~0.4-1.6 ms for the shipped heads)."""
    params = list(heads.parameters())
    if any(p.is_inference() for p in params):
        from .library_cache import values_hash
        return ("values", values_hash(heads))
    return ("storage", *((p.data_ptr(), p._version, *p.shape) for p in params))

