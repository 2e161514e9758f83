"""models/fresh_values.py: inductor's post-grad fake-tensor update, with a node's old value kept
where the recomputed one differs only by a fresh storage no op can see, leaves every node with what
torch's own update gives it (shapes, strides, offsets, and which nodes share a storage), and reruns
fewer nodes. The oracle is the same update without the patch, on the same change of the same graph."""
import pytest
import torch
from torch._guards import detect_fake_mode
from torch._inductor.fx_utils import FakeTensorUpdater
from torch._inductor.virtualized import V
from torch.fx.experimental.proxy_tensor import make_fx

from models.fresh_values import keep_fresh_values

aten = torch.ops.aten


def program(cache, x, idx):
    y = x * 2
    written = aten.index_put.default(cache, [idx], y)  # a fresh copy; the change below makes it in place
    a = written.sum(1)
    b = torch.relu(a) + 1
    flat = b.view(-1)  # an alias of b
    return written, flat * 3, b.t()


def traced():
    args = (torch.zeros(6, 5, 4), torch.randn(2, 5, 4), torch.tensor([1, 3]))
    return make_fx(program, tracing_mode="symbolic")(*args)


def change(gm, kind: str):
    """One edit a post-grad pass makes: x * 2 rewritten as x + x, or the write made in place."""
    g = gm.graph
    if kind == "rewrite":
        mul = next(n for n in g.nodes if n.target == aten.mul.Tensor)
        with g.inserting_before(mul):
            add = g.call_function(aten.add.Tensor, (mul.args[0], mul.args[0]))
        mul.replace_all_uses_with(add)
        g.erase_node(mul)
    else:
        put = next(n for n in g.nodes if n.target == aten.index_put.default)
        put.target = aten.index_put_.default
    gm.recompile()


def update(kind: str, patched: bool):
    gm = traced()
    mode = detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"])
    with V.set_fake_mode(mode):
        updater = FakeTensorUpdater(gm)
        change(gm, kind)
        if patched:
            with keep_fresh_values():
                n = updater.incremental_update()
        else:
            n = updater.incremental_update()
    return gm, n


def summary(gm):
    """Per node (by position): shape, stride, offset of its value, and the first earlier node whose
    value shares its storage (None: a storage of its own)."""
    nodes = [n for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    storages = [n.meta["val"].untyped_storage()._cdata for n in nodes]
    out = []
    for i, (n, s) in enumerate(zip(nodes, storages)):
        v = n.meta["val"]
        out.append((str(n.target), tuple(map(str, v.shape)), tuple(map(str, v.stride())), str(v.storage_offset()),
                    next((j for j in range(i) if storages[j] == s), None)))
    return out


@pytest.mark.parametrize("kind", ["rewrite", "reinplace"])
def test_the_update_leaves_what_torch_leaves_and_reruns_less(kind):
    plain, reran_plain = update(kind, patched=False)
    kept, reran_kept = update(kind, patched=True)
    assert summary(kept) == summary(plain)
    assert reran_kept < reran_plain


def test_users_that_alias_or_write_keep_the_cascade():
    """b's users include views (b.view, b.t): a recomputed b is not kept; relu's one user (+ 1)
    returns a new storage: a recomputed relu is. The write's users read a storage it writes."""
    from models.fresh_values import _unseen
    gm = traced()
    nodes = {n.target: n for n in gm.graph.nodes}
    assert not _unseen(nodes[aten.add.Tensor])
    assert _unseen(nodes[aten.relu.default])
    change(gm, "reinplace")
    assert not _unseen(nodes[aten.mul.Tensor])  # its user writes in place now
