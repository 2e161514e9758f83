"""`python -m bench NAME [ARGS...]` (also `python -m decoding bench ...`): run one benchmark script.

Scripts are discovered, not listed: every module in bench/ but `common` is one, so a new script
(speculative, beam, ...) shows up here once its file lands. `kernel` is short for `kernel_bench`.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"common", "__main__"}


def scripts() -> dict[str, str]:
    """name -> the first line of its docstring (read without importing: torch loads slowly)."""
    out = {}
    for info in sorted(pkgutil.iter_modules([str(HERE)]), key=lambda i: i.name):
        if info.name in SKIP or info.name.startswith("_") or info.ispkg:
            continue
        try:
            doc = ast.get_docstring(ast.parse((HERE / f"{info.name}.py").read_text())) or ""
        except (OSError, SyntaxError):
            doc = ""
        out[info.name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def resolve(name: str) -> str | None:
    known = scripts()
    for candidate in (name, f"{name}_bench", name.removesuffix("_bench")):
        if candidate in known:
            return candidate
    return None


def usage() -> str:
    docs = scripts()
    shown = {name: name + (f" ({name.removesuffix('_bench')})" if name.endswith("_bench") else "") for name in docs}
    width = max(map(len, shown.values()), default=0)
    lines = ["usage: python -m decoding bench NAME [ARGS...]   (NAME --help for its options)", "", "benchmarks:"]
    lines += [f"  {shown[name]:<{width}}  {doc}" for name, doc in docs.items()]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name = resolve(argv[0])
    if name is None:
        print(f"error: no benchmark named {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    if callable(getattr(module, "main", None)):
        sys.argv = [f"bench {name}", *argv[1:]]  # argparse names the script in its messages
        result = module.main(argv[1:])
        return result if isinstance(result, int) else 0
    sys.argv = [f"bench {name}", *argv[1:]]  # a script with only an `if __name__ == "__main__"` block
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
