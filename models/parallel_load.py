"""Load a native checkpoint for tensor parallelism: each rank builds the model of its own shard (its
heads, hidden units and vocabulary rows) and reads only those slices from the safetensors file
(`safe_open(...).get_slice`), so no rank ever holds the whole model."""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open

from .checkpoint import CONFIG, WEIGHTS
from .parallel import agree, install, local_config, plan, plan_problem, slices, sync_rng

NATIVE = ("native_llama", "native_yoco")
SAMPLE = 256  # bytes read at each end of every tensor for the fingerprint


def _config(d: Path):
    """(model type, config) or (None, problem)."""
    if not (d / CONFIG).exists() or not (d / WEIGHTS).exists():
        return None, ("ValueError", f"{d} is not a native checkpoint directory (expected {CONFIG} and {WEIGHTS})")
    try:
        raw = json.loads((d / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, ("ValueError", f"cannot read {d / CONFIG}: {e}")
    kind = raw.get("model_type")
    if kind not in NATIVE:
        return None, ("TypeError", f"{d} holds a {kind!r} model; tensor-parallel loading reads native checkpoints "
                                   f"({', '.join(NATIVE)}): convert it once (models.hf_weights.from_hf, then "
                                   "models.checkpoint.save) or load it whole and call models.parallel.tensor_parallel")
    try:
        if kind == "native_llama":
            from .config import DecoderConfig
            return kind, DecoderConfig.from_dict(raw)
        from .yoco import YOCOConfig
        return kind, YOCOConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        return None, ("ValueError", f"{d / CONFIG}: {e}")


def file_fingerprint(d: Path, dtype) -> str:
    """Config bytes, the safetensors header (names, dtypes, shapes, offsets), the file size, and the
    first and last SAMPLE bytes of every tensor: cheap (no rank reads the whole file), and different
    for two trainings of one architecture; an edit confined to the middle of a tensor goes unseen."""
    h = hashlib.sha256(str(dtype).encode())
    for name in (CONFIG, WEIGHTS):
        h.update(name.encode())
        if (d / name).exists():
            h.update((d / name).read_bytes() if name == CONFIG else b"")
    if not (d / WEIGHTS).exists():
        return h.hexdigest()
    size = os.path.getsize(d / WEIGHTS)
    h.update(str(size).encode())
    with open(d / WEIGHTS, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0] if size >= 8 else 0
        header = f.read(min(n, size))
        h.update(header)
        try:
            spans = [v["data_offsets"] for k, v in json.loads(header).items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return h.hexdigest()  # not safetensors: the loader says so after the ranks agree
        for a, b in sorted(spans):
            for at in sorted({a, max(a, b - SAMPLE)}):
                f.seek(8 + n + at)
                h.update(f.read(min(SAMPLE, b - at)))
    return h.hexdigest()


def load_tensor_parallel(directory, group=None, *, dtype=None, device=None) -> nn.Module:
    """The rank's shard of the native checkpoint in `directory`, ready to decode (collectives in
    place; see models/parallel.py). Every rank must pass the same checkpoint; checks run on every
    rank, and fail on every rank, before any weight is read."""
    d = Path(directory)
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    kind, cfg = _config(d)
    problem = cfg if kind is None else (None if plan_problem(cfg, world) is None else
                                        ("ValueError", plan_problem(cfg, world)))
    agree(group, problem, file_fingerprint(d, dtype), "load_tensor_parallel")
    s = plan(cfg, dist.get_rank(group), world)
    if kind == "native_llama":
        from .llama import LlamaDecoder as Model
    else:
        from .yoco import YOCODecoder as Model
    with torch.random.fork_rng(devices=[]):  # the shard's random init is overwritten: leave the RNG as it was
        model = Model(local_config(cfg, s))
    spec = slices(kind, cfg, s)
    want = set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    sd = {}
    with safe_open(str(d / WEIGHTS), "pt") as f:
        have = set(f.keys())
        if have != want:
            raise ValueError(f"{d / WEIGHTS} does not match its config: missing {sorted(want - have)}, "
                             f"unexpected {sorted(have - want)}")
        for name in sorted(want):
            if name not in spec:  # replicated: norms
                sd[name] = f.get_tensor(name)
                continue
            dim, ranges = spec[name]
            sl = f.get_slice(name)
            parts = [sl[a:b] if dim == 0 else sl[:, a:b] for a, b in ranges]
            sd[name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim)
    stored = next(iter(sd.values())).dtype
    model.load_state_dict(sd, strict=False)  # copies into the k-major parameters (models/layout.py)
    del sd
    model = model.to(device=device, dtype=dtype or stored).eval()
    install(model, cfg, s, group)
    sync_rng(group)
    return model
