"""The fixed-shape, sync-free decode step of the native models, and its CUDA graphs.

`model.static_logits(input_ids, cache)` is the model's forward for T new tokens per row with no
pads: positions are the cache lengths + arange(T), keys are masked over the cache's readable range
(`cache.readable`: the whole capacity for CUDA graphs, the host bound on the longest row in the
compiled CPU step) from the device-side lengths, so no value is read back to the host and every
tensor keeps its address from step to step. On CUDA, `GraphedStep` records it once per (batch, T) and replays it
(gpt-fast's speed without torch.compile's compile time); on CPU models/compiled_cpu.py compiles it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import AttentionBatch
from .rope import rope_cos_sin


def last(x: Tensor, keep) -> Tensor:
    """x's last `keep` positions along dim 1 (None: all). `keep` may be a size the compiled step
    takes as an input: the check tells the export that it never exceeds T."""
    if keep is None:
        return x
    torch._check(keep <= x.shape[1])
    return x.narrow(1, x.shape[1] - keep, keep)


def llama_static_logits(model, input_ids: Tensor, cache, hidden: bool = False, keep=None):
    """LlamaDecoder's fixed-shape step: logits (B, T, V) of T real tokens per row appended at each
    row's length (hidden=True: and the final-norm hidden states (B, T, dim)); keep: of the last
    `keep` tokens only (a prompt's last). Writes their K/V; the caller advances the lengths. No
    checks, no syncs: the caller guarantees ids in range and lengths + T <= capacity."""
    T = input_ids.shape[1]
    slots = cache.lengths.long()[:, None] + torch.arange(T, device=input_ids.device)
    batch = AttentionBatch.static(slots, cache.lengths + T, cache)
    cos, sin = rope_cos_sin(slots, model.inv_freq, model.dtype)
    x = model.embed(input_ids)
    if x.dtype == torch.float16 and torch.compiler.is_compiling():
        # stored once: else inductor re-gathers it from the transposed tied table in every layer's norms
        # (the fp16 draft's library call 113 -> 94 us); in fp32 (1-4% slower stored) and bf16 (level), not
        from torch._inductor import inductor_prims  # noqa: F401  (registers prims.inductor_force_stride_order)
        x = torch.ops.prims.inductor_force_stride_order(x, x.stride())
    for layer in model.layers:
        x = layer(x, cos, sin, cache, batch)
    h = model.norm(last(x, keep))
    return (model.lm_head(h), h) if hidden else model.lm_head(h)


def static_forward(model, input_ids: Tensor, cache) -> Tensor:
    """The fixed-shape step run eagerly, lengths advanced: model(input_ids, cache) without checks."""
    cache.reserve(input_ids.shape[1])
    logits = model.static_logits(input_ids, cache)
    cache.advance(input_ids.shape[1])
    return logits


def _graph_body(model, input_ids: Tensor, cache) -> Tensor:
    logits = model.static_logits(input_ids, cache)
    cache.lengths.add_(input_ids.shape[1])  # in place: the graph sees the same tensor
    return logits


class GraphedStep:
    """Replays a CUDA graph of the static step per (T, model); graphs live on the cache, which
    drops them when select/repeat reallocate its buffers. The caller reserves the room."""

    def __init__(self, model, warmup: int = 2):
        self.model, self.warmup = model, warmup

    def __call__(self, input_ids: Tensor, cache) -> Tensor:
        if not input_ids.is_cuda:
            return _graph_body(self.model, input_ids, cache)
        key = (tuple(input_ids.shape), id(self.model))
        if key not in cache.graphs:
            cache.graphs[key] = self._capture(input_ids, cache)
        graph, ids_buf, out = cache.graphs[key]
        ids_buf.copy_(input_ids)
        graph.replay()
        return out

    def _capture(self, input_ids: Tensor, cache):
        ids_buf = input_ids.clone()
        saved = cache.lengths.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up allocator and kernels off the capture stream
            for _ in range(self.warmup):
                _graph_body(self.model, ids_buf, cache)
                cache.lengths.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _graph_body(self.model, ids_buf, cache)
        cache.lengths.copy_(saved)  # capture does not run the kernels; replay does the append
        return graph, ids_buf, out
