"""Inductor's post-grad fake-tensor update without its cascade (one AOTInductor build's time,
models/compile_speed.py; the same C++ out).

After the post-grad passes, FakeTensorUpdater.incremental_update reruns each changed node on fake
tensors and compares the new value with the old (fx_utils._is_fake_tensor_same); where they differ
it keeps the new one and reruns every user. A rerun op returns a fresh storage, which that check
counts as a difference, so one change reruns everything after it: on the shipped target the
reinplacing of the cache writes reran 480 + 242 of ~700 nodes, 1.6 s. Its own exception for a fresh
storage that nothing else holds sits after that storage test and never applies.

`keep_fresh_values()` takes the new value as unchanged where it equals the old in everything but a
storage that is fresh on both sides and no op can see: the node's op returns no alias of an input,
the old storage was this node's alone and the new one nobody's, and no user returns an alias of it
or writes into it (schema alias annotations). The users then keep values computed from an equal
input. Measured on the shipped target: 1.6 -> 0.16 s; the generated C++ of the target, draft and
YOCO equal to a build without it (comments aside).
"""
from __future__ import annotations

import contextlib
import inspect
from unittest import mock

import torch


def _fresh(op) -> bool:
    """An aten op whose outputs alias no input (a new storage each run)."""
    return isinstance(op, torch._ops.OpOverload) and all(r.alias_info is None for r in op._schema.returns)


def _unseen(node) -> bool:
    """No user of `node` can return an alias of its value or write into it."""
    for user in node.users:
        if not _fresh(user.target):
            return False
        if any(a.alias_info is not None and a.alias_info.is_write for a in user.target._schema.arguments):
            return False
    return True


def keep_fresh_values():
    """Within: FakeTensorUpdater keeps a node's old value where the recomputed one differs from it
    only by a fresh storage no op can see (above); where this torch lacks that check, as before."""
    from torch._inductor import fx_utils
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    same = getattr(fx_utils, "_is_fake_tensor_same", None)
    storage = getattr(fx_utils, "get_storage", None)
    if same is None or storage is None or \
            not {"check_strides", "check_storage", "node"} <= set(inspect.signature(same).parameters):
        return contextlib.nullcontext()

    def kept(new, old, existing_storages, **kw):
        if same(new, old, existing_storages, **kw):
            return True
        node, check_strides = kw.get("node"), kw.get("check_strides", True)
        return (kw.get("check_storage", True) and node is not None
                and isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor)
                and torch._C._has_storage(new) and torch._C._has_storage(old) and _fresh(node.target)
                and same(new, old, existing_storages, check_strides=check_strides, check_storage=False)
                and statically_known_true(new.storage_offset() == old.storage_offset())
                and existing_storages.get(storage(old), 0) == 1 and storage(new) not in existing_storages
                and _unseen(node))
    return mock.patch.object(fx_utils, "_is_fake_tensor_same", kept)
