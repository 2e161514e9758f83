"""The kernels' object file of an AOTInductor build compiled as two translation units at once
(models/compile_speed.py).

Inductor writes the kernels' source as one chunk per kernel, each opening with the include of its
prefix header (`cpp_prefix.h`): a kernel's chunk holds everything it defines (its extern "C"
entry, its GEMM micro-kernels as inline functions of its own name) and calls nothing in another
chunk. So the chunks split into two sources, each the text before the first chunk plus half of
the chunks (in their order, dealt by size), compile alone with the kernels' own command line, and
`ld -r` joins the two objects into the kernels' object file; the link that follows is inductor's
own. Same text, same flags: every function's machine code is the whole build's but the `__LINE__`
constants of its error paths. The shipped target's kernels (Intel Xeon): g++ 8.09 s whole, 3.44
and 4.35 s side by side. Within a unit, GEMM micro-kernels of one text are defined once
(`shared_micro_gemms`): the only change to the text, and not to the arithmetic; with the CLI's two
threads the units took 3.9 / 4.0 s against 4.9 / 5.7 s, the library's logits bitwise equal. Anything unexpected (fewer than two chunks, a command without the source,
a failed compile, no `ld`, one core) and the kernels build whole, as inductor does.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

CHUNK = "#include <torch/csrc/inductor/cpp_prefix.h>\n"
# a GEMM kernel's micro-kernel, as inductor's C++ GEMM template writes it: two inline templates
# named after the kernel (`<kernel>_micro_gemm_kernel`, `<kernel>_micro_gemm`), then its entry
_MICRO_GEMM = re.compile(r"template <[^\n]*>\ninline void (\w+)_micro_gemm_kernel\(")


def halves(source: str) -> tuple[str, str] | None:
    """The source as two units: the text before the first chunk heads both, and the chunks go,
    largest first, to the lighter unit, each unit keeping the source's order. None: under two chunks."""
    head, *chunks = source.split(CHUNK)
    if len(chunks) < 2:
        return None
    sizes, owner = [0, 0], {}
    for i in sorted(range(len(chunks)), key=lambda i: -len(chunks[i])):
        unit = sizes.index(min(sizes))
        owner[i] = unit
        sizes[unit] += len(chunks[i])
    return tuple(head + "".join(CHUNK + c for i, c in enumerate(chunks) if owner[i] == unit) for unit in (0, 1))


def shared_micro_gemms(unit: str) -> str:
    """The unit with each GEMM micro-kernel defined once: a kernel whose micro-kernel definitions
    are a text an earlier kernel of the unit defined (names aside) loses them, and its entry calls
    the earlier kernel's. The shipped target's GEMM kernels all carry one text (two in one unit,
    three in the other); g++ compiled each copy anew (~1 s each). Same code: each call runs the
    same template body, and the build's flags (-ffp-contract=off, no unsafe math) leave its
    arithmetic as written, wherever it is inlined."""
    first: dict[str, str] = {}  # definitions with the name blanked -> the kernel that defines them
    out, pos = [], 0
    for m in _MICRO_GEMM.finditer(unit):
        if m.start() < pos:
            continue
        name = m.group(1)
        entry, end = unit.find('extern "C"', m.end()), unit.find(CHUNK, m.end())
        end = len(unit) if end < 0 else end
        if not 0 <= entry < end:
            continue  # not the layout described: this chunk as it is
        # the kernel's own names in its entry: itself and its micro-kernel only (the BMM template,
        # for one, defines more helpers there: such a chunk stays as it is)
        if set(re.findall(rf"\b{name}\w*", unit[entry:end])) - {name, f"{name}_micro_gemm", f"{name}_micro_gemm_kernel",
                                                                  f"{name}_micro_gemm_row_panels"}:
            continue
        key = unit[m.start():entry].replace(name, "\0")
        if key not in first:
            first[key] = name
            continue
        out += [unit[pos:m.start()], unit[entry:end].replace(f"{name}_micro_gemm", f"{first[key]}_micro_gemm")]
        pos = end
    return "".join(out) + unit[pos:]


def build_kernels(builder, whole) -> bool:
    """CppBuilder.build for a `.kernel.o` target: its two units compiled at once and joined into the
    target (True); `whole(builder)` (inductor's own build) where the split does not apply or fails (False)."""
    from torch._inductor.cpp_builder import run_compile_cmd
    target = str(builder.get_target_file_path())
    source = target[: -len(".o")] + ".cpp"
    try:
        command = builder.get_command_line()
        units = halves(Path(source).read_text()) if (os.cpu_count() or 1) > 1 and source in command else None
    except Exception:  # no such file here, or another torch's layout
        units = None
    if units is None:
        whole(builder)
        return False
    paths = [(f"{source[:-len('.cpp')]}.unit{i}.cpp", f"{target[:-len('.o')]}.unit{i}.o") for i in (0, 1)]
    errors: list = []

    def compile_unit(src: str, obj: str) -> None:
        try:
            run_compile_cmd(command.replace(source, src).replace(target, obj), cwd=str(Path(target).parent))
        except BaseException as e:  # re-raised below, in the caller's thread
            errors.append(e)
    try:
        for (src, _), text in zip(paths, units):
            Path(src).write_text(shared_micro_gemms(text))
        thread = threading.Thread(target=compile_unit, args=paths[1], name="aoti-kernel-unit", daemon=True)
        thread.start()
        compile_unit(*paths[0])
        thread.join()
        if errors:
            raise errors[0]
        subprocess.run(["ld", "-r", "-o", target, paths[0][1], paths[1][1]], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return True
    except Exception:
        whole(builder)
        return False
    finally:
        for src, obj in paths:
            Path(src).unlink(missing_ok=True)
            Path(obj).unlink(missing_ok=True)
