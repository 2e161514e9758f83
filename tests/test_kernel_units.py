"""models/kernel_units.py: the kernels' source compiled as two units gives the program the whole
source gives; a source that does not split, or a unit that does not compile alone, builds whole."""
import subprocess

import pytest
from cpp_builder import Builder, whole

from models import kernel_units

CHUNK = kernel_units.CHUNK
HEAD = "// kernels\n"
# three kernels as inductor lays them out: each chunk opens with the prefix include and holds its own
# inline helpers; the prefix header's static is one object per program whichever unit includes it
KERNELS = [
    'inline int k0_helper(int x) { return 3 * x + prefix_calls(); }\nextern "C" int k0(int x) { return k0_helper(x) + 1; }\n',
    'extern "C" int k1(int x) { return x * x - prefix_calls(); }\n' + "// padding\n" * 40,
    'template <int N> inline int k2_pow(int x) { int r = 1; for (int i = 0; i < N; ++i) r *= x; return r; }\n'
    'extern "C" int k2(int x) { return k2_pow<3>(x) + prefix_calls(); }\n',
]
MAIN = ('#include <cstdio>\nextern "C" int k0(int); extern "C" int k1(int); extern "C" int k2(int);\n'
        'int main() { for (int x = 1; x < 4; ++x) { int a = k0(x), b = k1(x), c = k2(x); printf("%d %d %d ", a, b, c); } }\n')


def run(obj):
    main = obj.with_name("main.cpp")
    main.write_text(MAIN)
    exe = obj.with_suffix(".exe")
    subprocess.run(["g++", "-o", str(exe), str(main), str(obj)], check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def sources(tmp_path, monkeypatch):
    prefix = tmp_path / "include" / "torch" / "csrc" / "inductor" / "cpp_prefix.h"
    prefix.parent.mkdir(parents=True)
    prefix.write_text("#pragma once\ninline int prefix_calls() { static int n = 0; return ++n; }\n")
    monkeypatch.setattr(kernel_units.os, "cpu_count", lambda: 2)
    whole.calls = 0
    return tmp_path


def kernels(directory, name, chunks):
    b = Builder(directory, name, "kernel", f"-I{directory / 'include'}")
    b.source.write_text(HEAD + "".join(CHUNK + c for c in chunks))
    return b


def test_halves_keep_every_chunk_once_in_order_under_the_head():
    units = kernel_units.halves(HEAD + "".join(CHUNK + c for c in KERNELS))
    assert all(u.startswith(HEAD + CHUNK) for u in units)
    got = [[c for c in u[len(HEAD):].split(CHUNK) if c] for u in units]
    assert sorted(got[0] + got[1]) == sorted(KERNELS)
    assert got[0] == [c for c in KERNELS if c in got[0]] and got[1] == [c for c in KERNELS if c in got[1]]
    assert got[0] == [KERNELS[1]]  # the largest chunk alone, the two small ones together
    assert kernel_units.halves(HEAD + CHUNK + KERNELS[0]) is None


def test_two_units_build_what_the_whole_source_builds(sources):
    split = kernels(sources, "a", KERNELS)
    assert kernel_units.build_kernels(split, whole)
    assert whole.calls == 0 and not list(sources.glob("*.unit*"))
    reference = kernels(sources, "ref", KERNELS)
    whole(reference)
    # one prefix_calls() counter for the program, counted by hand: k0 = 3x + n + 1, k1 = x^2 - n, k2 = x^3 + n
    assert run(split.target) == run(reference.target) == "5 -1 4 11 -1 14 17 1 36 "


def test_a_unit_that_does_not_compile_alone_builds_whole(sources):
    # the largest chunk lands alone in one unit, and uses a macro of a chunk in the other
    defines = '#define K_SCALE 7\nextern "C" int k0(int x) { return K_SCALE * x; }\n'
    uses = 'extern "C" int k1(int x) { return K_SCALE + x; }\n' + "// padding\n" * 40
    b = kernels(sources, "x", [defines, uses, KERNELS[2]])
    assert not kernel_units.build_kernels(b, whole)
    assert whole.calls == 1 and b.target.exists()


def gemm(name: str, factor: int, padding: int = 0) -> str:
    """A GEMM kernel's chunk as inductor's template lays it out: two inline templates named after
    the kernel (its micro-kernel), then its entry."""
    return (f"template <int N, bool accum>\ninline void {name}_micro_gemm_kernel(int* c, int x) "
            f"{{ *c = accum ? *c + {factor} * x * N : {factor} * x * N; }}\n"
            f"template <bool accum>\ninline void {name}_micro_gemm(int* c, int x) {{ {name}_micro_gemm_kernel<2, accum>(c, x); }}\n"
            f'extern "C" int {name}(int x) {{ int c = 0; {name}_micro_gemm<false>(&c, x); '
            f"{name}_micro_gemm<true>(&c, x); return c; }}\n" + "// padding\n" * padding)


# k0 and k2 carry one micro-kernel text (names aside), k1 another; k1, the largest, is a unit alone
GEMMS = [gemm("k0", 3), gemm("k1", 5, padding=40), gemm("k2", 3)]


def test_a_unit_defines_each_micro_kernel_text_once():
    shared = kernel_units.shared_micro_gemms(HEAD + "".join(CHUNK + c for c in GEMMS))
    assert shared.count("_micro_gemm_kernel(int* c") == 2 and "k2_micro_gemm" not in shared
    assert 'extern "C" int k2(int x) { int c = 0; k0_micro_gemm<false>(&c, x); k0_micro_gemm<true>(&c, x);' in shared
    alone = HEAD + CHUNK + GEMMS[1]
    assert kernel_units.shared_micro_gemms(alone) == alone


def test_units_with_shared_micro_kernels_build_what_the_whole_source_builds(sources):
    split = kernels(sources, "g", GEMMS)
    assert kernel_units.build_kernels(split, whole) and whole.calls == 0
    reference = kernels(sources, "gref", GEMMS)
    whole(reference)
    # each kernel returns 2 * factor * x * 2 (the kernel's N = 2, once stored, once accumulated)
    assert run(split.target) == run(reference.target) == "12 20 12 24 40 24 36 60 36 "


def test_a_kernel_with_helpers_of_its_own_keeps_its_micro_kernel():
    """A template that defines more than the micro-kernel before the entry (as inductor's BMM
    template does): its chunk stays as it is, else its entry would call a helper removed with it."""
    def with_helper(name):
        chunk = gemm(name, 3).replace('extern "C"', f"inline int {name}_single_thread_mm(int x) {{ return x; }}\n"
                                      'extern "C"')
        return chunk.replace("return c; }", f"return c + {name}_single_thread_mm(0); }}")
    source = HEAD + CHUNK + with_helper("k0") + CHUNK + with_helper("k2")
    assert source.count("_single_thread_mm(0)") == 2
    assert kernel_units.shared_micro_gemms(source) == source
    assert kernel_units.shared_micro_gemms(HEAD + CHUNK + GEMMS[0] + CHUNK + GEMMS[2]).count("_micro_gemm_kernel(int* c") == 1
