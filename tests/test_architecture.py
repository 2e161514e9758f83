"""The layering rules of docs/DESIGN.md 1, checked on the source with `ast` (every import counts,
module-level or inside a function, since a lazy import is still a dependency):

- no import cycle among the product's modules (decoding/, models/, kernels/);
- the product never imports bench/ (benchmarks sit on top of it, not below);
- decoding/strategies/ import nothing from models/ but models.protocol;
- decoding/ never probes a model or cache: no isinstance against a model or cache class, no
  getattr/hasattr on a model, no `inspect`, no class-name test (`type(x).__name__ == ...`), no
  reading of HF cache internals (`.layers`, `get_seq_length()`, ...): what a model can do is
  declared by models.protocol, and the HF adapter (models/hf_adapter.py) answers for HF's objects.

`python -m pytest tests/test_architecture.py -q` is the command behind the "zero import cycles" goal.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("decoding", "models", "kernels")


def product_modules() -> dict[str, Path]:
    """module name -> file, for every .py file of the product packages."""
    out = {}
    for pkg in PRODUCT:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = product_modules()


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _known(name: str, modules) -> str | None:
    """The longest prefix of a dotted name that is a module of `modules`."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str, path: Path, modules=MODULES) -> set[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in the file; a name imported
    from a package counts as its submodule when it is one."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(name, path).split(".")
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            known = _known(t, modules)
            if known is not None and known != name:
                out.add((known, node.lineno))
            elif known is None and t.split(".")[0] == "bench":
                out.add((t, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    return {name: {t for t, _ in imports(name, path)} for name, path in MODULES.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_the_product():
    found = cycles(graph())
    assert not found, f"import cycles among product modules: {found}"


def test_the_product_does_not_import_bench():
    hits = [f"{MODULES[n].relative_to(ROOT)}:{line} imports {t}" for n in MODULES
            for t, line in imports(n, MODULES[n]) if t.split(".")[0] == "bench"]
    assert not hits, hits


def test_strategies_see_models_only_through_the_protocol():
    hits = [f"{MODULES[n].relative_to(ROOT)}:{line} imports {t}"
            for n in MODULES if n.startswith("decoding.strategies")
            for t, line in imports(n, MODULES[n]) if t.startswith("models") and t != "models.protocol"]
    assert not hits, hits


# -- no probing of models in decoding/ -----------------------------------------------------------------

def model_classes() -> set[str]:
    """Classes that a model or cache is: the protocols, every class defined in models/ that has a
    forward or a truncate, and the framework bases a probe would test for."""
    names = {"PreTrainedModel", "Module", "DecoderModel", "Cache"}
    for mod, path in MODULES.items():
        if not mod.startswith("models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                if methods & {"forward", "truncate", "new_cache"}:
                    names.add(node.name)
    return names


MODEL_NAMES = {"model", "target", "draft", "assistant", "assistant_model", "m", "cache", "hf", "decoder"}
# what HF's cache objects keep inside (5.x `.layers`, 4.x `.key_cache`): the HF adapter reads them
HF_CACHE_ATTRS = {"layers", "key_cache", "value_cache", "get_seq_length", "get_max_cache_shape"}
# the boundary with Hugging Face objects: the drop-in wraps HF's own generate (its signature, the HF
# model's attributes, the cache it hands back)
BOUNDARY = {"decoding.hf"}


def _root(node) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _class_names(node) -> set[str]:
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    out = set()
    for e in elts:
        if isinstance(e, ast.Attribute):
            out.add(e.attr)
        elif isinstance(e, ast.Name):
            out.add(e.id)
    return out


def _type_name(node) -> bool:
    """`type(x).__name__`"""
    return (isinstance(node, ast.Attribute) and node.attr == "__name__" and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "type")


def probes(path: Path, classes: set[str]) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if "inspect" in names:
                out.append(f"line {node.lineno}: imports inspect")
        if isinstance(node, ast.Compare) and any(_type_name(n) for n in [node.left, *node.comparators]):
            out.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Attribute) and node.attr in HF_CACHE_ATTRS:
            out.append(f"line {node.lineno}: reads .{node.attr} (an HF cache internal)")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or not node.args:
            continue
        fn = node.func.id
        if fn == "isinstance" and len(node.args) == 2 and _class_names(node.args[1]) & classes:
            out.append(f"line {node.lineno}: isinstance(..., {ast.unparse(node.args[1])})")
        if fn in ("getattr", "hasattr") and _root(node.args[0]) in MODEL_NAMES:
            out.append(f"line {node.lineno}: {ast.unparse(node)}")
    return out


def test_decoding_does_not_probe_models():
    classes = model_classes()
    assert {"LlamaDecoder", "YOCODecoder", "StaticCache", "HFModel"} <= classes  # the scan sees them
    hits = {str(p.relative_to(ROOT)): h for n, p in MODULES.items()
            if n.startswith("decoding") and n not in BOUNDARY and (h := probes(p, classes))}
    assert not hits, hits


def test_the_checks_catch_what_they_forbid(tmp_path):
    """The scanners are not vacuous: a planted cycle, a models import and probes are found."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    bad = tmp_path / "bad.py"
    bad.write_text("import inspect\nfrom models.heads import load_heads\n"
                   "def f(model, cache, past):\n"
                   "    from .. import api\n"
                   "    if isinstance(cache, StaticCache) or getattr(model.config, 'hf', None):\n"
                   "        return inspect.signature(model.forward)\n"
                   "    if type(past).__name__ != 'DynamicCache' or past.get_seq_length() > len(past.layers):\n"
                   "        return f'{type(past).__name__} is fine in a message'\n")
    mods = dict(MODULES, **{"decoding.strategies.bad": bad})
    assert ("models.heads", 2) in imports("decoding.strategies.bad", bad, mods)
    assert ("decoding.api", 4) in imports("decoding.strategies.bad", bad, mods)
    found = probes(bad, model_classes())
    assert len(found) == 6, found
