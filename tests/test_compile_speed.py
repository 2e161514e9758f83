"""models/compile_speed.py: the build-time shortcuts change when the C++ is built, never what.
Checked against inductor's own behaviour: the template a memoised compile returns renders the same
text as a fresh Jinja compile; the wrapper's object build overlaps the kernels' only, the link
waits for both, an error of the wrapper's build reaches the caller; everything is put back after."""
import threading
import time

import pytest
import torch

import torch._inductor.lowering  # noqa: E402,F401  (before the GEMM template: inductor's import order)
from torch._inductor.codegen.common import KernelTemplate  # noqa: E402
from torch._inductor.codegen.cpp_gemm_template import GEMM_TEMPLATE_MICROKERNEL_DEF  # noqa: E402
from torch._inductor.cpp_builder import CppBuilder  # noqa: E402

from models import compile_speed  # noqa: E402


def test_memoised_templates_render_what_a_fresh_compile_renders():
    before = KernelTemplate.__dict__["_template_from_string"]
    source = "{% for x in xs %}{{ x|indent_except_first(2) }};{% endfor %} {{ name }}"
    options = {"xs": ["a\nb", "c"], "name": "k"}
    fresh = KernelTemplate._template_from_string(source).render(**options)
    with compile_speed.faster_codegen():
        first = KernelTemplate._template_from_string(source)
        assert KernelTemplate._template_from_string(source) is first  # compiled once
        assert first.render(**options) == fresh
        assert KernelTemplate._template_from_string(GEMM_TEMPLATE_MICROKERNEL_DEF) is \
            KernelTemplate._template_from_string(GEMM_TEMPLATE_MICROKERNEL_DEF)
    assert KernelTemplate.__dict__["_template_from_string"] is before
    assert KernelTemplate._template_from_string(source) is not KernelTemplate._template_from_string(source)


class Fake:
    def __init__(self, target):
        self.target = target

    def get_target_file_path(self):
        return self.target


def record(monkeypatch, seconds=0.3, fail=()):
    log, lock = [], threading.Lock()

    def build(self):
        with lock:
            log.append(("start", self.target, time.perf_counter()))
        time.sleep(seconds)
        with lock:
            log.append(("end", self.target, time.perf_counter()))
        if self.target in fail:
            raise RuntimeError(f"g++ failed on {self.target}")
    monkeypatch.setattr(CppBuilder, "build", build)
    return log


def at(log, event, target):
    return next(t for e, n, t in log if e == event and n == target)


def test_wrapper_and_kernel_objects_build_together_and_the_link_after(monkeypatch):
    log = record(monkeypatch)
    original = CppBuilder.__dict__["build"]
    with compile_speed.faster_codegen():
        t0 = time.perf_counter()
        assert CppBuilder.build(Fake("m.wrapper.o")) is None
        assert time.perf_counter() - t0 < 0.2  # returned at once, building in a thread
        CppBuilder.build(Fake("m.kernel.o"))  # returns once both are built
        assert {n for e, n, _ in log if e == "end"} == {"m.wrapper.o", "m.kernel.o"}
        CppBuilder.build(Fake("m.wrapper.o"))
        CppBuilder.build(Fake("w.weights.o"))  # anything else waits for the wrapper first
    assert CppBuilder.__dict__["build"] is original
    assert at(log, "start", "m.kernel.o") < at(log, "end", "m.wrapper.o")  # they overlapped
    assert [n for e, n, _ in log][-2:] == ["w.weights.o", "w.weights.o"]
    assert max(t for e, n, t in log if n == "m.wrapper.o") <= at(log, "start", "w.weights.o")


def test_a_failed_wrapper_build_reaches_the_caller(monkeypatch):
    record(monkeypatch, seconds=0.05, fail={"m.wrapper.o"})
    with compile_speed.faster_codegen():
        CppBuilder.build(Fake("m.wrapper.o"))
        with pytest.raises(RuntimeError, match="g\\+\\+ failed on m.wrapper.o"):
            CppBuilder.build(Fake("m.kernel.o"))
    with pytest.raises(RuntimeError, match="m.wrapper.o"):  # and on exit, if nothing joined it
        with compile_speed.faster_codegen():
            CppBuilder.build(Fake("m.wrapper.o"))


def test_memoised_index_expressions_are_what_a_fresh_parse_gives():
    from torch._inductor.codegen import cpp_template_kernel as ctk
    before = ctk.parse_expr_with_index_symbols
    fresh = before(["m_start + 2*n_size", "k_end"])
    with compile_speed.faster_codegen():
        first = ctk.parse_expr_with_index_symbols("m_start + 2*n_size")
        assert ctk.parse_expr_with_index_symbols("m_start + 2*n_size") is first  # parsed once
        assert ctk.parse_expr_with_index_symbols(["m_start + 2*n_size", "k_end"]) == fresh
        assert [s.assumptions0 for s in first.free_symbols] == [s.assumptions0 for s in fresh[0].free_symbols]
    assert ctk.parse_expr_with_index_symbols is before


def test_interpreter_runs_the_same_without_progress_bars():
    from torch.fx import interpreter, symbolic_trace
    gm = symbolic_trace(lambda x: (x * 2).relu().sum())
    x = torch.randn(5)
    before = interpreter.tqdm
    with compile_speed.faster_codegen():
        assert interpreter.tqdm is not before
        inside = interpreter.Interpreter(gm).run(x)
    assert interpreter.tqdm is before
    assert torch.equal(inside, interpreter.Interpreter(gm).run(x))


def test_fake_propagation_is_skipped_only_where_nothing_changed(monkeypatch):
    from torch._inductor import compile_fx
    from torch._inductor.fx_passes import freezing_patterns as fp
    from torch._subclasses import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp
    calls, real = [], FakeTensorProp.propagate_dont_convert_inputs  # every propagation, full or incremental
    monkeypatch.setattr(FakeTensorProp, "propagate_dont_convert_inputs", lambda p, *a: calls.append(1) or real(p, *a))
    unpatched = fp.fake_tensor_prop, compile_fx.fake_tensor_prop

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return x @ self.w
    gm = torch.fx.symbolic_trace(Linear())
    x = FakeTensorMode().from_tensor(torch.randn(2, 3))

    def out_shape():
        return tuple(next(n for n in gm.graph.nodes if n.op == "output").args[0].meta["val"].shape)
    with compile_speed.faster_codegen():
        fp.fake_tensor_prop(gm, [x], True)  # the opening call on this graph: left to the next
        assert not calls
        fp.fake_tensor_prop(gm, [x], True)
        fp.fake_tensor_prop(gm, [x], True)  # nothing changed: skipped
        assert len(calls) == 1 and out_shape() == (2, 4)
        gm.w = torch.nn.Parameter(torch.randn(3, 5))  # an attribute's shape changed
        fp.fake_tensor_prop(gm, [x], True)
        assert len(calls) == 2 and out_shape() == (2, 5)
        matmul = next(n for n in gm.graph.nodes if n.op == "call_function")
        with gm.graph.inserting_after(matmul):  # a node added
            relu = gm.graph.call_function(torch.relu, (matmul,))
        matmul.replace_all_uses_with(relu, delete_user_cb=lambda user: user is not relu)
        gm.recompile()
        fp.fake_tensor_prop(gm, [x], True)
        assert len(calls) == 3 and "val" in relu.meta
    assert (fp.fake_tensor_prop, compile_fx.fake_tensor_prop) == unpatched


def test_the_opening_propagation_is_deferred_only_where_a_folding_alone_precedes_the_next():
    from torch._inductor.fx_passes import freezing_patterns as fp
    assert compile_speed._opening_prop_deferrable(fp.freezing_passes)  # this torch's order
    fake_tensor_prop = constant_fold = binary_folding_pass = None  # read as source only, never run

    def reads_values(gm, inputs):
        fake_tensor_prop(gm, inputs, True)
        binary_folding_pass.apply(gm.graph)  # a pass that matches on the values: not deferrable
        fake_tensor_prop(gm, inputs, True)

    def folds(gm, inputs):
        fake_tensor_prop(gm, inputs, True)  # a comment() is not a call
        for _ in range(4):
            constant_fold(gm)
            fake_tensor_prop(gm, inputs, True)
    def may_leave(gm, inputs, cfg):
        fake_tensor_prop(gm, inputs, True)
        if not cfg:  # the next call may never come
            return
        fake_tensor_prop(gm, inputs, True)

    def may_not_loop(gm, inputs, cfg):
        """fake_tensor_prop( in a docstring is no call"""
        fake_tensor_prop(gm, inputs, True)
        for _ in range(cfg.rounds):  # possibly zero rounds
            fake_tensor_prop(gm, inputs, True)

    def indexed(gm, inputs, passes):
        fake_tensor_prop(gm, inputs, True)
        passes[0](gm.graph)
        fake_tensor_prop(gm, inputs, True)

    def loops_over_a_name(gm, inputs, cfg):
        fake_tensor_prop(gm, inputs, True)
        for _ in cfg.rounds:
            fake_tensor_prop(gm, inputs, True)

    def chooses(gm, inputs, cfg):
        fake_tensor_prop(gm, inputs, True)
        constant_fold(gm) if cfg else None
        fake_tensor_prop(gm, inputs, True)

    def asserts(gm, inputs, cfg):
        fake_tensor_prop(gm, inputs, True)
        assert cfg
        fake_tensor_prop(gm, inputs, True)
    assert compile_speed._opening_prop_deferrable(folds)
    for body in (reads_values, may_leave, may_not_loop, indexed, loops_over_a_name, chooses, asserts):
        assert not compile_speed._opening_prop_deferrable(body), body.__name__
    assert not compile_speed._opening_prop_deferrable(len)  # no source: as inductor does


def test_the_values_suffice_for_float32_matmuls_only():
    """What aot's trace leaves for freezing: float32 matmuls take the deferral (the native models'
    builds), float16/bfloat16 ones keep the opening propagation."""
    from torch._functorch.aot_autograd import aot_export_module

    class Linear(torch.nn.Linear):
        def forward(self, x):
            return (super().forward(x),)  # aot_export_module takes tuple outputs
    for dtype, deferred in ((torch.float32, True), (torch.bfloat16, False), (torch.float16, False)):
        linear = Linear(8, 8).to(dtype).eval()
        with torch.no_grad():
            gm, _ = aot_export_module(linear, [torch.randn(4, 8, dtype=dtype)], trace_joint=False)
        assert any(str(n.target) in ("aten.mm.default", "aten.addmm.default") for n in gm.graph.nodes)
        assert compile_speed._values_suffice(gm) is deferred, dtype


def test_a_half_precision_matmul_keeps_the_opening_propagation():
    """The mixed-dtype marking reads the values of a float16/bfloat16 matmul's users (the output
    node, which aot's trace leaves without one): that graph's opening propagation runs."""
    import torch._inductor.config as inductor_config
    linear = torch.nn.Linear(8, 8).to(torch.bfloat16).eval()
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    torch._dynamo.reset()
    try:
        with torch.no_grad(), inductor_config.patch(freezing=True), compile_speed.faster_codegen():
            out = torch.compile(linear)(x)
        with torch.no_grad():
            assert torch.allclose(out.float(), linear(x).float(), atol=2e-2)
    finally:
        torch._dynamo.reset()


def test_export_records_no_stack_traces_inside_only():
    from torch.fx import config

    class Add(torch.nn.Module):
        def forward(self, x):
            return x + 1
    x = torch.randn(2)
    with compile_speed.no_stack_traces():
        inside = torch.export.export(Add(), (x,))
    outside = torch.export.export(Add(), (x,))
    assert not any(n.meta.get("stack_trace") for n in inside.graph.nodes)
    assert any(n.meta.get("stack_trace") for n in outside.graph.nodes)
    assert config.do_not_emit_stack_traces is False
    assert torch.equal(inside.module()(x), outside.module()(x))


def test_export_without_the_fake_dispatch_cache_traces_the_same_graph():
    """Symbolic shapes, as the step's export: a broadcast product, a reduction, a reshape."""
    from torch._dynamo import config
    from torch.export import Dim

    class Scores(torch.nn.Module):
        def forward(self, q, k):
            s = (q[:, :, None] * k[:, None]).sum(-1)
            return torch.softmax(s, -1).reshape(q.shape[0], -1)
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    before = config.fake_tensor_cache_enabled
    B = Dim("batch")
    dims = ({0: B, 1: Dim("tokens")}, {0: B, 1: Dim("keys")})
    with compile_speed.uncached_fake_dispatch():
        inside = torch.export.export(Scores(), (q, k), dynamic_shapes=dims)
    outside = torch.export.export(Scores(), (q, k), dynamic_shapes=dims)

    def mode(ep):
        return next(n.meta["val"].fake_mode for n in ep.graph.nodes if n.op == "placeholder")
    assert mode(inside).cache_enabled is False and mode(outside).cache_enabled is before
    assert config.fake_tensor_cache_enabled is before
    assert str(inside.graph) == str(outside.graph)
    assert torch.equal(inside.module()(q, k), outside.module()(q, k))


def test_the_system_key_and_the_headers_warm_in_threads_of_their_own(monkeypatch):
    """The system key's hashing waits on the GIL; the headers' g++ runs must not wait behind it."""
    log, lock = [], threading.Lock()

    def step(name):
        def run(*args):
            with lock:
                log.append(("start", name, time.perf_counter()))
            time.sleep(0.3)
            with lock:
                log.append(("end", name, time.perf_counter()))
        return run
    monkeypatch.setattr(compile_speed, "warm_headers", step("headers"))
    monkeypatch.setattr(compile_speed, "warm_system_key", step("key"))
    with compile_speed.headers_warming({}, 1 << 20):
        pass
    assert {n for e, n, _ in log if e == "end"} == {"headers", "key"}  # both joined on exit
    assert max(at(log, "start", n) for n in ("headers", "key")) < min(at(log, "end", n) for n in ("headers", "key"))
