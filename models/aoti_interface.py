"""The AOTInductor runtime interface compiled once, not in every library (models/compile_speed.py).

Every AOTInductor wrapper source is the device's include line, then inductor's
`codegen/aoti_runtime/interface.cpp` verbatim (the C entry points the loader calls: ~40 functions
over the model container, the same text in every library), then the model's own code (its kernels'
declarations, constructor, input checks, run_impl). Its g++ is the last step of a build; the
interface is ~1/3 of it (shipped target, AMD EPYC, -Og: the whole source 5.7-6.9 s, without the
interface 4.3-4.5 s). Here the interface is compiled on its own, with the wrapper's own command
line, into an object cached on disk under a hash of its text and that command; each wrapper then
compiles without it, and `ld -r` joins the two objects into the wrapper's object file, so the link
that follows is inductor's own. Same text, same flags: the same code, in two translation units (the
header's inline functions and templates are merged by the linker as usual). The model's base class
template, the same code in every library too, is instantiated explicitly in the interface object and
declared `extern template` in the model's unit, which then leaves its members to that object.
Anything unexpected (a source not laid out so, a failed compile, no `ld`, a base member the joined
object still lacks) and the wrapper builds whole, as inductor does.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

_lock = threading.Lock()  # one build of a given interface object at a time in this process
# The model's base class (AOTInductorModelBase<AOTInductorModel>: constants, weights, the device string's
# std::regex) is the same code in every library; it is instantiated once in the interface object and
# declared extern in each model part (the shipped target's model part: g++ 5.5-5.7 s -> 4.0-4.2 s)
_BASE = "namespace torch::aot_inductor {{ {}template class AOTInductorModelBase<AOTInductorModel>; }}\n"
INSTANTIATE, EXTERN = _BASE.format(""), _BASE.format("extern ")


def interface_text() -> str:
    from torch._inductor.codegen import cpp_wrapper_cpu
    return (Path(cpp_wrapper_cpu.__file__).parent / "aoti_runtime" / "interface.cpp").read_text()


def interface_unit(head: str, interface: str) -> str:
    """The interface object's source: the wrapper's include lines, the interface, the model base."""
    return head + interface + "\n" + INSTANTIATE


def split(source: str, interface: str) -> tuple[str, str] | None:
    """(interface unit, model unit) of a wrapper source: both start with the source's include lines;
    None where the source is not include lines + the interface + the rest."""
    at = source.find(interface)
    if at < 0 or source.count(interface) != 1:
        return None
    head = source[:at]
    if any(line.strip() and not line.startswith("#include ") for line in head.splitlines()):
        return None
    return interface_unit(head, interface), head + EXTERN + source[at + len(interface):]


def _undefined_base(obj: str) -> bool:
    """Does `obj` still need a member of the model base from elsewhere (a member the interface
    object lacks would load as an undefined symbol, not fail the link)?"""
    out = subprocess.run(["nm", "-u", obj], check=True, stdout=subprocess.PIPE, text=True).stdout
    return "AOTInductorModelBase" in out


def _normal(command: str, source: str, target: str) -> str:
    return command.replace(source, "<source>").replace(target, "<target>")


def object_path(unit: str, command: str, source: str, target: str, directory: Path) -> Path:
    """Where the interface unit compiled by `command` (a compile of `source` into `target`) lives:
    named by the text, the command, torch's build (the headers the text includes) and the compiler."""
    import torch
    from torch._inductor.cpp_builder import get_compiler_version_info
    h = hashlib.sha256(unit.encode())
    h.update(_normal(command, source, target).encode())
    h.update(f"{torch.__version__} {torch.version.git_version} {get_compiler_version_info(command.split()[0])}".encode())
    return directory / f"interface-{h.hexdigest()[:24]}.o"


def _compile(command: str, cwd: str) -> None:
    from torch._inductor.cpp_builder import run_compile_cmd
    run_compile_cmd(command, cwd=cwd)


def ensure_object(unit: str, command: str, source: str, target: str, directory: Path) -> Path:
    """The interface object for this command, compiled now if it is not on disk."""
    path = object_path(unit, command, source, target, directory)
    with _lock:
        if path.exists():
            return path
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}")
        cpp, obj = tmp.with_suffix(".cpp"), tmp.with_suffix(".o")
        cpp.write_text(unit)
        try:
            _compile(_normal(command, source, target).replace("<source>", str(cpp)).replace("<target>", str(obj)),
                     str(directory))
            os.replace(obj, path)  # whole or absent: another process may be reading it
        finally:
            cpp.unlink(missing_ok=True)
            obj.unlink(missing_ok=True)
        return path


def build_wrapper(builder, whole, directory: Path) -> bool:
    """CppBuilder.build for a `.wrapper.o` target: the model's code compiled while the interface
    object is found or compiled, then the two joined into the target (True); `whole(builder)`
    (inductor's own build) where the split does not apply or fails (False)."""
    from torch._inductor.cpp_builder import run_compile_cmd
    target = str(builder.get_target_file_path())
    source = target[: -len(".o")] + ".cpp"
    command = builder.get_command_line()
    try:
        parts = split(Path(source).read_text(), interface_text()) if source in command else None
    except Exception:  # no such file here, or another torch's layout
        parts = None
    if parts is None:
        whole(builder)
        return False
    unit, model = parts
    model_source, model_target = source[: -len(".cpp")] + ".model.cpp", target[: -len(".o")] + ".model.o"
    Path(model_source).write_text(model)
    found: list = []

    def interface():
        try:
            found.append(ensure_object(unit, command, source, target, directory))
        except Exception as e:
            found.append(e)
    thread = threading.Thread(target=interface, name="aoti-interface", daemon=True)
    thread.start()
    try:
        run_compile_cmd(command.replace(source, model_source).replace(target, model_target),
                        cwd=str(Path(target).parent))
        thread.join()
        if not isinstance(found[0], Path):
            raise found[0]
        subprocess.run(["ld", "-r", "-o", target, model_target, str(found[0])], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if _undefined_base(target):
            raise RuntimeError("the interface object lacks a member of the model base")
        return True
    except Exception:
        thread.join()
        whole(builder)
        return False
    finally:
        Path(model_target).unlink(missing_ok=True)


def warm(build_args: dict, header: str, directory: Path) -> None:
    """Compile the interface object a build with these AotCodeCompiler arguments and wrapper
    precompiled header would ask for (the wrapper's options: compile only, min_optimize)."""
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    from torch._inductor.cpp_builder import CppBuilder, CppTorchDeviceOptions
    options = CppTorchDeviceOptions(compile_only=True, min_optimize=True, **build_args)
    options.precompiled_header = header
    source = str(directory / "predicted.wrapper.cpp")
    builder = CppBuilder(name="predicted.wrapper", sources=source, output_dir=str(directory), BuildOption=options)
    head = "\n" + CppWrapperCpu.get_device_include_path_aot("cpu") + "\n"
    ensure_object(interface_unit(head, interface_text()), builder.get_command_line(), source,
                  str(builder.get_target_file_path()), directory)
