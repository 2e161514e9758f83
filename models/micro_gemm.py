"""Build-time settings of inductor's fp32 C++ GEMM micro-kernels, the frozen compiled CPU step's
matmuls (models/compiled_cpu.py): which register blocking they use, two edits of the kernel's K
loop, and a kernel for blocks of a few rows that reads several weight panels at once (row_panels).
Each changes speed, not arithmetic. Context managers around one build."""
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


# -- a few rows against several weight panels at once -----------------------------------------------
# A decode step of one sequence multiplies one row by each weight (a 5-token verify: 5 rows): the
# template calls its micro-kernel once per packed panel ([K, block_n], one after another in memory),
# so the weights stream from DRAM as one sequential read, which one core's prefetchers keep too few
# reads in flight for. Several panels at once are several streams. AMD EPYC (AVX2), 1 thread: a C
# loop over the 125M config's packed weights took 24.5-26.5 ms a panel at a time, 18.1-19.3 ms four
# at a time (two: 19.9-21.9, eight: 19.6-20.5); in the library the shipped target's decode step went
# 2.17 -> 1.55 ms and the 125M config's 33.8 -> 23.5 ms (medians, the two libraries taking turns),
# logits bitwise equal. Up to ROW_PANELS panels, as many as fit the vector REGISTERS: one row's
# accumulators with 4 to spare; more rows' accumulators, a weight vector per panel column and the
# row's broadcast value.
# The shipped target's steps, same machine, over the micro-kernel's (medians, taking turns): 1 row
# 1.37-1.58x (4 panels), 2 rows 1.13-1.33x (2 panels), a 5-token verify 1.07-1.09x (the AVX2 wide
# library, 8-column panels, 2 at a time). More rows than one prefetch, at each k, the next group's
# panels (read after this group's K loop): twice the streams in flight. Over prefetching each panel
# 4 KiB ahead (as the micro-kernel does) a 5-token verify 1.13x, 6 rows 1.15x, 2 rows 1.00-1.02x;
# with no prefetch at all the 5-token verify ran 0.84-0.92x the micro-kernel.
ROW_PANELS = 4
REGISTERS = {256: 16, 512: 32}  # AVX2's and AVX-512's vector registers, by vector width in bits

# defined after the micro-kernel's entry, for an fp32 micro-kernel that takes it (`row_panels(rows)`):
# each output's sum is the micro-kernel's (from zero or C, k in order, one fmadd per k and vector)
_ROW_PANELS_KERNEL = r"""
{%- if template.row_panels is defined and template.row_panels(1) %}

template <int64_t ROWS, int64_t PANELS>
inline void {{kernel_name}}_row_panels(
    bool first,
    const float* {{restrict_keyword}} A,
    const float* {{restrict_keyword}} B,
    float* {{restrict_keyword}} C,
    int64_t K,
    int64_t lda,
    int64_t ldc,
    int64_t panel_stride
) {
    using Vectorized = at::vec::Vectorized<float>;
    constexpr auto VLEN = Vectorized::size();
    constexpr auto COLS = {{block_n}} / VLEN;
    constexpr auto PER_ROW = PANELS * COLS;
    Vectorized va;
    at::vec::VectorizedN<float, PER_ROW> vb;
    at::vec::VectorizedN<float, ROWS * PER_ROW> vc;
    auto loadc = [&](auto i) {  // a row's panels lie side by side in C: vector j at j * VLEN
        constexpr int64_t r = i / PER_ROW;
        constexpr int64_t j = i % PER_ROW;
        vc[i] = first ? Vectorized(0.0f) : Vectorized::loadu(C + r * ldc + j * VLEN);
    };
    c10::ForcedUnroll<ROWS * PER_ROW>{}(loadc);
    auto compute = [&](auto i, int64_t k) {
        constexpr int64_t r = i / PER_ROW;
        constexpr int64_t j = i % PER_ROW;
        constexpr int64_t p = j / COLS;
        constexpr int64_t col = j % COLS;
        if constexpr (r == 0) {  // each weight vector loaded once a k, for every row
            vb[j] = Vectorized::loadu(B + p * panel_stride + k * {{block_n}} + col * VLEN);
#if defined(__GNUC__) || defined(__clang__)
            if constexpr (ROWS > 1 && col == 0) {  // the next group's panel at this k
                __builtin_prefetch(B + (p + PANELS) * panel_stride + k * {{block_n}});
            }
#endif
        }
        if constexpr (j == 0) {
            va = Vectorized(A[r * lda + k]);
        }
        vc[i] = at::vec::fmadd(va, vb[j], vc[i]);
    };
    if (K > 0) {
        c10::ForcedUnroll<ROWS * PER_ROW>{}(compute, 0);
        for (int64_t k = 1; k < K; ++k) {
            c10::ForcedUnroll<ROWS * PER_ROW>{}(compute, k);
        }
    }
    auto storec = [&](auto i) {
        constexpr int64_t r = i / PER_ROW;
        constexpr int64_t j = i % PER_ROW;
        vc[i].store(C + r * ldc + j * VLEN);
    };
    c10::ForcedUnroll<ROWS * PER_ROW>{}(storec);
}
{%- endif %}
"""

# where the GEMM template's edits below apply: a template over prepacked weights whose micro-kernel
# takes _row_panels
_APPLIES = ("{%- if template.should_block_weights and not is_woq_int4 and micro_gemm.row_panels is defined"
            " and micro_gemm.row_panels(1) %}\n")

# the GEMM template's loop over a column block's panels: for a block of a few rows, groups of
# row_panels(rows) panels go to _row_panels first, the rest to the micro-kernel as before
_PANEL_LOOP = (
    "                    for (int64_t nci = nc; nci < nc_block_end; nci++) {\n",
    _APPLIES +
    "{%- set panels_W = kernel.slice_nd(W, [(\"nci\", \"nci + 1\"), (\"k_start\", \"k_end\"), ()]) %}\n"
    "{%- set panels_acc = kernel.slice_nd(acc, [(\"0\", \"m_end - m_start\"), (\"(nci - nc)*Nr\", \"(nci - nc + 1)*Nr\")]) %}\n"
    "                    int64_t nci = nc;\n"
    "                    switch (m_end - m_start) {\n"
    "{%- for rows in range(1, micro_gemm.row_panels_rows() + 1) %}\n"
    "                    case {{rows}}:\n"
    "                        for (; nci + {{micro_gemm.row_panels(rows)}} <= nc_block_end; nci += {{micro_gemm.row_panels(rows)}}) {\n"
    "                            {{micro_gemm.name}}_row_panels<{{rows}}, {{micro_gemm.row_panels(rows)}}>(\n"
    "                                kc == k_block_start,\n"
    "                                &({{kernel.index(tile_X, [0, 0])}}),\n"
    "                                &({{kernel.index(panels_W, [0, 0, 0])}}),\n"
    "                                &({{kernel.index(panels_acc, [0, 0])}}),\n"
    "                                k_end - k_start,\n"
    "                                {{kernel.stride(tile_X, 0)}},\n"
    "                                {{kernel.stride(panels_acc, 0)}},\n"
    "                                {{kernel.stride(W, 0)}});\n"
    "                        }\n"
    "                        break;\n"
    "{%- endfor %}\n"
    "                    default:\n"
    "                        break;\n"
    "                    }\n"
    "                    for (; nci < nc_block_end; nci++) {\n"
    "{%- else %}\n"
    "                    for (int64_t nci = nc; nci < nc_block_end; nci++) {\n"
    "{%- endif %}\n",
)

# the column blocks of a GEMM of a few rows: inductor's cache blocking gives a block of few rows
# one panel (Nc_blocks 1), which would leave _row_panels nothing to group; ROW_PANELS at least
_ROW_BLOCKING = (
    "        L2_cache_size\n"
    "    );\n"
    "    const int64_t num_Mc_blocks = (Mr_blocks + Mc_blocks - 1) / Mc_blocks;\n",
    "        L2_cache_size\n"
    "    );\n" +
    _APPLIES +
    "    if (M <= {{micro_gemm.row_panels_rows()}}) {\n"
    "        Nc_blocks = std::min<int64_t>(Nt_blocks, std::max<int64_t>(Nc_blocks, {{micro_gemm.row_panels(1)}}));\n"
    "    }\n"
    "{%- endif %}\n"
    "    const int64_t num_Mc_blocks = (Mr_blocks + Mc_blocks - 1) / Mc_blocks;\n",
)


def _vector_bits() -> int:
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    return pick_vec_isa().bit_width()


def _takes_row_panels(self, rows: int) -> int:
    """Panels per call of `_row_panels` for a block of `rows` rows of this micro-kernel; 0 where it
    does not apply: not fp32 throughout, a scale alpha, a transposed or tail kernel, K blocked by
    more than 1, or too few registers for two panels."""
    f32 = torch.float32
    plain = self.input_dtype == self.input2_dtype == self.output_dtype == self.compute_dtype == f32 \
        and self.alpha == 1 and not getattr(self, "trans_b", False) and not getattr(self, "tail_n", False) \
        and self.register_blocking.block_k == 1 and not self.pack_vnni_B_locally
    bits = _vector_bits()
    if not plain or bits not in REGISTERS:
        return 0
    cols = self.register_blocking.block_n * 32 // bits  # vectors per panel
    # one row: accumulators only (each weight vector feeds one fmadd, from memory); more rows: the
    # weight vectors held too, and a register for the row's broadcast value
    need = (lambda p: p * cols + 4) if rows == 1 else (lambda p: (rows + 1) * p * cols + 1)
    fits = [p for p in range(ROW_PANELS, 1, -1) if need(p) <= REGISTERS[bits]]
    return fits[0] if fits else 0


def _row_panels_rows(self) -> int:
    """The most rows a block may have for `_row_panels`."""
    rows = 0
    while rows < 2 * self.register_blocking.block_m and _takes_row_panels(self, rows + 1):
        rows += 1
    return rows


@contextmanager
def row_panels():
    """For one build: a block of a few rows of a GEMM over prepacked fp32 weights runs several
    panels per call (`_row_panels`), each output's arithmetic the micro-kernel's: the same bits.
    Applied only where this torch's GEMM template has the edited texts exactly once and its fp32
    micro-kernel class the attributes read; else the build is inductor's."""
    cls = _micro_gemm_module().CppMicroGemmFP32Vec  # first: inductor's modules import in this order only
    from torch._inductor.codegen import cpp_gemm_template
    edits = {"GEMM_TEMPLATE": _PANEL_LOOP, "GEMM_TEMPLATE_INIT_BLOCKING_EXTENDED": _ROW_BLOCKING}
    saved = {name: getattr(cpp_gemm_template, name, "") for name in edits}
    if any(saved[name].count(old) != 1 for name, (old, _) in edits.items()) \
            or "TEMPLATE_ENTRY" not in cls.__dict__ or hasattr(cls, "row_panels"):
        yield
        return
    saved_entry = cls.TEMPLATE_ENTRY
    cls.TEMPLATE_ENTRY = saved_entry + _ROW_PANELS_KERNEL
    cls.row_panels, cls.row_panels_rows = _takes_row_panels, _row_panels_rows
    for name, (old, new) in edits.items():
        setattr(cpp_gemm_template, name, saved[name].replace(old, new))
    try:
        yield
    finally:
        for name, text in saved.items():
            setattr(cpp_gemm_template, name, text)
        cls.TEMPLATE_ENTRY = saved_entry
        del cls.row_panels, cls.row_panels_rows
