"""models/fake_prop.py: an incremental propagation after a pass leaves every node's fake value as a
full FakeTensorProp run gives it (the oracle): sizes, strides, offset, dtype, and which nodes share
storage; and it reruns fewer nodes than the graph holds."""
import pytest
import torch
from torch._inductor import compile_fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from models import fake_prop

aten = torch.ops.aten


def block(x, w, u):
    h = (x @ w).relu()
    v = h.view(h.shape[0], -1) * 2
    return (v @ u).sum(-1), h.t()


def traced():
    """A graph with symbolic sizes, as inductor's, and its example inputs (its placeholders' values)."""
    gm = make_fx(block, tracing_mode="symbolic")(torch.randn(3, 4), torch.randn(4, 5), torch.randn(5, 6))
    return gm, [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]


def signature(gm) -> list:
    """Every node's value as later passes read it, storages named by the first node holding them."""
    from torch.multiprocessing.reductions import StorageWeakRef
    owners, out = {}, []
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor):
            ref = StorageWeakRef(v.untyped_storage())
            owner = owners.setdefault(ref, n.name)
            out.append((n.name, v.dtype, str(tuple(v.shape)), str(v.stride()), str(v.storage_offset()), owner))
        else:
            out.append((n.name, repr(v)))
    return out


def node(gm, target):
    return next(n for n in gm.graph.nodes if n.target == target)


def rerun_count(monkeypatch) -> list:
    count = [0]
    original = FakeTensorProp.run_node

    def run_node(self, n):
        count[0] += 1
        return original(self, n)
    monkeypatch.setattr(FakeTensorProp, "run_node", run_node)
    return count


def replaced(gm, target):
    """The node of `target` replaced by a new node computing the same."""
    old = node(gm, target)
    with gm.graph.inserting_after(old):
        fresh = gm.graph.call_function(target, old.args)
    old.replace_all_uses_with(fresh)
    gm.graph.erase_node(old)


def new_mm(gm):
    """A pass: the matmul replaced by a new node computing the same (as inductor's packed linear)."""
    replaced(gm, aten.mm.default)


def new_relu(gm):
    """A new node under a view: the view, rerun, aliases the new node's storage, not the old one's."""
    replaced(gm, aten.relu.default)


def view_to_reshape(gm):
    """A pass: a view's target changed (inductor's view_to_reshape), its result aliasing its input."""
    node(gm, aten.view.default).target = aten.reshape.default


def transposed_relu(gm):
    """A pass that changes strides downstream: relu's input becomes t(contiguous(t(mm))), the same
    sizes with strides (1, rows); relu is rerun and its users must see the new strides."""
    relu = node(gm, aten.relu.default)
    mm = relu.args[0]
    with gm.graph.inserting_before(relu):
        t = gm.graph.call_function(aten.t.default, (mm,))
        c = gm.graph.call_function(aten.clone.default, (t,), {"memory_format": torch.contiguous_format})
        back = gm.graph.call_function(aten.t.default, (c,))
    relu.args = (back,)


@pytest.mark.parametrize("change", [new_mm, new_relu, view_to_reshape, transposed_relu])
def test_an_incremental_propagation_gives_the_values_a_full_one_gives(change, monkeypatch):
    gm, inputs = traced()
    prop = fake_prop.patched(compile_fx.fake_tensor_prop, {})
    prop(gm, inputs)  # the first run: every node, recorded
    change(gm)
    gm.recompile()
    count = rerun_count(monkeypatch)
    prop(gm, inputs)
    incremental, reran = signature(gm), count[0]
    mode = torch._guards.detect_fake_mode(inputs)
    with torch._dispatch.python.enable_python_dispatcher():
        FakeTensorProp(gm, mode=mode).propagate_dont_convert_inputs(*inputs)
    assert incremental == signature(gm)
    assert reran < len(gm.graph.nodes)


def test_an_unchanged_graph_reruns_only_its_placeholders_and_output(monkeypatch):
    gm, inputs = traced()
    prop = fake_prop.patched(compile_fx.fake_tensor_prop, {})
    prop(gm, inputs)
    before = signature(gm)
    count = rerun_count(monkeypatch)
    prop(gm, inputs)
    assert count[0] == len(inputs) + 1 and signature(gm) == before


@pytest.mark.parametrize("kind", ["resize_", "out=", "method", "module"])
def test_what_a_kept_result_could_misstate_takes_the_full_propagation(kind):
    """Ops that change sizes in place (resize_, an out= variant resizing its out), and method or
    module calls (a pass may edit a submodule in place, its key unchanged)."""
    gm, _ = traced()
    assert fake_prop.supported(gm)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(x):
        if kind == "resize_":
            gm.graph.call_function(aten.resize_.default, (x, [1]))
        elif kind == "out=":
            gm.graph.call_function(aten.add.out, (x, x), {"out": x})
        elif kind == "method":
            gm.graph.call_method("t_", (x,))
        else:
            gm.add_submodule("inner", torch.nn.Identity())
            gm.graph.call_module("inner", (x,))
    assert not fake_prop.supported(gm)
