"""Tensor parallelism (Megatron-LM's layout) over torch.distributed: one native decoder across the ranks
of a process group.

Per layer, the rank keeps its share of the attention heads and of the MLP's hidden units:

    wqkv (column-parallel: its q heads, its k/v heads)  ->  attention on its heads  ->  wo (row-parallel)
    w13  (column-parallel: its gate and up units)       ->  SwiGLU                  ->  w2 (row-parallel)

and each row-parallel matmul gives a partial sum that one all-reduce completes: two all-reduces per
layer. KV heads are split as the query heads are when their count divides by the world size; else
(MQA: one KV head) each rank keeps the one KV head its query heads read. The static cache of a rank
holds only its KV heads. The embedding and the LM head are split by vocabulary rows (an embedding
lookup is zeros outside the rank's rows, summed by an all-reduce; the logits are all-gathered):
replicating them would cost each rank the whole vocabulary matrix (over half the shipped target's
bytes at tp = 2). After the collectives every rank holds the same logits bit for bit, so every
strategy runs unchanged on every rank and takes the same decisions (torch's global RNG is synced
once here, so even sampling without a seed agrees).

A row-parallel matmul sums its partial products in another order than the unsharded one, so logits
differ from tp = 1 in the last bits (fp32: ~1e-6 relative); tokens differ only at exact near-ties.

    models.parallel.init_distributed()              # under torchrun: gloo on CPU, NCCL on CUDA
    model = models.parallel_load.load_tensor_parallel(path)   # reads only this rank's slices
    model = models.parallel.tensor_parallel(model)       # or shard an already loaded model in place
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

if dist.is_available():
    # torch.distributed.nn's functions take `group=group.WORLD` as a default, read when that module is
    # first imported (dynamo imports it on first use). Imported after the world is joined, they hold the
    # world group past destroy_process_group, and gloo's worker threads then free tensors while the
    # interpreter shuts down: SIGABRT at exit. Imported here, before any group exists, they hold None.
    import torch.distributed.nn.functional as _dist_nn_functional

    if any(isinstance(d, dist.ProcessGroup) for f in vars(_dist_nn_functional).values()
           for d in getattr(f, "__defaults__", None) or ()):
        warnings.warn("torch.distributed.nn was imported after the process group was made, so its "
                      "functions hold the world group past destroy_process_group (gloo may abort the "
                      "process at exit): import models.parallel before init_process_group", stacklevel=2)

from .layout import k_major_

DEFAULT_TIMEOUT_S = 300  # a rank that died makes the others raise after this long instead of hanging


# -- process group -------------------------------------------------------------------------------

def init_distributed(backend: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S, threads: int | None = 1):
    """Join the torchrun world (env:// rendezvous): NCCL when CUDA is there, else gloo; on CPU one
    torch thread per process by default (the ranks share the cores). Returns the device to use."""
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; tensor parallelism needs it")
    cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif threads:
        torch.set_num_threads(threads)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), timeout=timedelta(seconds=timeout_s))
    return device


# -- which rows and columns a rank keeps ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shard:
    """One rank's share of a model: query heads [q0, q0+n_heads), KV heads [kv0, kv0+n_kv_heads),
    MLP hidden units [f0, f1), vocabulary rows [v0, v1) (each rank's slot is `v_chunk` rows wide)."""
    rank: int
    world: int
    n_heads: int
    n_kv_heads: int
    q0: int
    kv0: int
    f0: int
    f1: int
    v0: int
    v1: int
    v_chunk: int


def supported(model) -> bool:
    from .llama import LlamaDecoder
    from .yoco import YOCODecoder
    return type(model) in (LlamaDecoder, YOCODecoder)


def plan_problem(cfg, world: int) -> str | None:
    """Why `cfg` cannot be split over `world` ranks (None: it can)."""
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    if world < 1:
        return f"the world size must be >= 1, got {world}"
    if H % world:
        return (f"the world size {world} does not divide the model's {H} query heads: run with a number of "
                f"processes that divides {H} (torchrun --nproc-per-node)")
    group, per_rank = H // Hkv, H // world
    if Hkv % world and group % per_rank:
        return (f"{world} ranks would each hold {per_rank} query heads, which straddle the model's KV groups "
                f"({Hkv} KV heads of {group} query heads each); use a world size that divides {Hkv} or whose "
                f"share of query heads divides {group}")
    if -(-cfg.vocab_size // world) * (world - 1) >= cfg.vocab_size:
        return f"the vocabulary ({cfg.vocab_size} rows) is too small to give each of {world} ranks a share"
    return None


def plan(cfg, rank: int, world: int) -> Shard:
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    h = H // world
    if Hkv % world == 0:
        hkv, kv0 = Hkv // world, rank * (Hkv // world)
    else:  # replicated KV heads: the one KV head this rank's query heads belong to
        hkv, kv0 = 1, (rank * h) // (H // Hkv)
    F_, V = cfg.hidden_dim, cfg.vocab_size
    chunk = -(-V // world)
    return Shard(rank, world, h, hkv, rank * h, kv0, F_ * rank // world, F_ * (rank + 1) // world,
                 min(V, rank * chunk), min(V, (rank + 1) * chunk), chunk)


def slices(model_type: str, cfg, s: Shard) -> dict[str, tuple[int, list[tuple[int, int]]]]:
    """Full tensor name -> (dim, [(start, stop), ...]): the rank's tensor is the concatenation of these
    ranges along dim. Names not listed are replicated."""
    D = cfg.head_dim
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    q = (s.q0 * D, (s.q0 + s.n_heads) * D)
    k = ((H + s.kv0) * D, (H + s.kv0 + s.n_kv_heads) * D)
    v = ((H + Hkv + s.kv0) * D, (H + Hkv + s.kv0 + s.n_kv_heads) * D)
    mlp = {"mlp.w13.weight": (0, [(s.f0, s.f1), (cfg.hidden_dim + s.f0, cfg.hidden_dim + s.f1)]),
           "mlp.w2.weight": (1, [(s.f0, s.f1)])}
    out = {"embed.weight": (0, [(s.v0, s.v1)])}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (0, [(s.v0, s.v1)])
    if model_type == "native_llama":
        blocks = [f"layers.{i}." for i in range(cfg.n_layers)]
    else:  # YOCO: self-decoder blocks as Llama's, then the global K/V and the cross-decoder
        blocks = [f"self_layers.{i}." for i in range(cfg.n_layers // 2)]
        out["global_kv.wkv.weight"] = (0, [(k[0] - H * D, k[1] - H * D), (v[0] - H * D, v[1] - H * D)])
        for i in range(cfg.n_layers // 2):
            p = f"cross_layers.{i}."
            out[p + "wq.weight"] = (0, [q])
            out[p + "wo.weight"] = (1, [q])
            out.update({p + n: r for n, r in mlp.items()})
    for p in blocks:
        out[p + "attn.wqkv.weight"] = (0, [q, k, v])
        if getattr(cfg, "qkv_bias", False):
            out[p + "attn.wqkv.bias"] = (0, [q, k, v])
        out[p + "attn.wo.weight"] = (1, [q])
        out.update({p + n: r for n, r in mlp.items()})
    return out


def take(t: Tensor, dim: int, ranges: list[tuple[int, int]]) -> Tensor:
    parts = [t.narrow(dim, a, b - a) for a, b in ranges]
    return parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim)


def local_config(cfg, s: Shard):
    """The architecture one rank holds: its heads, hidden units and vocabulary rows."""
    return dataclasses.replace(cfg, n_heads=s.n_heads, n_kv_heads=s.n_kv_heads, head_dim=cfg.head_dim,
                               hidden_dim=s.f1 - s.f0, vocab_size=s.v1 - s.v0)


# -- the collective layers -----------------------------------------------------------------------

class Comm:
    """The rank's collectives, with the wall time spent in them (CPU/gloo: includes waiting for the
    slowest rank; on CUDA the ops are asynchronous, so the time is only the launch)."""

    def __init__(self, group):
        self.group, self.seconds, self.calls = group, 0.0, 0
        self.world = dist.get_world_size(group)

    def all_reduce(self, t: Tensor) -> Tensor:
        t0 = time.perf_counter()
        dist.all_reduce(t, group=self.group)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return t

    def all_gather_last(self, t: Tensor) -> Tensor:
        """Concatenate every rank's t along the last dim (same shapes on every rank)."""
        t0 = time.perf_counter()
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return torch.cat(parts, -1)


class RowParallelLinear(nn.Linear):
    """x (..., in/world) @ W[:, rank's columns]^T: a partial sum, completed by one all-reduce."""

    def __init__(self, linear: nn.Linear, comm: Comm):
        if linear.bias is not None:
            raise ValueError("a row-parallel layer with a bias would add it world-size times")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight, self.comm = linear.weight, comm

    def forward(self, x: Tensor) -> Tensor:
        return self.comm.all_reduce(F.linear(x, self.weight))


class VocabParallelEmbedding(nn.Embedding):
    """Rows [v0, v1) of the embedding; ids outside them give zeros, and the all-reduce fills them in
    (adding zeros is exact, so the vectors equal the unsharded lookup's)."""

    def __init__(self, emb: nn.Embedding, v0: int, comm: Comm):
        super().__init__(emb.num_embeddings, emb.embedding_dim, device="meta")
        self.weight, self.v0, self.comm = emb.weight, v0, comm

    def forward(self, ids: Tensor) -> Tensor:
        local = ids - self.v0
        outside = (local < 0) | (local >= self.num_embeddings)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.comm.all_reduce(x.masked_fill_(outside[..., None], 0.0))


class VocabParallelHead(nn.Linear):
    """Logits of rows [v0, v1), padded to the common chunk width, all-gathered to (..., vocab_size)."""

    def __init__(self, head: nn.Linear, chunk: int, vocab_size: int, comm: Comm):
        super().__init__(head.in_features, head.out_features, bias=False, device="meta")
        self.weight, self.chunk, self.vocab_size, self.comm = head.weight, chunk, vocab_size, comm

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight)
        if y.shape[-1] < self.chunk:  # the last rank's rows when the vocabulary does not divide
            y = F.pad(y, (0, self.chunk - y.shape[-1]))
        y = self.comm.all_gather_last(y)
        return y if y.shape[-1] == self.vocab_size else y[..., :self.vocab_size]


# -- checks before any forward -------------------------------------------------------------------

def agree(group, problem: tuple[str, str] | None, fingerprint: str, what: str) -> None:
    """Every rank's problem (if any) and model fingerprint, exchanged; the same error on every rank
    when any rank has a problem or the fingerprints differ."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} needs torch.distributed: launch with torchrun and call "
                           "models.parallel.init_distributed() (or torch.distributed.init_process_group) first")
    world = dist.get_world_size(group)
    seen: list = [None] * world
    dist.all_gather_object(seen, (problem, fingerprint), group=group)
    bad = [(i, p) for i, (p, _) in enumerate(seen) if p is not None]
    if bad:
        kind = TypeError if bad[0][1][0] == "TypeError" else ValueError
        raise kind(f"{what}: " + "; ".join(f"rank {i}: {p[1]}" for i, p in bad))
    prints = [fp for _, fp in seen]
    if len(set(prints)) > 1:
        ranks = ", ".join(f"rank {i} {fp[:12]}" for i, fp in enumerate(prints))
        raise ValueError(f"{what}: the ranks hold different models or checkpoints (config/weights fingerprints "
                         f"{ranks}); give every rank the same checkpoint and dtype")


def model_problem(model, world: int) -> tuple[str, str] | None:
    if getattr(model, "shard", None) is not None:
        return ("ValueError", "the model is already sharded (tensor_parallel was called on it before)")
    if not supported(model):
        return ("TypeError", f"cannot shard a {type(model).__name__}: tensor parallelism supports the native "
                             "decoders models.LlamaDecoder and models.yoco.YOCODecoder (load HF models with "
                             "--native / models.hf_weights.from_hf)")
    p = plan_problem(model.config, world)
    return None if p is None else ("ValueError", p)


def model_fingerprint(model) -> str:
    """Config, tensor names/shapes/dtypes and a float64 sum of every tensor."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg), sort_keys=True, default=str).encode())
    h.update(type(model).__name__.encode())
    if isinstance(model, nn.Module):
        for name, t in model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}{float(t.detach().sum(dtype=torch.float64))!r}".encode())
    return h.hexdigest()


def sync_rng(group) -> None:
    """Give every rank rank 0's global RNG state: sampling without a seed then agrees across ranks."""
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    dist.broadcast_object_list(states, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state(states[1])


# -- sharding ------------------------------------------------------------------------------------

def _model_type(model) -> str:
    return model.config.model_type


def _attention_modules(model):
    if _model_type(model) == "native_llama":
        return [b.attn for b in model.layers]
    return [b.attn for b in model.self_layers] + list(model.cross_layers)


def install(model, full_cfg, s: Shard, group) -> nn.Module:
    """Make a model whose tensors are already the rank's slices behave as the whole model: collective
    layers in place of wo / w2 / embed / lm_head, the full config and vocabulary, local head counts."""
    comm = Comm(group)
    for attn in _attention_modules(model):
        attn.n_heads = s.n_heads
        if hasattr(attn, "n_kv_heads"):
            attn.n_kv_heads = s.n_kv_heads
        attn.wo = RowParallelLinear(attn.wo, comm)
    if _model_type(model) != "native_llama":
        model.global_kv.n_kv_heads = s.n_kv_heads
    for block in (model.layers if _model_type(model) == "native_llama" else [*model.self_layers, *model.cross_layers]):
        block.mlp.w2 = RowParallelLinear(block.mlp.w2, comm)
    embed = VocabParallelEmbedding(model.embed, s.v0, comm)
    head = VocabParallelHead(model.lm_head, s.v_chunk, full_cfg.vocab_size, comm)
    if full_cfg.tie_embeddings:
        head.weight = embed.weight
    model.embed, model.lm_head = embed, head
    model.config, model.vocab_size = full_cfg, full_cfg.vocab_size
    model.cache_heads = s.n_kv_heads
    model.step_max_tokens = 0  # collectives stay outside CUDA graphs and the compiled CPU step: always eager
    model.shard, model.comm = s, comm
    return model


def tensor_parallel(model: nn.Module, group=None) -> nn.Module:
    """Shard a loaded native decoder in place across the ranks of `group` (default: the world) and
    return it. Every rank must pass the same model; checks run on every rank before any change."""
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    problem = model_problem(model, world)
    agree(group, problem, model_fingerprint(model), "tensor_parallel")
    s = plan(model.config, dist.get_rank(group), world)
    with torch.no_grad():
        for name, (dim, ranges) in slices(_model_type(model), model.config, s).items():
            owner, attr = name.rsplit(".", 1)
            module = model.get_submodule(owner)
            old = getattr(module, attr)
            setattr(module, attr, nn.Parameter(take(old.detach(), dim, ranges), requires_grad=old.requires_grad))
        if model.config.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        for m in model.modules():  # shapes the modules report
            if isinstance(m, nn.Linear):
                m.out_features, m.in_features = m.weight.shape
            elif isinstance(m, nn.Embedding):
                m.num_embeddings = m.weight.shape[0]
        k_major_(model)
    install(model, model.config, s, group)
    sync_rng(group)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of this process's parameters and buffers (tied tensors once)."""
    seen, n = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen and t.device.type != "meta":
            seen.add(t.data_ptr())
            n += t.numel() * t.element_size()
    return n
