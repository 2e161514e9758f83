"""A fixed-shape, sync-free decode step for native models, captured in CUDA graphs on GPU.

`static_forward` is the model's forward for T new tokens per row with no pads: positions are the
cache lengths + arange(T), keys are masked over the whole capacity from the device-side lengths, so
no value is read back to the host and every tensor keeps its shape and address from step to step.
On CUDA, `GraphedStep` records it once per (batch, T) and replays it (gpt-fast's speed without
torch.compile's compile time); elsewhere it runs eagerly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import AttentionBatch, kernel_for
from .rope import rope_cos_sin


class StaticAttentionBatch(AttentionBatch):
    """Every row reads all `capacity` slots; visibility comes from the device-side slots only.
    All T queries are real and end at each row's length, the decode kernel's layout: on CUDA it
    runs with q_lens=None and reads the lengths on the device (no read-back, graph-capturable)."""

    def __init__(self, slots: Tensor, lengths: Tensor, capacity: int):
        self.slots, self.lengths, self.valid = slots, lengths, None
        self.kv_len = capacity
        self._masks = {}
        self.kernel, self.q_lens = kernel_for(slots, slots.shape[1]), None

    def mask(self, window: int) -> Tensor:
        if window not in self._masks:
            n = torch.arange(self.kv_len, device=self.slots.device)
            q = self.slots[:, :, None]
            m = n <= q
            if window:
                m = m & (n > q - window)
            self._masks[window] = m[:, None]
        return self._masks[window]


def static_forward(model, input_ids: Tensor, cache) -> Tensor:
    """Logits (B, T, V) of T real tokens per row appended at each row's length. No checks, no syncs:
    the caller guarantees ids in range and lengths + T <= capacity."""
    B, T = input_ids.shape
    slots = cache.lengths.long()[:, None] + torch.arange(T, device=input_ids.device)
    batch = StaticAttentionBatch(slots, cache.lengths + T, cache.capacity)
    cos, sin = rope_cos_sin(slots, model.inv_freq, model.dtype)
    x = model.embed(input_ids)
    for layer in model.layers:
        x = layer(x, cos, sin, cache, batch)
    cache.lengths += T  # in place: the graph sees the same tensor
    return model.lm_head(model.norm(x))


class GraphedStep:
    """Replays a CUDA graph of `static_forward` per (T, model); graphs live on the cache, which
    drops them when select/repeat reallocate its buffers."""

    def __init__(self, model, warmup: int = 2):
        self.model, self.warmup = model, warmup

    def __call__(self, input_ids: Tensor, cache) -> Tensor:
        if not input_ids.is_cuda:
            return static_forward(self.model, input_ids, cache)
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
                static_forward(self.model, ids_buf, cache)
                cache.lengths.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = static_forward(self.model, ids_buf, cache)
        cache.lengths.copy_(saved)  # capture does not run the kernels; replay does the append
        return graph, ids_buf, out
