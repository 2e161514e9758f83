"""Incremental fake-tensor propagation for inductor's freezing path (models/compile_speed.py).

Inductor refreshes every node's fake value (`meta["val"]`) after its freezing passes, though these
changed a few nodes of the graph: the linears they packed and those linears' users. Here a
propagation remembers, per node, its key (op, target, arguments, the attribute it fetches), its
result and its value. The next propagation of the same graph reruns a node only where its key
changed or an input's result did. Where a rerun node's new result is a twin of its old one (same
sizes, strides, offset, dtype and device, and a fresh allocation both times, aliasing no input),
the old result stands, so the nodes after it stay as they were.
"""
from __future__ import annotations

import contextlib
from unittest import mock

# in-place ops that change a tensor's sizes (besides those tagged inplace_view and out= variants)
_MOVES_METADATA = {"resize_", "resize_as_", "set_", "_resize_output_"}


def _key(gm, n) -> tuple:
    from torch.fx.node import map_arg
    args = repr(map_arg((n.args, n.kwargs), lambda a: f"%{id(a)}"))  # records hold their nodes: ids stay unique
    attr = id(_attr(gm, n.target)) if n.op == "get_attr" else None
    return n.op, n.target, args, attr


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _exprs(values) -> tuple:
    return tuple(v.node.expr if hasattr(v, "node") else v for v in values)


def _storages(values) -> list:
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    out = []
    for v in values:
        for t in (v if isinstance(v, (list, tuple)) else (v,)):
            if isinstance(t, torch.Tensor):
                out.append(StorageWeakRef(t.untyped_storage()))
    return out


def _twins(old, new, old_inputs: list, new_inputs: list) -> bool:
    """Do `old` and `new` stand for the same value to every later node: the same symbolic number, or
    fake tensors alike in every piece of metadata and each a fresh allocation?"""
    from torch import SymBool, SymFloat, SymInt
    from torch._subclasses.fake_tensor import FakeTensor
    if isinstance(old, (SymInt, SymFloat, SymBool)) and type(new) is type(old):
        return old.node.expr == new.node.expr
    if type(old) in (int, float, bool) and type(new) is type(old):
        return old == new
    if not (isinstance(old, FakeTensor) and isinstance(new, FakeTensor)):
        return False
    if old.constant is not None or new.constant is not None:  # a value a later node may read
        return False

    def meta(t):
        return (t.dtype, t.device, t.layout, t.requires_grad, _exprs(t.shape), _exprs(t.stride()),
                _exprs((t.storage_offset(),)))
    if meta(old) != meta(new):
        return False
    return _storages([old])[0] not in _storages(old_inputs) and _storages([new])[0] not in _storages(new_inputs)


def supported(gm) -> bool:
    """Only ATen ops, placeholders, tensor attributes and the output: no unbacked symbols (their
    bindings are per run), no op that changes a tensor's sizes in place (a kept result would show
    them changed), no method or module call and no subgraph (a pass may edit one in place, its
    key unchanged)."""
    import torch
    for n in gm.graph.nodes:
        if "unbacked_bindings" in n.meta or n.op in ("call_method", "call_module"):
            return False
        if n.op == "get_attr" and isinstance(_attr(gm, n.target), torch.nn.Module):
            return False
        if n.op != "call_function":
            continue
        op = n.target
        if isinstance(op, torch._ops.OpOverloadPacket):
            op = getattr(op, "default", None)
        if isinstance(op, torch._ops.OpOverload):
            if torch.Tag.inplace_view in op.tags or op.overloadpacket.__name__ in _MOVES_METADATA or any(
                    a.kwarg_only and a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments):
                return False
        elif isinstance(op, torch._ops.HigherOrderOperator):
            return False
    return True


def prop_class():
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    class IncrementalProp(FakeTensorProp):
        """FakeTensorProp that skips what `last` (a previous run's records on this graph) shows unchanged."""

        def __init__(self, gm, mode, last: dict | None):
            super().__init__(gm, mode)
            self.last, self.records, self.same, self.reran = last or {}, {}, set(), 0

        def run_node(self, n):
            prev, key = self.last.get(n), _key(self.module, n)
            inputs = [self.env[i] for i in n.all_input_nodes]  # their results, this run's
            if prev is not None and n.op not in ("placeholder", "output") and prev[0] == key and \
                    all(i in self.same for i in n.all_input_nodes):
                result = prev[1]
                self.same.add(n)
            else:
                result = super().run_node(n)
                self.reran += 1
                if prev is not None and (result is prev[1] or n.op not in ("placeholder", "output") and
                                         _twins(prev[1], result, prev[3], inputs)):
                    result = prev[1]
                    self.same.add(n)
            if n in self.same and prev[2] is not None:
                n.meta["val"] = prev[2]
            val = n.meta.get("val") if result is not None else None  # a None result sets no value
            self.records[n] = (key, result, val, inputs)
            return result

    return IncrementalProp


def patched(original, last: dict):
    """compile_fx.fake_tensor_prop(gm, example_inputs, force_allow_non_fake_inputs), incremental
    where an earlier call on the same graph, in the same fake mode, left records in `last`
    (gm -> (mode, records))."""
    IncrementalProp = prop_class()

    def fake_tensor_prop(gm, example_inputs, force_allow_non_fake_inputs=False):
        from torch._dispatch.python import enable_python_dispatcher
        from torch._guards import detect_fake_mode
        with enable_python_dispatcher():
            mode = detect_fake_mode(example_inputs)
        if mode is None or not supported(gm):
            last.pop(gm, None)
            return original(gm, example_inputs, force_allow_non_fake_inputs)
        allow = mock.patch.object(mode, "allow_non_fake_inputs", True) if force_allow_non_fake_inputs \
            else contextlib.nullcontext()
        before = last.get(gm)
        with enable_python_dispatcher(), allow:
            p = IncrementalProp(gm, mode, before[1] if before and before[0] is mode else None)
            p.propagate_dont_convert_inputs(*example_inputs)
        last[gm] = (mode, p.records)  # records of one fake mode serve only that mode's next run
        return mode
    return fake_tensor_prop
