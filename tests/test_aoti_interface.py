"""models/aoti_interface.py: a wrapper compiled as two units (the model's code, and the runtime
interface compiled once and cached) is the program inductor's whole compile makes. Checked on a
small source laid out as inductor lays out a wrapper (include lines, the interface's text, the
model's code, with an inline function and a function-local static that both units use, and a CRTP
model base whose members the interface object holds), against the same source compiled whole;
where the model's code does not compile alone, or needs a base member the interface object lacks,
inductor's own build runs. The real libraries built this way are checked against a float64 oracle and the eager
step in tests/test_compiled_step.py, whose fixture also asserts they were built split."""
import subprocess

import pytest
from cpp_builder import Builder, whole

from models import aoti_interface

HEADER = """
inline int counter() { static int calls = 0; return ++calls; }  // one static, whichever unit calls
namespace torch::aot_inductor {  // the model base as model_base.h / model.h lay it out (CRTP)
template <typename Model> class AOTInductorModelBase {
 public:
  __attribute__((noinline)) int offset(int x) { return static_cast<Model*>(this)->scale() * x + counter(); }
};
class AOTInductorModel : public AOTInductorModelBase<AOTInductorModel> {
 public:
  int scale();
};
}
"""
INTERFACE = """
#define SCALE 3
int model_value(int x);
extern "C" int interface_entry(int x) { int v = model_value(x); return SCALE * v + counter(); }
"""
MODEL = """
int torch::aot_inductor::AOTInductorModel::scale() { return 10; }
int model_value(int x) {
  torch::aot_inductor::AOTInductorModel m;
  int mine = 100 * counter(), base = m.offset(x);  // in this order
  return x * x + mine + base;
}
"""
MODEL_NEEDING_THE_INTERFACE = """
int model_value(int x) { return SCALE * x; }
"""


def run(obj, x):
    """interface_entry(x) three times, in a program of its own (a function-local static is one
    object per process, whichever library holds it)."""
    main = obj.with_name("main.cpp")
    main.write_text('#include <cstdio>\n#include <cstdlib>\nextern "C" int interface_entry(int x);\n'
                    'int main(int, char** v) { for (int i = 0; i < 3; i++) printf("%d ", interface_entry(atoi(v[1]))); }\n')
    exe = obj.with_suffix(".exe")
    subprocess.run(["g++", "-o", str(exe), str(main), str(obj)], check=True)
    return [int(v) for v in subprocess.run([str(exe), str(x)], check=True, capture_output=True, text=True).stdout.split()]


def wrapper(directory, name, model):
    b = Builder(directory, name, "wrapper", f"-I{directory}")
    b.source.write_text(f'\n#include "helper.h"\n{INTERFACE}{model}')
    return b


@pytest.fixture
def sources(tmp_path, monkeypatch):
    (tmp_path / "helper.h").write_text(HEADER)
    monkeypatch.setattr(aoti_interface, "interface_text", lambda: INTERFACE)
    whole.calls = 0
    return tmp_path


def test_split_build_is_the_whole_build(sources):
    objects = sources / "objects"
    split = wrapper(sources, "a", MODEL)
    assert aoti_interface.build_wrapper(split, whole, objects)
    assert whole.calls == 0 and len(list(objects.glob("interface-*.o"))) == 1
    reference = wrapper(sources, "ref", MODEL)
    whole(reference)
    # the interface's call of counter(), the model's and the base's share one static in each program
    assert run(split.target, 5) == run(reference.target, 5) == [3 * (25 + 100 + 50 + 2) + 3, 3 * (25 + 400 + 50 + 5) + 6,
                                                                 3 * (25 + 700 + 50 + 8) + 9]
    # the model's unit left the base's member to the interface object, which holds it
    model_unit = split.target.with_name("model-unit.o")
    _, unit = aoti_interface.split(split.source.read_text(), INTERFACE)
    model_unit.with_suffix(".cpp").write_text(unit)
    subprocess.run(["g++", "-O1", "-fPIC", f"-I{sources}", "-c", "-o", str(model_unit), str(model_unit.with_suffix(".cpp"))], check=True)
    assert aoti_interface._undefined_base(str(model_unit)) and not aoti_interface._undefined_base(str(split.target))


def test_a_model_unit_that_needs_a_base_member_the_interface_lacks_builds_whole(sources, monkeypatch):
    monkeypatch.setattr(aoti_interface, "INSTANTIATE", "")  # an interface object without the model base
    b = wrapper(sources, "x", MODEL)
    assert not aoti_interface.build_wrapper(b, whole, sources / "objects")
    assert whole.calls == 1 and run(b.target, 5)[0] == 3 * (25 + 100 + 50 + 2) + 3


def test_the_interface_object_is_compiled_once(sources, monkeypatch):
    objects = sources / "objects"
    assert aoti_interface.build_wrapper(wrapper(sources, "a", MODEL), whole, objects)
    compiled = []
    monkeypatch.setattr(aoti_interface, "_compile", lambda *a: compiled.append(a) or pytest.fail("recompiled"))
    second = wrapper(sources, "b", MODEL.replace("100", "7"))
    assert aoti_interface.build_wrapper(second, whole, objects)
    assert run(second.target, 2)[0] == 3 * (4 + 7 + 20 + 2) + 3 and compiled == []


def test_a_model_unit_that_needs_the_interface_builds_whole(sources):
    b = wrapper(sources, "m", MODEL_NEEDING_THE_INTERFACE)
    assert not aoti_interface.build_wrapper(b, whole, sources / "objects")
    assert whole.calls == 1 and run(b.target, 2)[0] == 3 * 6 + 1


def test_a_source_not_laid_out_so_builds_whole(sources):
    b = Builder(sources, "n", "wrapper", f"-I{sources}")
    b.source.write_text(f'#include "helper.h"\nint x = 1;\n{INTERFACE}{MODEL}')  # code before the interface
    assert not aoti_interface.build_wrapper(b, whole, sources / "objects")
    assert whole.calls == 1 and run(b.target, 1)[0] == 3 * (1 + 100 + 10 + 2) + 3


def test_split_reads_include_lines_the_interface_and_the_rest():
    head = "\n#include <a.h>\n#include <b.h>\n"
    assert aoti_interface.split(head + INTERFACE + MODEL, INTERFACE) == (
        head + INTERFACE + "\n" + aoti_interface.INSTANTIATE, head + aoti_interface.EXTERN + MODEL)
    assert aoti_interface.split(head + MODEL, INTERFACE) is None  # no interface
    assert aoti_interface.split(head + INTERFACE + INTERFACE, INTERFACE) is None  # twice
    assert aoti_interface.split("int y;\n" + INTERFACE + MODEL, INTERFACE) is None  # code before it


def test_the_object_is_named_by_text_command_torch_and_compiler(monkeypatch, tmp_path):
    import torch
    from torch._inductor import cpp_builder
    args = ("unit", "g++ s.cpp -c -o t.o", "s.cpp", "t.o", tmp_path)
    base = aoti_interface.object_path(*args)
    assert aoti_interface.object_path("unit", "g++ u.cpp -c -o v.o", "u.cpp", "v.o", tmp_path) == base  # paths aside
    assert aoti_interface.object_path("other unit", *args[1:]) != base
    assert aoti_interface.object_path("unit", "g++ s.cpp -O2 -c -o t.o", "s.cpp", "t.o", tmp_path) != base
    monkeypatch.setattr(torch.version, "git_version", "another build")
    assert aoti_interface.object_path(*args) != base
    monkeypatch.undo()
    monkeypatch.setattr(cpp_builder, "get_compiler_version_info", lambda compiler: "another g++")
    assert aoti_interface.object_path(*args) != base
