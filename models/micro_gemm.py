"""Build-time settings of inductor's fp32 C++ GEMM micro-kernels, the frozen compiled CPU step's
matmuls (models/compiled_cpu.py): which register blocking they use, and two edits of the kernel's
K loop that change its speed, not its arithmetic. Context managers around one build."""
from __future__ import annotations

from contextlib import contextmanager

import torch

# Edits of inductor's fp32 micro-kernel template (CppMicroGemmFP32Vec.TEMPLATE_KERNEL): (text, replacement).
# 1. Its K loop over an array of accumulators with the first iteration peeled off: with no zero-trip
#    path around the loop, GCC keeps the array in registers instead of also storing every accumulator
#    to the stack on every k.
# 2. A prefetch of the weights 4 KiB ahead of the load (prepacked weights are one contiguous panel per
#    column block, the next panel right after it): at 8 rows the loop does 16 FMAs per 128-byte row of
#    weights, and the hardware prefetcher alone left the loads waiting on memory.
_EDITS = (
    ("    for (int k = 0; k < K; ++k) {\n"
     "        c10::ForcedUnroll<ROWS * COLS>{}(compute, k);\n"
     "    }",
     "    if (K > 0) {\n"
     "        c10::ForcedUnroll<ROWS * COLS>{}(compute, 0);\n"
     "        for (int k = 1; k < K; ++k) {\n"
     "            c10::ForcedUnroll<ROWS * COLS>{}(compute, k);\n"
     "        }\n"
     "    }"),
    ("            vb[col] = Vectorized::loadu(B + k * ldb + col * VLEN);\n",
     "            vb[col] = Vectorized::loadu(B + k * ldb + col * VLEN);\n"
     "#if defined(__GNUC__) || defined(__clang__)\n"
     "            __builtin_prefetch(B + k * ldb + col * VLEN + 1024);\n"
     "#endif\n"),
)


def _micro_gemm_module():
    import torch._inductor.compile_fx  # noqa: F401  (cpp_micro_gemm imports in this order only)
    from torch._inductor.codegen import cpp_micro_gemm
    return cpp_micro_gemm


@contextmanager
def streamlined_k_loop():
    """For one build: inductor's fp32 micro-kernel with the edits of _EDITS, each where this torch's
    template has its text exactly once (else that edit is skipped). The same FMAs in the same order:
    the same bits.

    Why: as inductor writes the loop, GCC 12 stores every accumulator to the stack on every k (16
    extra 64-byte stores per k in AVX-512's 8 x 32 kernel, 8 in AVX2's 4 x 16; its 8 x 8 had none),
    and at 8 rows the weight loads outran the hardware prefetcher. Measured (Xeon, AVX-512, 1 thread,
    the kernel alone over 32 MB of weights): 8 rows 2.1-2.6 ms -> 1.3-1.6 ms, 1 row 1.35-1.49 -> 1.21-1.35 ms."""
    cls = _micro_gemm_module().CppMicroGemmFP32Vec
    saved = cls.TEMPLATE_KERNEL
    text = saved
    for old, new in _EDITS:
        if text.count(old) == 1:
            text = text.replace(old, new)
    cls.TEMPLATE_KERNEL = text
    try:
        yield
    finally:
        cls.TEMPLATE_KERNEL = saved


@contextmanager
def register_blocking(blocking: list[int] | None):
    """For one build: inductor's fp32 micro-kernels for this CPU's vector ISA limited to the register
    blocking (block_m, block_n) (no limit for None). Fails the build where this torch has no such kernel."""
    if not blocking:
        yield
        return
    mg = _micro_gemm_module()
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    isa, want = type(pick_vec_isa()), tuple(blocking)

    def fp32(c) -> bool:  # an fp32 kernel of this ISA
        return c.input_dtype == c.output_dtype == torch.float32 and issubclass(isa, c.vec_isa_cls)
    saved = {cls: list(configs) for cls, configs in mg.micro_gemm_configs.items()}
    kept = {cls: [c for c in configs if not fp32(c) or tuple(c.register_blocking[:2]) == want]
            for cls, configs in saved.items()}
    if not any(fp32(c) for configs in kept.values() for c in configs):
        raise RuntimeError(f"this torch has no {want[0]}x{want[1]} fp32 micro-kernel for {isa.__name__}")
    mg.micro_gemm_configs.update(kept)
    try:
        yield
    finally:
        mg.micro_gemm_configs.update(saved)
