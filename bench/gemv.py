"""fp32 weight-times-activations on CPU, 1 thread: which PyTorch path reads the weights fastest at the
random Llama 125M's shapes (768 x 12, GQA 12/4, ffn 2048, vocab 32000), batch 1 and 8.

    python -m bench.gemv            # prints GB/s per matrix and the summed ms per path

Paths: F.linear on the (out, in) row-major weight (PyTorch's default), on the k-major weight the
native models store (models/layout.py), torch.mm on its transpose, torch.mv (batch 1), and the
prepacked MKL (`mkl._mkl_linear`) and oneDNN (`mkldnn._linear_pointwise`) linears. Paths take
turns in each repetition; every output is checked against F.linear (fp32, 1e-3).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"wqkv": (1280, 768), "wo": (768, 768), "w13": (4096, 768), "w2": (768, 2048), "lm_head": (32000, 768)}


def median_s(fns: dict, reps: int = 7, n: int = 30) -> dict:
    res = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            fn()
            t = time.perf_counter()
            for _ in range(n):
                fn()
            res[k].append((time.perf_counter() - t) / n)
    return {k: statistics.median(v) for k, v in res.items()}


def paths(W: torch.Tensor, x: torch.Tensor) -> dict:
    B = x.shape[0]
    Wk = W.t().contiguous().t()
    fns = {"linear_row_major": lambda: F.linear(x, W), "linear_k_major": lambda: F.linear(x, Wk),
           "mm_k_major": lambda: torch.mm(x, Wk.t())}
    if B == 1:
        fns["mv_row_major"] = lambda: torch.mv(W, x[0])[None]
    try:
        Wp = torch.ops.mkl._mkl_reorder_linear_weight(W, B)
        fns["mkl_packed"] = lambda: torch.ops.mkl._mkl_linear(x, Wp, W, None, B)
    except (RuntimeError, AttributeError):
        pass
    try:
        Wd = torch.ops.mkldnn._reorder_linear_weight(W, B)
        fns["onednn_packed"] = lambda: torch.ops.mkldnn._linear_pointwise(x, Wd, None, "none", [], "")
    except (RuntimeError, AttributeError):
        pass
    return fns


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for B in (1, 8):
        total: dict = {}
        for name, (o, i) in SHAPES.items():
            W, x = torch.randn(o, i), torch.randn(B, i)
            fns = paths(W, x)
            ref = F.linear(x, W)
            for k, f in fns.items():
                assert torch.allclose(f(), ref, atol=1e-3), k
            gb = W.numel() * 4 / 1e9
            r = median_s(fns)
            print(f"batch {B} {name} {tuple(W.shape)}: " + ", ".join(f"{k} {gb / v:.1f} GB/s" for k, v in r.items()))
            for k, v in r.items():
                total[k] = total.get(k, 0.0) + v
        print(f"batch {B}, one layer's matrices + lm_head, summed ms: " +
              ", ".join(f"{k} {v * 1e3:.2f}" for k, v in total.items()))


if __name__ == "__main__":
    main()
