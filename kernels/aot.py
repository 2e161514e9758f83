"""Ahead-of-time compilation of every decode-attention specialisation for a GPU target.

The interpreter accepts programs that real compilation rejects (tl.dot below 16, say), so a CPU
test compiles here, for sm_90, each variant the launcher can launch: no GPU needed, only
Triton's bundled ptxas. The constexpr space is (dtype, BLOCK_D, BLOCK_M) for the attention kernel
and (dtype, BLOCK_D) for the merge; shape ints are never specialised (do_not_specialize), and the
integer specialisation Triton adds on its own is compiled as a launch of a contiguous-head-dim
cache sees it: head-dim strides == 1, pointers and other strides divisible by 16.
Uses the ASTSource API of Triton >= 3.2 (signatures keyed by argument name).

    python -m kernels.aot      # compile all, print one line each
"""
import importlib
import itertools
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

da = importlib.import_module("kernels.decode_attention")  # the package re-exports a function of that name

HEAD_DIMS = (64, 128, 256)  # one head dim per BLOCK_D that block_config can pick
QUERY_ROWS = (16, 64)  # one group*T per BLOCK_M
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SM90 = GPUTarget("cuda", 90, 32)
_POINTEE = {"lengths_ptr": "i32", "q_lens_ptr": "i32", "kv_start_ptr": "i32",
            "lse_ptr": "fp32", "part_ptr": "fp32", "plan_ptr": "i64"}


def _source(kernel, dtype, constexprs):
    """ASTSource of one variant, typed and specialised as the launcher's calls make it."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            signature[p.name] = "*" + _POINTEE.get(p.name, da._TL_DTYPE[dtype])
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif p.name == "qk_scale":
            signature[p.name] = "fp32"
        elif p.name.startswith("stride_") and p.name.endswith("d"):
            signature[p.name] = "constexpr"  # Triton turns an int argument equal to 1 into a constant
            consts[p.name] = 1
        else:
            signature[p.name] = "i32"
            if p.name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)


def specializations():
    """(name, kernel, dtype, constexprs, options) for every variant the launcher can launch."""
    for dtype, D in itertools.product(DTYPES, HEAD_DIMS):
        elem = da._TL_DTYPE[dtype]
        for rows in QUERY_ROWS:
            meta, opts = da.block_config(D, rows, dtype)
            yield (f"_decode_kernel-{elem}-D{meta['BLOCK_D']}-M{meta['BLOCK_M']}", da._decode_kernel, dtype,
                   dict(meta, PRECISION=da.precision(dtype)), opts)
        consts = dict(BLOCK_N=meta["BLOCK_N"], BLOCK_D=meta["BLOCK_D"])  # BLOCK_M is a runtime int here
        yield f"_merge_kernel-{elem}-D{meta['BLOCK_D']}", da._merge_kernel, dtype, consts, da.merge_options(meta)


def compile_one(kernel, dtype, constexprs, options, target=SM90):
    return triton.compile(_source(kernel, dtype, constexprs), target=target, options=options)


def main():
    failed = 0
    for name, kernel, dtype, consts, opts in specializations():
        t0 = time.time()
        try:
            compiled = compile_one(kernel, dtype, consts, opts)
        except Exception as e:  # report every failing variant, not only the first
            failed += 1
            msg = str(e) if failed == 1 else str(e).strip().splitlines()[-1]  # full text once
            print(f"FAIL {name}: {type(e).__name__}: {msg}", flush=True)
            continue
        print(f"ok   {name}: {compiled.metadata.shared} B shared, {time.time() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
