"""Cuts the wall time of one AOTInductor build (models/compiled_cpu.py) without changing what it
builds: the same C++ source, compiled with the same commands, so the same library.

- `headers_warming()`, around torch.export and AOTInductor: inductor's CPU ISA probe and its two
  precompiled headers (the wrapper's and the kernels', ~8 s of g++ each on a machine that has never
  built one) are built while the export and inductor's tracing (Python, one core) run, instead of
  one after the other at the end. Same function, arguments and on-disk cache as inductor's own call
  (AotCodeCompiler.compile), which then finds them built (a file lock orders the two). A second
  thread fills inductor's system key (CacheBase.get_system: a sha256 of triton's 500 MB library,
  file by file), which the GEMM lowering would otherwise compute on the main thread.
- `faster_codegen()`, around aoti_compile_and_package:
  - each Jinja source of the C++ GEMM template is compiled once, not at every render (each of the
    shipped target's 66 renders compiled ~5 templates from source: 10-12 s of rendering -> 2-3 s);
  - each index expression of the GEMM template is parsed from its string once (sympy's parse_expr
    at every use took ~1 s more of the renders);
  - the freezing passes' fake-tensor propagation is skipped where the graph is as the previous
    one left it (it runs after every constant folding; the last folding usually finds nothing:
    one full propagation of the graph's symbolic shapes, ~1 s, for nothing), and their opening one
    is left to the propagation after the first folding, which always follows it, where what runs
    between reads no value it sets (~0.7 s); a propagation after the first on a graph (the one
    inductor makes after freezing) reruns only the nodes a pass changed (models/fake_prop.py: 207
    of the shipped target's 725, 1.05 -> 0.3-0.4 s);
  - the post-grad passes' fake-tensor update keeps a node's value where the recomputed one differs
    only by a fresh storage no op can see, instead of rerunning every node after a change
    (models/fresh_values.py: the shipped target's 1.6 -> 0.16 s);
  - torch.fx's Interpreter makes no progress bar (it makes a disabled tqdm at every run, thousands
    of runs in the kernels' code generation; tqdm takes a process-wide lock for each);
  - the wrapper's and the kernels' object files compile at the same time (inductor builds one
    after the other; the shipped target's ~3.5 s of kernels, 5.6 s with two threads, run beside the
    wrapper's ~4 s), the kernels' as two units at once (models/kernel_units.py);
  - given a directory, the wrapper compiles without the runtime interface, whose object is
    compiled once into that directory (models/aoti_interface.py; `headers_warming` compiles it
    beside the headers where it is missing).
- `no_stack_traces()`, around torch.export and AOTInductor: no source stack trace is captured
  for each traced node (torch.fx.config.do_not_emit_stack_traces; they end in comments only):
  the shipped target's export 4.3-4.5 -> 3.9-4.1 s.
- `uncached_fake_dispatch()`, around torch.export: its fake tensors run each op's meta function
  instead of their dispatch cache, whose entries under symbolic shapes cost more than they save
  (the shipped target's export 4.75 -> 3.1 s; inductor's passes reuse export's fake mode, so they
  run uncached too, which gives ~0.6 s of that back).
Each step checks that the torch internal it relies on is there, else leaves inductor as it is.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import textwrap
import threading
from pathlib import Path
from unittest import mock

from . import aoti_interface, fake_prop, fresh_values, kernel_units


def warm_system_key() -> None:
    """Inductor's system key, as the GEMM lowering's autotuning cache asks for it (functools.cache)."""
    try:
        from torch._inductor.codecache import CacheBase
        CacheBase.get_system()
    except Exception:  # only a head start
        pass


def warm_headers(weight_bytes: int, interface_dir: Path | None = None) -> None:
    """Build what AotCodeCompiler.compile would build first on a CPU: the ISA probe (pick_vec_isa)
    and the precompiled headers, with the arguments it passes (device "cpu", AOT mode, no relative
    paths, weights mmapped as determine_aoti_mmap_flags decides for `weight_bytes`)."""
    try:
        from torch._inductor import codecache, config
        from torch._inductor.cpp_builder import CppBuilder, CppTorchDeviceOptions
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        from torch._inductor.utils import determine_aoti_mmap_flags
        isa = pick_vec_isa()
        if not config.aot_inductor.precompile_headers:
            return
        command = repr(CppBuilder(name="o", sources="i", BuildOption=CppTorchDeviceOptions(
            vec_isa=isa, device_type="cpu", aot_mode=True)).get_command_line())
        external, mmap = determine_aoti_mmap_flags(weight_bytes)
        args = dict(aot_mode=True, device_type="cpu", use_mmap_weights=mmap,
                    use_mmap_weights_external=external, use_relative_path=False, vec_isa=isa)
        header = codecache._precompile_header(codecache._get_cpp_wrapper_header("cpu", aot_mode=True), command,
                                              min_optimize=True, **args)
        codecache._precompile_header(codecache._get_cpp_prefix_header("cpu"), command, **args)
        if interface_dir is not None:
            aoti_interface.warm(args, header, interface_dir)
    except Exception:  # only a head start: inductor builds whatever is missing itself
        pass


@contextlib.contextmanager
def headers_warming(configs: dict, weight_bytes: int, interface_dir: Path | None = None):
    """Within: `warm_headers` running in a thread under inductor's `configs` (BUILD_CONFIG: what
    the g++ command lines read, e.g. -g1 from enable_line_tables; config patches are per thread),
    and `warm_system_key` in another. Joined on a normal exit; after an error they are left to
    finish on their own (cache fills)."""
    try:
        import torch._inductor.codecache  # noqa: F401  (imported here, not in the thread)
        import torch._inductor.cpp_builder  # noqa: F401
        import torch._inductor.cpu_vec_isa  # noqa: F401
        import torch._inductor.utils  # noqa: F401
        from torch._inductor import config
    except Exception:
        yield
        return

    def run():
        try:
            with config.patch(configs):
                warm_headers(weight_bytes, interface_dir)
        except Exception:
            pass
    # two threads: the g++ runs wait outside the GIL, while the system key hashes triton's files one
    # by one, each waiting for the GIL the export holds (~9 s of wall time for 0.9 s of work); in one
    # thread, the key first, the precompiled headers of a fresh machine started ~9 s late and the
    # build waited for them at its end
    threads = [threading.Thread(target=run, name="aoti-warm-headers", daemon=True),
               threading.Thread(target=warm_system_key, name="aoti-system-key", daemon=True)]
    for thread in threads:
        thread.start()
    yield
    for thread in threads:
        thread.join()


@contextlib.contextmanager
def faster_codegen(interface_dir: Path | None = None):
    """Within: Jinja templates compiled once per source, index expressions parsed once, no progress
    bars, no cascade in the post-grad fake-tensor update (models/fresh_values.py), and the
    wrapper's object file built in a thread while the kernels' builds (joined before
    any other build and on exit), without the runtime interface where `interface_dir` is given."""
    with contextlib.ExitStack() as stack:
        for patch in (_memo_templates, _memo_index_exprs, _no_progress_bars, _no_repeated_fake_prop,
                      fresh_values.keep_fresh_values, functools.partial(_parallel_objects, interface_dir)):
            try:
                stack.enter_context(patch())
            except Exception:
                pass
        yield


def _memo_templates():
    """KernelTemplate._template_from_string(source) compiles `source` with Jinja on every call; the
    template it returns is a pure function of the source (its environment and filters are fixed),
    so one compile per source serves every render."""
    from torch._inductor.codegen.common import KernelTemplate
    original = KernelTemplate.__dict__["_template_from_string"]
    if not isinstance(original, staticmethod):
        raise TypeError("KernelTemplate._template_from_string is no longer a staticmethod")
    return mock.patch.object(KernelTemplate, "_template_from_string",
                             staticmethod(functools.lru_cache(maxsize=None)(original.__func__)))


def _memo_index_exprs():
    """cpp_template_kernel.parse_expr_with_index_symbols(text) parses `text` with sympy at every
    call; the expression it returns is a pure function of the text and immutable (sympy), so one
    parse per text serves every call. Lists (it recurses by its module name) and expressions go
    through the original, whose recursion then finds the memo."""
    from torch._inductor.codegen import cpp_template_kernel as ctk
    original = ctk.parse_expr_with_index_symbols
    parse = functools.lru_cache(maxsize=None)(original)

    def memo(expr):
        return parse(expr) if type(expr) is str else original(expr)
    return mock.patch.object(ctk, "parse_expr_with_index_symbols", memo)


def _graph_state(gm) -> list:
    """What a fake-tensor propagation of `gm` reads and writes: its nodes, their arguments, which of
    them hold a value, and the shape, stride and dtype of every attribute they fetch."""
    state = []
    for n in gm.graph.nodes:
        state.append((n.name, n.op, str(n.target), repr(n.args), repr(n.kwargs), "val" in n.meta or n.op == "output"))
        if n.op == "get_attr":
            t = getattr(gm, n.target, None)
            if hasattr(t, "stride"):
                state.append((tuple(t.shape), t.stride(), t.dtype, t.device))
    return state


# what freezing_passes may call between its opening propagation and the next one: constant folding
# (it evaluates real tensors; of the fake values it reads only call_function nodes', which aot's trace
# set) and the mixed-dtype marking (it reads the values of mm/addmm/convolution nodes, and, where
# one is float16/bfloat16, of its users, the output node among them: `_values_suffice` checks)
_BEFORE_NEXT_PROP = {"fake_tensor_prop", "range", "constant_fold", "mark_mixed_dtype_allowed_computation_ops"}
# the only syntax allowed between the two calls: statements of calls, names, constants, keywords,
# and a for loop over range(n > 0) (anything else may branch, exit or read a value)
_PLAIN = (ast.Expr, ast.Call, ast.Name, ast.Attribute, ast.Constant, ast.keyword, ast.For)


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _opening_prop_deferrable(freezing_passes) -> bool:
    """Does freezing_passes' first fake_tensor_prop call always reach a second one through calls of
    _BEFORE_NEXT_PROP only (its source parsed: the order of torch 2.13's)? Between them only the
    syntax of _PLAIN: no branch, exit, subscript or expression that could skip the second call."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(freezing_passes)))
    except (OSError, TypeError, SyntaxError):
        return False
    nodes = sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")), key=lambda n: (n.lineno, n.col_offset))
    props = [i for i, n in enumerate(nodes) if isinstance(n, ast.Call) and _call_name(n) == "fake_tensor_prop"]
    if len(props) < 2:
        return False
    for n in nodes[props[0] + 1:props[1]]:
        if not isinstance(n, _PLAIN):
            return False
        if isinstance(n, ast.Call) and _call_name(n) not in _BEFORE_NEXT_PROP:
            return False
        if isinstance(n, ast.For) and not _positive_range(n.iter):
            return False
    return True


def _positive_range(node) -> bool:
    """range(n) of a constant n > 0: a loop that runs."""
    return isinstance(node, ast.Call) and _call_name(node) == "range" and len(node.args) == 1 and \
        isinstance(node.args[0], ast.Constant) and type(node.args[0].value) is int and node.args[0].value > 0


def _values_suffice(gm) -> bool:
    """Can the mixed-dtype marking run on the values aot's trace left (no float16/bfloat16 mm,
    addmm or convolution, whose users it would read), and have they been set?"""
    import torch
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target) in ("aten.mm.default", "aten.addmm.default",
                                                          "aten.convolution.default"):
            val = n.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dtype in (torch.float16, torch.bfloat16):
                return False
    return True


def _no_repeated_fake_prop():
    """freezing_passes calls fake_tensor_prop(gm, ...) at its start and after each constant folding,
    to refresh the nodes' fake values. Where the graph and its attributes are as the previous call
    on the same graph left them, that call would recompute the values they hold: skipped. Its
    opening call (the first on a graph) is left to the next, which always follows it, where what
    runs between needs no value the opening call sets (`_opening_prop_deferrable`, `_values_suffice`).
    Every propagation that runs, freezing's and the one inductor makes after it (compile_fx's
    fake_tensor_prop), is incremental after the first on a graph (models/fake_prop.py)."""
    from torch._inductor import compile_fx
    from torch._inductor.fx_passes import freezing_patterns as fp
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._guards import detect_fake_mode
    records: dict = {}  # graph -> its last propagation's records: the next one is incremental
    original = fake_prop.patched(fp.fake_tensor_prop, records)
    after_freezing = fake_prop.patched(compile_fx.fake_tensor_prop, records)
    defer = _opening_prop_deferrable(fp.freezing_passes)
    last: dict = {}

    def prop(gm, example_inputs, force_allow_non_fake_inputs=False):
        if last.get("gm") is not gm:  # the opening call on this graph
            last.clear()
            last["gm"] = gm
            if defer and _values_suffice(gm):  # the next call runs in full
                return detect_fake_mode(example_inputs) or FakeTensorMode(allow_non_fake_inputs=True)
        state = _graph_state(gm)
        if last.get("state") == state:
            return last["mode"]
        mode = original(gm, example_inputs, force_allow_non_fake_inputs)
        last.update(state=_graph_state(gm), mode=mode)
        return mode
    @contextlib.contextmanager
    def patches():
        with mock.patch.object(fp, "fake_tensor_prop", prop), \
                mock.patch.object(compile_fx, "fake_tensor_prop", after_freezing):
            yield
    return patches()


def _setting(config, name: str, value):
    """`config.name = value` within; where this torch's config lacks the setting, as before."""
    return mock.patch.object(config, name, value) if hasattr(config, name) else contextlib.nullcontext()


def no_stack_traces():
    """Within: torch.fx records no source stack trace per traced node (export captured and
    symbolised one for each; inductor writes them into comments and error messages only)."""
    from torch.fx import config
    return _setting(config, "do_not_emit_stack_traces", True)


def uncached_fake_dispatch():
    """Within: fake tensor modes made here run each op's meta function instead of their dispatch
    cache (torch._dynamo.config.fake_tensor_cache_enabled, read when a mode is made: export makes
    its own). Under export's symbolic shapes a miss adds an entry to the meta function's cost (the
    output's symbolic sizes and strides, rebuilt from the entry to check it) and a hit costs about
    what the meta function would; most of export's dispatches miss. The graph is the same."""
    try:
        from torch._dynamo import config
    except Exception:
        return contextlib.nullcontext()
    return _setting(config, "fake_tensor_cache_enabled", False)


class _NoBar:
    """What torch.fx's Interpreter asks of its (disabled) progress bar, doing nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _no_progress_bars():
    """fx.Interpreter.run makes a tqdm bar, disabled unless torch.fx.config.disable_progress is
    off; where it is on (the default), a bar that does nothing instead."""
    from torch.fx import config, interpreter
    return mock.patch.object(interpreter, "tqdm", _NoBar) if config.disable_progress else contextlib.nullcontext()


@contextlib.contextmanager
def _parallel_objects(interface_dir: Path | None = None):
    """AotCodeCompiler.compile runs `wrapper_builder.build()` then `kernel_builder.build()`, two
    independent g++ -c runs; the wrapper's starts in a thread and the kernels' build (two units at
    once, models/kernel_units.py) joins it. Any other build (the link, the weights' object) joins it
    before it starts."""
    from torch._inductor.cpp_builder import CppBuilder
    original = CppBuilder.__dict__["build"]
    owner = threading.get_ident()
    pending: list = []  # [thread, error box] of the wrapper's build in flight

    def join():
        if pending:
            thread, box = pending.pop()
            thread.join()
            if box:
                raise box[0]

    def build(self):
        if threading.get_ident() != owner:  # another thread's build (warm_headers): as it was
            return original(self)
        target = str(self.get_target_file_path())
        if target.endswith(".wrapper.o") and not pending:
            box: list = []

            def run():
                try:
                    if interface_dir is None:
                        original(self)
                    else:
                        aoti_interface.build_wrapper(self, original, interface_dir)
                except BaseException as e:  # re-raised in the caller's thread by join()
                    box.append(e)
            thread = threading.Thread(target=run, name="aoti-wrapper-build", daemon=True)
            thread.start()
            pending.append((thread, box))
            return None
        if target.endswith(".kernel.o") and pending:
            try:
                kernel_units.build_kernels(self, original)
                return None
            finally:
                join()
        join()
        return original(self)

    CppBuilder.build = build
    try:
        yield
    finally:
        CppBuilder.build = original
        join()
